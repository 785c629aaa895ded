using System.Diagnostics;
using System.Runtime.CompilerServices;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Exec;

/// <summary>What a running command reports, in order: one <see cref="Started"/>, output, one <see cref="Exited"/>.</summary>
internal abstract record CommandUpdate
{
    public sealed record Started(int Pid, bool Warm, bool Joined) : CommandUpdate;

    /// <summary>Bytes of stdout (or, with <c>mergeStderr</c>, both) or stderr.</summary>
    public sealed record Output(bool IsStderr, ReadOnlyMemory<byte> Bytes) : CommandUpdate;

    public sealed record Exited(ExecuteResult Result) : CommandUpdate;
}

/// <summary>
/// The one handle the Api layer has on a running command: updates out (<see cref="ReadAsync"/>), stdin and signals in.
/// Run-and-wait, SSE, WebSocket and the agent tools all use it; <see cref="CollectAsync"/> is the stream collected.
/// Reading is the flow control: output the caller has not read yet holds the command back, not the server's memory.
/// Disposing before the end kills the command, unless it carries an idempotency key (then it runs on in the supervisor,
/// and a retry with the key gets its result).
/// </summary>
internal sealed class CommandHandle : IAsyncDisposable
{
    private static readonly TimeSpan WatchdogMargin = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan KillGrace = TimeSpan.FromSeconds(5);

    private readonly SupervisorChannel _channel;
    private readonly SupervisorConnection _connection;
    private readonly Session _session;
    private readonly UsageMeter _usage;
    private readonly Session.ActivityScope _activity;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly TimeSpan? _deadline;
    private readonly bool _keyed;
    private long _stdoutBytes;
    private long _stderrBytes;
    private bool _finished;
    private int _disposed;

    internal CommandHandle(SupervisorChannel channel, SupervisorConnection connection, Session session, UsageMeter usage, Session.ActivityScope activity, long timeoutMs, bool keyed)
    {
        _channel = channel;
        _connection = connection;
        _session = session;
        _usage = usage;
        _activity = activity;
        _keyed = keyed;
        _deadline = timeoutMs > 0 ? TimeSpan.FromMilliseconds(timeoutMs) + WatchdogMargin : null;
    }

    /// <summary>The shell's pid, once started.</summary>
    public int? Pid { get; private set; }

    /// <summary>True when this handle joined a keyed command that already ran or was running.</summary>
    public bool Joined { get; private set; }

    /// <summary>
    /// The updates as they come. Throws a <see cref="SandboxError"/> when the command could not run (bad request, missing
    /// interpreter) or the supervisor went away; cancelling ends the reading (then dispose the handle).
    /// </summary>
    public async IAsyncEnumerable<CommandUpdate> ReadAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using var watchdog = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        if (_deadline is { } deadline)
        {
            watchdog.CancelAfter(deadline - _clock.Elapsed);
        }
        while (true)
        {
            SupervisorMessage? next;
            try
            {
                next = await _channel.ReadAsync(watchdog.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                await GiveUpAsync().ConfigureAwait(false);
                throw SandboxError.SupervisorUnavailable("The sandbox supervisor did not report the command's end in time; the command was killed and the connection reset.");
            }
            catch (SupervisorUnavailableException e)
            {
                throw SandboxError.SupervisorUnavailable(e.Message, e);
            }
            if (next is not { } message)
            {
                throw SandboxError.SupervisorUnavailable("The sandbox supervisor ended the command's channel without an exit report.");
            }
            switch (message.Type)
            {
                case FrameType.Started:
                    var started = (StartedEvent)message.Body!;
                    Pid = started.Pid;
                    Joined = started.Joined;
                    yield return new CommandUpdate.Started(started.Pid, started.Warm, started.Joined);
                    break;
                case FrameType.Stdout:
                    _stdoutBytes += message.Data.Length;
                    yield return new CommandUpdate.Output(false, message.Data);
                    break;
                case FrameType.Stderr:
                    _stderrBytes += message.Data.Length;
                    yield return new CommandUpdate.Output(true, message.Data);
                    break;
                case FrameType.Exited:
                    _finished = true;
                    yield return new CommandUpdate.Exited(Finish((ExitEvent)message.Body!));
                    yield break;
                default:
                    _finished = true;
                    if (_keyed && message.Body is ErrorReply { Code: ErrorCodes.Conflict })
                    {
                        // The supervisor remembers this key with another request (a retry after a restart that changed the body).
                        throw SandboxError.Unprocessable(ProblemCodes.InvalidRequest, "Idempotency key reused",
                            "This Idempotency-Key was already used with a different request body.");
                    }
                    throw SupervisorErrors.Unexpected(message, "the command's exit");
            }
        }
    }

