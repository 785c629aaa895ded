using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>How a command's state dump is adopted when it ends (docs: "State").</summary>
internal sealed class StatePolicy
{
    /// <summary>The environment the command started with (its session values for overridden names).</summary>
    internal required EnvSnapshot BaseEnv { get; init; }

    /// <summary>Names overridden for this command only: they keep their session values.</summary>
    internal required IReadOnlyCollection<string> Keep { get; init; }

    /// <summary>A <c>cwd</c> override leaves the session cwd.</summary>
    internal required bool KeepCwd { get; init; }

    /// <summary>The session's <see cref="Session.ConfigureSerial"/> when the command started.</summary>
    internal required long ConfiguredAt { get; init; }
}

/// <summary>
/// A running shell and its pipes (loop thread only): a channel's command, a keyed command (which may outlive its
/// channel), or a job's. Output is read only as far as the channel's credit allows (the command then blocks in
/// write); without a channel it is read freely into the keyed result or the job's ring. The command ends when its
/// shell exits: then exactly the bytes already in the pipes are read (FIONREAD), the state dump is adopted, and
/// <c>x</c> follows the last output.
/// </summary>
internal sealed unsafe class Command : IChildOwner
{
    /// <summary>What a terminal may still hold beyond its <c>FIONREAD</c> at the exit (the kernel's pending output).</summary>
    private const int TerminalSlack = 64 * 1024;

    [ThreadStatic]
    private static byte[]? t_scratch;

    private readonly Supervisor _supervisor;
    private LoopTimer? _timeoutTimer;
    private bool _finished;
    private long _sampledPeak;

    internal Command(Supervisor supervisor, string display, bool persist, StatePolicy? state, long timeoutMs, bool warm)
    {
        _supervisor = supervisor;
        Display = display;
        Persist = persist;
        State = state;
        TimeoutMs = timeoutMs;
        Warm = warm;
        ProcessOwner = this;
    }

    internal int Pid { get; set; }

    /// <summary>The reaper's owner of the shell's pid: this command, or the warm shell it runs in.</summary>
    internal IChildOwner ProcessOwner { get; set; }

    public bool Reaped { get; set; }

    /// <summary>The command text (for jobs and logs).</summary>
    internal string Display { get; }

    internal bool Persist { get; }

    internal StatePolicy? State { get; }

    internal long TimeoutMs { get; }

    internal bool Warm { get; }

    internal OutputPipe? Stdout { get; set; }

    internal OutputPipe? Stderr { get; set; }

    internal StatePipe? StateDump { get; set; }

    internal StdinPipe? Stdin { get; set; }

    /// <summary>The channel streaming this command, while its connection lasts.</summary>
    internal CommandChannel? Channel { get; set; }

    internal KeyedEntry? Keyed { get; set; }

    internal Job? Job { get; set; }

    /// <summary>A code run's source file in the supervisor's code directory (removed before <c>x</c>).</summary>
    internal string? CodeFile { get; set; }

    /// <summary>Spawn (cold) or hand-over (warm) time.</summary>
    internal long StartNs { get; set; }

    internal long? OomBefore { get; set; }

    internal bool TimedOut { get; private set; }

    internal ChildExit? Exit { get; private set; }

    internal ExitEvent? Result { get; private set; }

    internal long StdoutBytes { get; private set; }

    internal long StderrBytes { get; private set; }

    internal bool Running => Exit is null;

    /// <summary>Registers the pipes and the timeout; the process runs.</summary>
    internal void Begin()
    {
        Stdout?.Resume();
        Stderr?.Resume();
        StateDump?.Start();
        if (TimeoutMs > 0)
        {
            _timeoutTimer = _supervisor.Loop.Schedule(Math.Max(0, TimeoutMs - (EventLoop.NowNs - StartNs) / 1e6), OnTimeout);
        }
        _supervisor.CommandStarted(this);
    }

    private void OnTimeout()
    {
        _timeoutTimer = null;
        if (!Running)
        {
            return;
        }
        TimedOut = true;
        Kill(Native.SigKill);
    }

    /// <summary>Signals the tree (SIGKILL: repeated while members are found; catchable: re-sent to members that missed it for ~1 s).</summary>
    internal void Kill(int signal)
    {
        if (Pid <= 0)
        {
            return;
        }
        _supervisor.SignalTree(Pid, ProcessOwner, signal);
    }

    private int OutputCapacity()
    {
        if (Channel is { } channel)
        {
            return (int)Math.Min(channel.SendCredit, FrameLimits.MaxDataPayload);
        }
        return FrameLimits.MaxDataPayload;
    }

    /// <summary>Credit arrived or the channel went away: paused pipes read again.</summary>
    internal void ResumeOutput()
    {
        if (OutputCapacity() <= 0)
        {
            return;
        }
        foreach (var pipe in new[] { Stdout, Stderr })
        {
            if (pipe is { Closed: false, Registered: false })
            {
                pipe.Resume();
                if (!Running)
                {
                    Pump(pipe); // after the exit: the rest may already be there
                }
            }
        }
    }

