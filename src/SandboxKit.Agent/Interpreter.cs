using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>One cell in flight in an interpreter (loop thread only).</summary>
internal sealed class CellRun
{
    internal required string CellId { get; init; }

    internal required ContextRunChannel Channel { get; init; }

    internal required string Code { get; init; }

    internal long TimeoutMs { get; init; }

    internal long GraceMs { get; init; }

    internal long StartNs { get; set; }

    internal long? OomBefore { get; set; }

    internal bool TimedOut { get; set; }

    internal bool Ended { get; set; }

    internal LoopTimer? TimeoutTimer { get; set; }

    internal LoopTimer? GraceTimer { get; set; }

    internal LoopTimer? ResendTimer { get; set; }

    internal long GraceDueNs { get; set; } = long.MaxValue;

    internal void CancelTimers()
    {
        TimeoutTimer?.Cancel();
        TimeoutTimer = null;
        GraceTimer?.Cancel();
        GraceTimer = null;
        ResendTimer?.Cancel();
        ResendTimer = null;
    }

    internal double DurationMs => Math.Round(Math.Max(0, EventLoop.NowNs - StartNs) / 1e6, 3);
}

/// <summary>
/// One interpreter process of a context (one generation), speaking the driver protocol of
/// src/SandboxKit.Interpreters/README.md: fd 3 requests, fd 4 events, fds 1 and 2 output pipes (loop thread only).
/// <para>
/// Ordering: event frames are read exactly (a 4-byte length, then exactly that many bytes, never past the frame).
/// When one is complete, the bytes in the stdout and stderr pipes at that moment (<c>FIONREAD</c>) are what the cell
/// printed before it (the driver flushes before it writes an event); those are forwarded first, then the event
/// (<c>v</c> chunks and <c>w</c>, or, for <c>done</c>, the cell's <c>f</c>), and only then is the next frame read.
/// Output, chunks and the final frame share the channel's credit: with none left nothing more is read, and the
/// interpreter blocks in its own writes. Without a live channel (no cell, or its connection ended) output is read
/// and dropped so the interpreter never blocks.
/// </para>
/// <para>
/// Nothing from the driver is trusted: frames are at most 16 MiB, each must be one valid event of the documented
/// shape, for the cell that runs, in a state where it may come; anything else is a protocol violation and the process
/// group is killed (its cell ends <c>died</c>). At the exit, exactly what is in the pipes then is read (a fork()ed child
/// may hold them open for ever), and what the process left behind in its group or session is killed.
/// </para>
/// </summary>
internal sealed unsafe class Interpreter : IChildOwner
{
    /// <summary>Largest event frame (the driver keeps its events 64 KiB below this).</summary>
    internal const int MaxEventBytes = 16 * 1024 * 1024;

    internal const double StartTimeoutMs = 30_000;

    /// <summary>After EOF on fd 4, how long the process may take to exit before that counts as a violation.</summary>
    private const double EofExitMs = 2000;

    /// <summary>An interrupt's SIGINT is sent again this long after the first when the cell has not ended.</summary>
    private const double ResendMs = 1000;

    private const int StartTailBytes = 2048;
    private const int MaxReadBytes = 1 << 20;
    private const int ReadsPerPump = 32;

    private static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    [ThreadStatic]
    private static byte[]? t_scratch;

    private readonly Supervisor _supervisor;
    private readonly InterpreterContext _context;
    private readonly WatchedFd _stdout;
    private readonly WatchedFd _stderr;
    private readonly WatchedFd _events;
    private readonly StdinPipe _requests;
    private readonly byte[] _header = new byte[4];
    private int _headerFilled;
    private byte[]? _frame;
    private int _frameLength = -1;
    private int _frameFilled;
    private bool _eventsEof;

    // An event read but not yet forwarded, and the output that must go before it.
    private DriverEvent? _pendingEvent;
    private byte[]? _pendingPayload;
    private int _pendingLength;
    private int _pendingSent;
    private long _outBudget;
    private long _errBudget;