    /// <summary>Runs to the end and returns the result with head+tail-capped output (<paramref name="outputCap"/> bytes per stream).</summary>
    public async Task<ExecuteResult> CollectAsync(int outputCap, CancellationToken cancellationToken)
    {
        var stdout = new OutputBuffer(outputCap);
        var stderr = new OutputBuffer(outputCap);
        await foreach (var update in ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            switch (update)
            {
                case CommandUpdate.Output o:
                    (o.IsStderr ? stderr : stdout).Append(o.Bytes.Span);
                    break;
                case CommandUpdate.Exited x:
                    return x.Result with
                    {
                        Stdout = stdout.ToString(),
                        Stderr = stderr.ToString(),
                        Truncated = x.Result.Truncated || stdout.Truncated || stderr.Truncated,
                    };
            }
        }
        throw SandboxError.SupervisorUnavailable("The command's updates ended without an exit report.");
    }

    /// <summary>Writes to the command's stdin (it must have been started with piped stdin), waiting for the supervisor's credit.</summary>
    public async Task WriteStdinAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        try
        {
            await _channel.SendDataAsync(data, cancellationToken).ConfigureAwait(false);
        }
        catch (SupervisorUnavailableException e)
        {
            throw SandboxError.SupervisorUnavailable(e.Message, e);
        }
    }

    /// <summary>Closes the command's stdin.</summary>
    public Task CloseStdinAsync(CancellationToken cancellationToken) => SendAsync(FrameType.Close, ReadOnlyMemory<byte>.Empty, cancellationToken);

    /// <summary>Signals the command's process tree.</summary>
    public async Task SignalAsync(int signal, CancellationToken cancellationToken)
    {
        try
        {
            await _channel.SignalAsync(signal, cancellationToken).ConfigureAwait(false);
        }
        catch (SupervisorUnavailableException e)
        {
            throw SandboxError.SupervisorUnavailable(e.Message, e);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            if (!_finished && !_channel.Completed && !_keyed)
            {
                // Nobody will read this command's result: it must not run on unobserved.
                try
                {
                    using var timeout = new CancellationTokenSource(KillGrace);
                    await _channel.SignalAsync(9, timeout.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (e is SupervisorUnavailableException or OperationCanceledException)
                {
                }
            }
            await _channel.DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            _activity.Dispose();
        }
    }

    private async Task SendAsync(byte type, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        try
        {
            await _channel.SendAsync(type, payload, cancellationToken).ConfigureAwait(false);
        }
        catch (SupervisorUnavailableException e)
        {
            throw SandboxError.SupervisorUnavailable(e.Message, e);
        }
    }

    /// <summary>The watchdog fired: kill, give the supervisor a moment, then drop a connection that does not answer.</summary>
    private async Task GiveUpAsync()
    {
        try
        {
            using var timeout = new CancellationTokenSource(KillGrace);
            await _channel.SignalAsync(9, timeout.Token).ConfigureAwait(false);
            while (await _channel.ReadAsync(timeout.Token).ConfigureAwait(false) is { IsFinal: false })
            {
            }
        }
        catch (Exception e) when (e is SupervisorUnavailableException or OperationCanceledException)
        {
            _connection.Close("the supervisor did not end a timed-out command");
        }
    }

    /// <summary>
    /// The result, with the server's own clock for the duration and the supervisor's figures bounded to what is
    /// physically possible (they come from inside the sandbox's container; never let them bend usage).
    /// </summary>
    private ExecuteResult Finish(ExitEvent exit)
    {
        var elapsedMs = _clock.Elapsed.TotalMilliseconds;
        var durationMs = exit.Replayed ? Bound(exit.DurationMs, 0, 7 * 24 * 3600e3) : elapsedMs;
        var cpuCeiling = durationMs * Math.Max(1, _session.Cpus) * 1.5 + 50;
        var result = new ExecuteResult
        {
            ExitCode = exit.ExitCode is >= 0 and <= 255 + 128 ? exit.ExitCode : 255,
            Stdout = "",
            Stderr = "",
            TimedOut = exit.TimedOut,
            OomKilled = exit.OomKilled,
            Truncated = exit.Replayed && exit.Truncated,
            StdoutBytes = exit.Replayed ? Math.Max(0, exit.StdoutBytes) : _stdoutBytes,
            StderrBytes = exit.Replayed ? Math.Max(0, exit.StderrBytes) : _stderrBytes,
            DurationMs = Math.Round(durationMs, 3),
            WorkingDirectory = exit.Cwd is { Length: <= 4096 } cwd ? cwd : null,
            CpuUserMs = Math.Round(Bound(exit.CpuUserMs, 0, cpuCeiling), 3),
            CpuSystemMs = Math.Round(Bound(exit.CpuSystemMs, 0, cpuCeiling), 3),
            PeakMemoryBytes = Math.Clamp(exit.PeakMemoryBytes, 0, Math.Max(_session.MemoryBytes, 1) * 2),
        };
        if (!exit.Replayed)
        {
            _usage.CommandFinished(_session, result);
        }
        return result;
    }

    private static double Bound(double value, double min, double max) => double.IsFinite(value) ? Math.Clamp(value, min, max) : min;
}