    /// <summary>Reads from a pipe as far as the credit allows.</summary>
    internal void Pump(OutputPipe pipe)
    {
        var scratch = t_scratch ??= new byte[FrameLimits.MaxDataPayload];
        // A terminal after the exit is read until it is empty (EAGAIN): nothing else would wake its reader, since a
        // background process may hold the slave open and write nothing. Bounded by Remaining.
        var draining = pipe.EndsWhenEmpty && pipe.Remaining >= 0;
        for (var round = 0; (round < 4 || draining) && !pipe.Closed; round++)
        {
            var capacity = OutputCapacity();
            if (capacity <= 0)
            {
                pipe.Pause();
                return;
            }
            if (pipe.Remaining >= 0)
            {
                if (pipe.Remaining == 0)
                {
                    pipe.Close();
                    TryFinish();
                    return;
                }
                capacity = (int)Math.Min(capacity, pipe.Remaining);
            }
            nint n;
            fixed (byte* p = scratch)
            {
                n = Native.Read(pipe.Fd, p, capacity);
            }
            if (n == -Errno.EAGAIN)
            {
                if (pipe.EndsWhenEmpty && pipe.Remaining >= 0)
                {
                    pipe.Close(); // the terminal is empty after the exit: what a background process writes later is not the job's
                    TryFinish();
                }
                return;
            }
            if (n <= 0)
            {
                pipe.Close(); // EOF, or EIO from a terminal whose every slave descriptor is closed
                TryFinish();
                return;
            }
            Deliver(pipe.FrameType, scratch.AsSpan(0, (int)n));
            if (pipe.Remaining >= 0)
            {
                pipe.Remaining -= n;
                if (pipe.Remaining == 0)
                {
                    pipe.Close();
                    TryFinish();
                    return;
                }
            }
            if (n < capacity && !draining)
            {
                return;
            }
        }
    }

    private void Deliver(byte type, ReadOnlySpan<byte> data)
    {
        if (type == FrameType.Stdout)
        {
            StdoutBytes += data.Length;
        }
        else
        {
            StderrBytes += data.Length;
        }
        Channel?.SendOutput(type, data);
        Keyed?.Keep(type, data);
        Job?.Append(type, data);
    }

    /// <summary>Memory sampler (every 100 ms while running): the tree's summed RSS.</summary>
    internal void RecordSample(long residentBytes) => _sampledPeak = Math.Max(_sampledPeak, residentBytes);

    public void OnExit(in ChildExit exit)
    {
        if (Exit is not null)
        {
            return;
        }
        Exit = exit;
        _timeoutTimer?.Cancel();
        _timeoutTimer = null;
        _supervisor.CommandExited(this);

        // Everything the shell wrote is in the pipes now. Take exactly that: background children may hold the write
        // ends for ever.
        StateDump?.DrainAndClose();
        Stdin?.Close();
        foreach (var pipe in new[] { Stdout, Stderr })
        {
            if (pipe is null || pipe.Closed)
            {
                continue;
            }
            var available = Native.FionRead(pipe.Fd);
            pipe.Remaining = Math.Max(0, available) + (pipe.EndsWhenEmpty ? TerminalSlack : 0);
        }

        if (Persist && State is not null && StateDump is { Overflowed: false } dump && exit.Exited)
        {
            if (_supervisor.Session.Apply(dump.Data, State.BaseEnv, State.Keep, State.KeepCwd, State.ConfiguredAt))
            {
                _supervisor.Warm.OnStateChanged();
            }
        }
        else if (StateDump is { Overflowed: true })
        {
            Log.Warn($"pid {Pid}: state dump over {StatePipe.MaxDump} bytes ignored");
        }

        foreach (var pipe in new[] { Stdout, Stderr })
        {
            if (pipe is { Closed: false })
            {
                if (pipe.Remaining == 0)
                {
                    pipe.Close();
                }
                else
                {
                    pipe.Resume();
                    Pump(pipe);
                }
            }
        }
        TryFinish();
    }

    private void TryFinish()
    {
        if (_finished || Exit is null || Stdout is { Closed: false } || Stderr is { Closed: false })
        {
            return;
        }
        _finished = true;
        if (CodeFile is not null)
        {
            // The source file goes before x (the server may look for it then); only the user may remove it.
            _supervisor.RemoveCodeFile(this, Finish);
            return;
        }
        Finish();
    }

    private void Finish()
    {
        var exit = Exit!.Value;
        var oom = false;
        if (OomBefore is { } before && _supervisor.ReadOomKills() is { } after)
        {
            oom = after > before && (exit.Signal == Native.SigKill || exit.ExitCode == 128 + Native.SigKill);
        }
        Result = new ExitEvent
        {
            ExitCode = exit.ExitCode,
            Signal = exit.Signal,
            TimedOut = TimedOut,
            OomKilled = oom,
            DurationMs = Math.Round(Math.Max(0, exit.AtNs - StartNs) / 1e6, 3),
            CpuUserMs = Math.Round(exit.UserMs, 3),
            CpuSystemMs = Math.Round(exit.SystemMs, 3),
            PeakMemoryBytes = Math.Max(exit.MaxRssBytes, _sampledPeak),
            Cwd = _supervisor.Session.CurrentCwd(),
            StdoutBytes = StdoutBytes,
            StderrBytes = StderrBytes,
        };
        Channel?.SendExit(Result);
        Channel = null;
        Keyed?.Finished(this, Result);
        Job?.Finished(Result);
        _supervisor.CommandFinished(this);
    }
}