    // After the exit: bytes left to read from each descriptor (what it held at the exit); -1 before.
    private bool _exited;
    private long _eventsLeft = -1;
    private long _outLeft = -1;
    private long _errLeft = -1;
    private ChildExit _exit;
    private bool _finished;

    private string? _killReason;
    private LoopTimer? _startTimer;
    private LoopTimer? _eofTimer;
    private readonly byte[] _startTail = new byte[StartTailBytes];
    private int _startTailLength;
    private bool _pumping;
    private bool _pumpAgain;

    private Interpreter(Supervisor supervisor, InterpreterContext context, int stdout, int stderr, int events, int requests)
    {
        _supervisor = supervisor;
        _context = context;
        _stdout = new WatchedFd(supervisor.Loop, stdout, _ => Pump());
        _stderr = new WatchedFd(supervisor.Loop, stderr, _ => Pump());
        _events = new WatchedFd(supervisor.Loop, events, _ => Pump());
        _requests = new StdinPipe(supervisor.Loop, requests);
    }

    internal int Pid { get; private set; }

    public bool Reaped { get; set; }

    /// <summary>The driver sent its <c>ready</c>.</summary>
    internal bool Ready { get; private set; }

    internal string? Version { get; private set; }

    internal bool IPython { get; private set; }

    /// <summary>The process exited (its exit may still be being drained).</summary>
    internal bool Exited => _exited;

    /// <summary>The cell that runs, until its final frame.</summary>
    internal CellRun? Cell { get; private set; }

    /// <summary>Why the supervisor killed it, if it did.</summary>
    internal string? KillReason => _killReason;

    /// <summary>What the driver wrote to stderr before it was ready (for the error of a failed start).</summary>
    internal string StartTail => Encoding.UTF8.GetString(_startTail, 0, _startTailLength).Trim();

    // ---- start -----------------------------------------------------------------------------------------------

    /// <summary>Starts the driver for <paramref name="context"/> with the interpreter at <paramref name="program"/>: fds
    /// 0 /dev/null, 1 and 2 pipes, 3 requests, 4 events; as the user, in its own session and process group.</summary>
    /// <exception cref="RequestException">The spawn failed (<c>not_found</c> for a missing cwd).</exception>
    internal static Interpreter Spawn(Supervisor supervisor, InterpreterContext context, string program)
    {
        var driver = Session.CombinePath(supervisor.InterpretersDirectory, context.Language == "python" ? "python_driver.py" : "node_driver.js");
        List<byte[]> argv = context.Language == "python"
            ? [Spawner.Arg("python3"), Spawner.Arg("-u"), Spawner.Arg(driver)]
            : [Spawner.Arg("node"), Spawner.Arg(driver)];
        var env = supervisor.Session.Env.Copy();
        env["SANDBOXKIT_CONTEXT_ID"] = Encoding.UTF8.GetBytes(context.Id);
        env.TryAdd("MPLBACKEND", "Agg"u8.ToArray());
        var mine = new List<int>();
        var theirs = new List<int>();
        try
        {
            var pipes = stackalloc int[2];
            (int Read, int Write) Pipe()
            {
                SysException.Check(Native.Pipe(pipes, 0), "pipe");
                return (pipes[0], pipes[1]);
            }
            var (outRead, outWrite) = Pipe();
            mine.Add(outRead);
            theirs.Add(outWrite);
            var (errRead, errWrite) = Pipe();
            mine.Add(errRead);
            theirs.Add(errWrite);
            var (requestRead, requestWrite) = Pipe();
            theirs.Add(requestRead);
            mine.Add(requestWrite);
            var (eventRead, eventWrite) = Pipe();
            mine.Add(eventRead);
            theirs.Add(eventWrite);
            var spec = new SpawnSpec { Path = program, Argv = argv, Env = EnvSnapshot.ToEntries(env), Cwd = context.Cwd };
            spec.Fds.Add((supervisor.DevNull, 0));
            spec.Fds.Add((outWrite, 1));
            spec.Fds.Add((errWrite, 2));
            spec.Fds.Add((requestRead, 3));
            spec.Fds.Add((eventWrite, 4));
            foreach (var fd in mine)
            {
                SysException.Check(Native.SetNonBlocking(fd, 1), "fcntl(O_NONBLOCK)");
            }
            var interpreter = new Interpreter(supervisor, context, outRead, errRead, eventRead, requestWrite);
            var outcome = supervisor.Spawner.Spawn(spec, interpreter);
            foreach (var fd in theirs)
            {
                _ = Native.Close(fd);
            }
            theirs.Clear();
            if (!outcome.Started)
            {
                interpreter.CloseAll();
                mine.Clear();
                throw outcome.Step == SpawnOutcome.StepChdir
                    ? new RequestException(outcome.Error == Errno.ENOENT ? ErrorCodes.NotFound : Errno.ToCode(outcome.Error), $"cwd {context.Cwd}: {Errno.Describe(outcome.Error)}")
                    : new RequestException(ErrorCodes.Internal, $"cannot start {program}: {outcome.Describe()}");
            }
            mine.Clear();
            interpreter.Pid = outcome.Pid;
            interpreter._startTimer = supervisor.Loop.Schedule(StartTimeoutMs, () => interpreter.Kill($"the driver was not ready within {StartTimeoutMs / 1000:0} s"));
            try
            {
                interpreter.Pump();
            }
            catch (SysException e)
            {
                // Its pipes cannot be watched (epoll_ctl): it cannot be spoken to. Its exit closes them.
                interpreter.Kill(e.Message);
                throw new RequestException(ErrorCodes.Internal, $"cannot watch the interpreter: {e.Message}");
            }
            return interpreter;
        }
        catch (SysException e)
        {
            throw new RequestException(ErrorCodes.Internal, $"cannot start the interpreter: {e.Message}");
        }
        finally
        {
            foreach (var fd in theirs)
            {
                _ = Native.Close(fd);
            }
            foreach (var fd in mine)
            {
                _ = Native.Close(fd);
            }
        }
    }

    // ---- cells -------------------------------------------------------------------------------------------------

    /// <summary>Sends the cell's <c>execute</c> and arms its timeout. The caller checked that none runs.</summary>
    internal void Execute(CellRun cell)
    {
        Cell = cell;
        cell.Channel.Process = this;
        cell.StartNs = EventLoop.NowNs;
        cell.OomBefore = _supervisor.ReadOomKills();
        _requests.Enqueue(ExecuteFrame(cell.CellId, cell.Code), credited: false);
        if (cell.TimeoutMs > 0)
        {
            cell.TimeoutTimer = _supervisor.Loop.Schedule(cell.TimeoutMs, () =>
            {
                cell.TimeoutTimer = null;
                Interrupt(cell, cell.GraceMs, timedOut: true);
            });
        }
        Pump();
    }

    /// <summary><c>{"type":"execute","id":…,"code":…}</c> with its length prefix. Lone surrogates of the request's
    /// strings become U+FFFD (the driver only takes valid UTF-8).</summary>
    private static byte[] ExecuteFrame(string cellId, string code)
    {
        var buffer = new ArrayBufferWriter<byte>(code.Length + cellId.Length + 64);
        using (var writer = new Utf8JsonWriter(buffer, WriterOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("type"u8, "execute"u8);
            writer.WriteString("id"u8, Encoding.UTF8.GetBytes(cellId));
            writer.WriteString("code"u8, Encoding.UTF8.GetBytes(code));
            writer.WriteEndObject();
        }
        var frame = new byte[4 + buffer.WrittenCount];
        BinaryPrimitives.WriteUInt32BigEndian(frame, (uint)buffer.WrittenCount);
        buffer.WrittenSpan.CopyTo(frame.AsSpan(4));
        return frame;
    }

    /// <summary>SIGINT to the process group (and its session's other members), once; the cell has
    /// <paramref name="graceMs"/> to end, else the process is killed. The earliest deadline of several interrupts holds.</summary>
    internal void Interrupt(CellRun cell, long graceMs, bool timedOut)
    {
        if (cell.Ended || _exited || !ReferenceEquals(Cell, cell))
        {
            return;
        }
        if (timedOut)
        {
            cell.TimedOut = true;
        }
        // Once to each process (a second SIGINT would interrupt the handling of the first), without the quick
        // re-sends of a command's K (one could land in node's brief window without its SIGINT watchdog, where SIGINT
        // ends the process). But a SIGINT within a second of the cell's start may have come before the driver took
        // the cell up (drivers ignore SIGINT while idle): that one is sent again a second later if the cell still runs.
        SignalInterrupt();
        if (cell.ResendTimer is null && EventLoop.NowNs - cell.StartNs < ResendMs * 1_000_000 && graceMs > 2 * ResendMs)
        {
            cell.ResendTimer = _supervisor.Loop.Schedule(ResendMs, () =>
            {
                if (!cell.Ended && ReferenceEquals(Cell, cell))
                {
                    SignalInterrupt();
                }
            });
        }
        var due = EventLoop.NowNs + graceMs * 1_000_000;
        if (due < cell.GraceDueNs)
        {
            cell.GraceTimer?.Cancel();
            cell.GraceDueNs = due;
            cell.GraceTimer = _supervisor.Loop.Schedule(graceMs, () =>
            {
                cell.GraceTimer = null;
                if (!cell.Ended)
                {
                    Kill($"the cell did not stop within {graceMs} ms of SIGINT");
                }
            });
        }
    }

    private void SignalInterrupt()
    {
        if (!_exited)
        {
            _ = ProcessTree.Signal(_supervisor.Reaper, Pid, this, Native.SigInt);
        }
    }

    /// <summary>SIGKILL to the tree (idempotent); the exit comes through the reaper.</summary>
    internal void Kill(string reason)
    {
        if (_exited)
        {
            return;
        }
        _killReason ??= reason;
        _startTimer?.Cancel();
        _startTimer = null;
        _supervisor.SignalTree(Pid, this, Native.SigKill);
        Pump(); // events are no longer read
    }

    private void Violation(string problem)
    {
        Log.Warn($"context {_context.Id}: the {_context.Language} driver (pid {Pid}) broke the protocol: {problem}; killing it");
        ClearPending();
        Kill($"the driver broke the protocol: {problem}");
    }

    // ---- the pump ------------------------------------------------------------------------------------------------

    /// <summary>Moves output and events along as far as credit allows (any readiness, credit, or state change).</summary>
    internal void Pump()
    {
        if (_pumping)
        {
            _pumpAgain = true;
            return;
        }
        _pumping = true;
        try
        {
            do
            {
                _pumpAgain = false;
                Step();
            }
            while (_pumpAgain && !_finished);
        }
        finally
        {
            _pumping = false;
        }
        UpdateWatches();
    }

    private void Step()
    {
        var round = 0;
        for (; round < ReadsPerPump && !_finished; round++)
        {
            if (_pendingEvent is not null)
            {
                if (!Drain(_stdout, FrameType.Stdout, ref _outBudget, ref _outLeft) || !Drain(_stderr, FrameType.Stderr, ref _errBudget, ref _errLeft))
                {
                    return; // no credit: the rest waits
                }
                if (!Forward())
                {
                    return;
                }
                continue;
            }
            if (!ReadFrame())
            {
                break;
            }
            OnFrame();
        }
        if (round == ReadsPerPump)
        {
            // Frames may be waiting: output is read after them, once the loop has served everything else.
            _supervisor.Loop.Defer(Pump);
            return;
        }
        if (_pendingEvent is null && !_finished)
        {
            ReadFreely(_stdout, FrameType.Stdout, ref _outLeft);
            ReadFreely(_stderr, FrameType.Stderr, ref _errLeft);
            if (_exited && EventsExhausted && Exhausted(_stdout, _outLeft) && Exhausted(_stderr, _errLeft))
            {
                Finish();
            }
        }
    }

    private bool EventsExhausted => _events.Closed || _eventsEof || _killReason is not null || (_exited && _eventsLeft <= 0);

    private static bool Exhausted(WatchedFd pipe, long left) => pipe.Closed || left == 0;

    private void UpdateWatches()
    {
        if (_finished)
        {
            return;
        }
        _events.Watch(_pendingEvent is null && !EventsExhausted ? Native.EpollIn : 0);
        var output = _pendingEvent is null && Capacity() > 0 ? Native.EpollIn : 0;
        _stdout.Watch(_outLeft == 0 ? 0 : output);
        _stderr.Watch(_errLeft == 0 ? 0 : output);
    }

    /// <summary>The channel output goes to, while it can take it.</summary>
    private ContextRunChannel? LiveChannel() =>
        Cell is { Ended: false, Channel: { Ended: false, Connection.Closed: false } channel } ? channel : null;

    /// <summary>How many output bytes may be read now: the channel's credit, or a buffer's worth to drop.</summary>
    private int Capacity() => LiveChannel() is { } channel ? (int)Math.Min(channel.SendCredit, FrameLimits.MaxDataPayload) : FrameLimits.MaxDataPayload;

    private void Deliver(byte type, ReadOnlySpan<byte> data)
    {
        if (!Ready && type == FrameType.Stderr)
        {
            KeepStartTail(data);
        }
        LiveChannel()?.SendOutput(type, data);
    }

    private void KeepStartTail(ReadOnlySpan<byte> data)
    {
        if (data.Length >= StartTailBytes)
        {
            data[^StartTailBytes..].CopyTo(_startTail);
            _startTailLength = StartTailBytes;
            return;
        }
        var keep = Math.Min(_startTailLength, StartTailBytes - data.Length);
        _startTail.AsSpan(_startTailLength - keep, keep).CopyTo(_startTail);
        data.CopyTo(_startTail.AsSpan(keep));
        _startTailLength = keep + data.Length;
    }

    /// <summary>Reads <paramref name="budget"/> bytes (what was in the pipe when the pending event was complete);
    /// false when credit ran out first.</summary>
    private bool Drain(WatchedFd pipe, byte type, ref long budget, ref long left)
    {
        var scratch = t_scratch ??= new byte[FrameLimits.MaxDataPayload];
        while (budget > 0)
        {
            if (pipe.Closed)
            {
                budget = 0;
                break;
            }
            var capacity = Capacity();
            if (capacity <= 0)
            {
                return false;
            }
            nint n;
            fixed (byte* p = scratch)
            {
                n = Native.Read(pipe.Fd, p, (int)Math.Min(capacity, budget));
            }
            if (n == -Errno.EAGAIN)
            {
                budget = 0; // counted by FIONREAD, so not expected; nothing is lost by going on
                break;
            }
            if (n <= 0)
            {
                pipe.Close();
                budget = 0;
                break;
            }
            Deliver(type, scratch.AsSpan(0, (int)n));
            budget -= n;
            if (left > 0)
            {
                left = Math.Max(0, left - n);
            }
        }
        return true;
    }

    private void ReadFreely(WatchedFd pipe, byte type, ref long left)
    {
        var scratch = t_scratch ??= new byte[FrameLimits.MaxDataPayload];
        for (var round = 0; round < 4; round++)
        {
            if (pipe.Closed || left == 0)
            {
                return;
            }
            var capacity = Capacity();
            if (capacity <= 0)
            {
                return;
            }
            if (left > 0)
            {
                capacity = (int)Math.Min(capacity, left);
            }
            nint n;
            fixed (byte* p = scratch)
            {
                n = Native.Read(pipe.Fd, p, capacity);
            }
            if (n == -Errno.EAGAIN)
            {
                if (_exited)
                {
                    left = 0; // what the pipe held at the exit is read; the rest belongs to whoever still writes
                }
                return;
            }
            if (n <= 0)
            {
                pipe.Close();
                return;
            }
            Deliver(type, scratch.AsSpan(0, (int)n));
            if (left > 0)
            {
                left = Math.Max(0, left - n);
            }
            if (n < capacity)
            {
                return;
            }
        }
    }

    /// <summary>Reads toward the next event frame, never past it; true when one is complete.</summary>
    private bool ReadFrame()
    {
        for (var round = 0; round < ReadsPerPump; round++)
        {
            if (EventsExhausted)
            {
                return false;
            }
            int want;
            if (_frameLength < 0)
            {
                want = 4 - _headerFilled;
            }
            else
            {
                want = Math.Min(_frameLength - _frameFilled, MaxReadBytes);
                if (_frameFilled + want > _frame!.Length)
                {
                    // Grown as bytes arrive: a driver that announces 16 MiB and sends nothing costs nothing.
                    Array.Resize(ref _frame, (int)Math.Min(_frameLength, Math.Max((long)_frame.Length * 2, _frameFilled + want)));
                }
            }
            if (_exited)
            {
                want = (int)Math.Min(want, _eventsLeft);
            }
            nint n;
            if (_frameLength < 0)
            {
                fixed (byte* p = _header)
                {
                    n = Native.Read(_events.Fd, p + _headerFilled, want);
                }
            }
            else
            {
                fixed (byte* p = _frame)
                {
                    n = Native.Read(_events.Fd, p + _frameFilled, want);
                }
            }
            if (n == -Errno.EAGAIN)
            {
                return false;
            }
            if (n <= 0)
            {
                OnEventsEof();
                return false;
            }
            if (_exited)
            {
                _eventsLeft -= n;
            }
            if (_frameLength < 0)
            {
                _headerFilled += (int)n;
                if (_headerFilled < 4)
                {
                    continue;
                }
                var length = BinaryPrimitives.ReadUInt32BigEndian(_header);
                if (length is 0 or > MaxEventBytes)
                {
                    Violation($"an event frame of {length} bytes (1..{MaxEventBytes})");
                    return false;
                }
                _frameLength = (int)length;
                _frameFilled = 0;
                _frame = new byte[Math.Min(_frameLength, 64 * 1024)];
                continue;
            }
            _frameFilled += (int)n;
            if (_frameFilled == _frameLength)
            {
                return true;
            }
        }
        return false;
    }

    private void OnEventsEof()
    {
        _eventsEof = true;
        _events.Close();
        if (!_exited && _eofTimer is null)
        {
            // A driver exiting closes fd 4 a moment before the reaper sees it go; one that stays is broken.
            _eofTimer = _supervisor.Loop.Schedule(EofExitMs, () =>
            {
                _eofTimer = null;
                if (!_exited)
                {
                    Violation("it closed its event pipe (fd 4) and did not exit");
                }
            });
        }
    }

    private void OnFrame()
    {
        var payload = _frame!;
        var length = _frameLength;
        _frame = null;
        _frameLength = -1;
        _headerFilled = 0;
        _frameFilled = 0;
        if (_killReason is not null)
        {
            return; // killed: whatever else it said does not count
        }
        var parsed = DriverEvents.Parse(payload.AsSpan(0, length), _context.Language, out var problem);
        if (parsed is null)
        {
            Violation(problem!);
            return;
        }
        if (!Ready)
        {
            if (parsed.Type != DriverEventType.Ready)
            {
                Violation($"a {parsed.Type.ToString().ToLowerInvariant()} event before ready");
                return;
            }
            Ready = true;
            Version = parsed.Version is { Length: <= 64 } v ? v : null;
            IPython = parsed.IPython;
            _startTimer?.Cancel();
            _startTimer = null;
            _context.OnReady(this);
            return;
        }
        if (parsed.Type == DriverEventType.Ready)
        {
            Violation("a second ready");
            return;
        }
        if (Cell is not { Ended: false } cell)
        {
            Violation($"a {parsed.Type.ToString().ToLowerInvariant()} event while no cell runs");
            return;
        }
        if (!string.Equals(parsed.Id, cell.CellId, StringComparison.Ordinal))
        {
            Violation("an event for another cell");
            return;
        }
        _pendingEvent = parsed;
        _pendingPayload = payload;
        _pendingLength = length;
        _pendingSent = 0;
        _outBudget = Available(_stdout, _outLeft);
        _errBudget = Available(_stderr, _errLeft);
    }

    private static long Available(WatchedFd pipe, long left)
    {
        if (pipe.Closed)
        {
            return 0;
        }
        long available = Math.Max(0, Native.FionRead(pipe.Fd));
        return left >= 0 ? Math.Min(available, left) : available;
    }

    /// <summary>Forwards the pending event (its output went first); false when credit ran out.</summary>
    private bool Forward()
    {
        var parsed = _pendingEvent!;
        if (parsed.Type is DriverEventType.Result or DriverEventType.Error)
        {
            if (LiveChannel() is { } channel)
            {
                while (_pendingSent < _pendingLength)
                {
                    var sent = channel.SendChunk(_pendingPayload.AsSpan(_pendingSent, _pendingLength - _pendingSent));
                    if (sent == 0)
                    {
                        return false;
                    }
                    _pendingSent += sent;
                }
                channel.EndEvent();
            }
            ClearPending();
            return true;
        }
        ClearPending();
        var cell = Cell!;
        Cell = null;
        cell.Ended = true;
        cell.CancelTimers();
        var status = parsed.Status!;
        _context.ExecutionCount = parsed.ExecutionCount;
        _context.CellEnded(cell, new CellOutcome
        {
            CellId = cell.CellId,
            Status = status,
            TimedOut = cell.TimedOut && status != "ok",
            ExecutionCount = parsed.ExecutionCount,
            DurationMs = cell.DurationMs,
        });
        return true;
    }

    private void ClearPending()
    {
        _pendingEvent = null;
        _pendingPayload = null;
        _pendingLength = 0;
        _pendingSent = 0;
        _outBudget = 0;
        _errBudget = 0;
    }

    // ---- the end -------------------------------------------------------------------------------------------------

    public void OnExit(in ChildExit exit)
    {
        if (_exited)
        {
            return;
        }
        _exited = true;
        _exit = exit;
        _startTimer?.Cancel();
        _startTimer = null;
        _eofTimer?.Cancel();
        _eofTimer = null;
        _requests.Close();
        _eventsLeft = Available(_events, -1);
        _outLeft = Available(_stdout, -1);
        _errLeft = Available(_stderr, -1);
        // Its state is gone: so is whatever it started in its group or session.
        _supervisor.SignalTree(Pid, this, Native.SigKill);
        Pump();
    }

    private void Finish()
    {
        if (_finished)
        {
            return;
        }
        _finished = true;
        CloseAll();
        _frame = null;
        ClearPending();
        var cell = Cell is { Ended: false } c ? c : null;
        Cell = null;
        if (cell is not null)
        {
            cell.Ended = true;
            cell.CancelTimers();
            var oom = cell.OomBefore is { } before && _supervisor.ReadOomKills() is { } after && after > before &&
                _exit.Signal == Native.SigKill && _killReason is null;
            _context.CellEnded(cell, new CellOutcome
            {
                CellId = cell.CellId,
                Status = "died",
                TimedOut = cell.TimedOut,
                StateLost = true,
                ExecutionCount = _context.ExecutionCount,
                ExitCode = _exit.ExitCode,
                OomKilled = oom,
                DurationMs = cell.DurationMs,
            });
        }
        _context.OnInterpreterGone(this, _exit);
    }

    private void CloseAll()
    {
        _stdout.Close();
        _stderr.Close();
        _events.Close();
        _requests.Close();
    }
}
