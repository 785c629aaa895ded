using System.Text.Json;
using Microsoft.Extensions.Options;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Exec;

/// <summary>
/// Terminals: jobs on a pseudo-terminal that the supervisor owns (docs/supervisor-protocol.md, Terminals), so they
/// outlive connections and server restarts like background processes do, with a replay buffer of byte offsets and an
/// asciicast recording. This class keeps nothing; it asks the supervisor.
/// </summary>
internal sealed class TerminalService(SessionLifecycle lifecycle, CommandRunner commands, IOptions<SandboxOptions> options)
{
    /// <summary>Terminal ids start with this, so they are never taken for background processes (the same job table).</summary>
    public const string IdPrefix = "term-";

    private readonly SandboxOptions _options = options.Value;

    public Task<TerminalInfo> CreateAsync(Session session, CreateTerminalRequest request, CancellationToken cancellationToken)
    {
        var size = Size(request.Cols ?? 80, request.Rows ?? 24);
        var run = commands.ToRunRequest(new ExecuteRequest
        {
            // The supervisor starts its login shell when there is no command.
            Command = request.Command ?? "",
            TimeoutSeconds = _options.MaxCommandTimeoutSeconds,
            Environment = request.Environment,
        }) with
        {
            Command = request.Command,
            // A terminal lives as long as its session, not a command timeout.
            TimeoutMs = 0,
            Stdin = "pipe",
            Detach = true,
            JobId = IdPrefix + Guid.NewGuid().ToString("N")[..12],
            RingBytes = _options.TerminalReplayBytes,
            Pty = size,
            RecordingBytes = _options.TerminalRecordingBytes,
        };
        return lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await JobRequestAsync(connection, FrameType.Run, run, ProtocolJsonContext.Default.RunRequest, cancellationToken).ConfigureAwait(false);
            return ToInfo(result.Job ?? throw SandboxError.SupervisorUnavailable("The supervisor started the terminal without describing it."));
        }, cancellationToken);
    }

    public Task<IReadOnlyList<TerminalInfo>> ListAsync(Session session, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await JobRequestAsync(connection, FrameType.Job, new JobRequest { Op = "list" }, ProtocolJsonContext.Default.JobRequest, cancellationToken).ConfigureAwait(false);
            return (IReadOnlyList<TerminalInfo>)(result.Jobs ?? []).Where(IsTerminal).Select(ToInfo).OrderBy(t => t.StartedAt).ToList();
        }, cancellationToken);

    public Task<TerminalInfo> GetAsync(Session session, string id, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection => ToInfo(await GetJobAsync(connection, id, cancellationToken).ConfigureAwait(false)), cancellationToken);

    public Task<TerminalInfo> ResizeAsync(Session session, string id, int cols, int rows, CancellationToken cancellationToken)
    {
        var size = Size(cols, rows);
        return lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await JobRequestAsync(connection, FrameType.Job, new JobRequest { Op = "resize", Id = CheckId(id), Size = size },
                ProtocolJsonContext.Default.JobRequest, cancellationToken).ConfigureAwait(false);
            return ToInfo(result.Job ?? throw SandboxError.SupervisorUnavailable("The supervisor resized the terminal without describing it."));
        }, cancellationToken);
    }

    /// <summary>
    /// Closes a terminal the way closing a terminal window does: SIGHUP to its tree, SIGKILL if it is still there after
    /// two seconds; then it is forgotten. Idempotent for a terminal that already exited.
    /// </summary>
    public Task CloseAsync(Session session, string id, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var job = await GetJobAsync(connection, id, cancellationToken).ConfigureAwait(false);
            if (job.Status != "exited")
            {
                job = await SignalAsync(connection, id, 1, cancellationToken).ConfigureAwait(false);
                job = await WaitExitedAsync(connection, job, TimeSpan.FromSeconds(2), cancellationToken).ConfigureAwait(false);
            }
            // Also after the shell ended: what it started in the background (nohup'd, in its own process group) is still in
            // the terminal's session, and the supervisor's signal reaches what is left of it.
            job = await SignalAsync(connection, id, 9, cancellationToken).ConfigureAwait(false);
            job = await WaitExitedAsync(connection, job, TimeSpan.FromSeconds(10), cancellationToken).ConfigureAwait(false);
            if (job.Status != "exited")
            {
                throw SandboxError.Conflict("Terminal still running", $"Terminal '{id}' was sent SIGKILL but has not exited within 10 s.");
            }
            await JobRequestAsync(connection, FrameType.Job, new JobRequest { Op = "forget", Id = id }, ProtocolJsonContext.Default.JobRequest, cancellationToken)
                .ConfigureAwait(false);
            return true;
        }, cancellationToken);

    /// <summary>Writes the terminal's asciicast v2 recording to <paramref name="destination"/> as it comes from the supervisor.</summary>
    public Task WriteRecordingAsync(Session session, string id, Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> destination, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            await using var channel = await connection.OpenAsync(FrameType.Job, new JobRequest { Op = "recording", Id = CheckId(id) },
                ProtocolJsonContext.Default.JobRequest, cancellationToken).ConfigureAwait(false);
            while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
            {
                if (message.IsData)
                {
                    await destination(message.Data, cancellationToken).ConfigureAwait(false);
                    continue;
                }
                if (message.Body is JobResult)
                {
                    return true;
                }
                ThrowFor(message, "a recording");
            }
            throw SandboxError.SupervisorUnavailable("The supervisor closed the recording without an answer.");
        }, cancellationToken);

    /// <summary>
    /// Attaches to a terminal: its output from <paramref name="since"/> (what is still kept of it) and live after that,
    /// input into it. Several attachments share one terminal: each sees all output and each may type.
    /// </summary>
    public Task<TerminalAttachment> AttachAsync(Session session, string id, long since, CancellationToken cancellationToken)
    {
        if (since < 0)
        {
            throw SandboxError.Invalid("since must be 0 or greater.");
        }
        return lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var job = await GetJobAsync(connection, id, cancellationToken).ConfigureAwait(false);
            var start = Math.Max(since, job.FirstOffset);
            // An offset beyond what was written would wait for output that has not happened: start at the live end.
            start = Math.Min(start, job.NextOffset);
            var channel = await connection.OpenAsync(FrameType.Job, new JobRequest { Op = "attach", Id = id, Since = start },
                ProtocolJsonContext.Default.JobRequest, cancellationToken).ConfigureAwait(false);
            return new TerminalAttachment(channel, ToInfo(job), start, dropped: since < job.FirstOffset);
        }, cancellationToken);
    }

    public static bool IsTerminal(JobInfo job) => job.Pty is not null && job.Id.StartsWith(IdPrefix, StringComparison.Ordinal);

    internal static TerminalInfo ToInfo(JobInfo job) => new()
    {
        Id = job.Id,
        Command = job.Command.Length > 0 ? job.Command : "bash -l -i",
        Status = job.Status == "exited" ? "exited" : "running",
        Cols = job.Pty?.Cols ?? 0,
        Rows = job.Pty?.Rows ?? 0,
        Pid = job.Pid,
        StartedAt = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(job.StartedAtMs, 0, 253_402_300_799_000)),
        FirstOffset = Math.Max(0, job.FirstOffset),
        NextOffset = Math.Max(0, job.NextOffset),
        ExitCode = job.Exit is { } exit ? Math.Clamp(exit.ExitCode, -1, 255 + 128) : null,
    };

    internal static TerminalSize Size(int cols, int rows) =>
        cols is >= 1 and <= 1000 && rows is >= 1 and <= 1000
            ? new TerminalSize { Cols = cols, Rows = rows }
            : throw SandboxError.Invalid("cols and rows must be between 1 and 1000.");

    private static string CheckId(string id) =>
        id.StartsWith(IdPrefix, StringComparison.Ordinal) && id.Length <= 64 && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_')
            ? id
            : throw NotFound(id);

    private static SandboxError NotFound(string id) =>
        SandboxError.NotFound("Terminal not found", $"No terminal '{SupervisorConnection.Sanitize(id, 64)}' in this session.");

    private static async Task<JobInfo> GetJobAsync(SupervisorConnection connection, string id, CancellationToken cancellationToken)
    {
        var result = await JobRequestAsync(connection, FrameType.Job, new JobRequest { Op = "get", Id = CheckId(id) }, ProtocolJsonContext.Default.JobRequest, cancellationToken)
            .ConfigureAwait(false);
        return result.Job is { } job && IsTerminal(job) ? job : throw NotFound(id);
    }

    private static async Task<JobInfo> SignalAsync(SupervisorConnection connection, string id, int signal, CancellationToken cancellationToken) =>
        (await JobRequestAsync(connection, FrameType.Job, new JobRequest { Op = "signal", Id = id, Signal = signal }, ProtocolJsonContext.Default.JobRequest, cancellationToken)
            .ConfigureAwait(false)).Job ?? throw SandboxError.SupervisorUnavailable("The supervisor's answer has no terminal.");

    private static async Task<JobInfo> WaitExitedAsync(SupervisorConnection connection, JobInfo job, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        var delay = TimeSpan.FromMilliseconds(10);
        while (job.Status != "exited" && DateTime.UtcNow < deadline)
        {
            await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
            delay = TimeSpan.FromMilliseconds(Math.Min(200, delay.TotalMilliseconds * 2));
            job = await GetJobAsync(connection, job.Id, cancellationToken).ConfigureAwait(false);
        }
        return job;
    }

    private static async Task<JobResult> JobRequestAsync<T>(SupervisorConnection connection, byte type, T request, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info,
        CancellationToken cancellationToken)
    {
        await using var channel = await connection.OpenAsync(type, request, info, cancellationToken).ConfigureAwait(false);
        while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
        {
            if (message.Body is JobResult result)
            {
                return result;
            }
            if (!message.IsData)
            {
                ThrowFor(message, "a terminal answer");
            }
        }
        throw SandboxError.SupervisorUnavailable("The supervisor closed the request without an answer.");
    }

    private static void ThrowFor(SupervisorMessage message, string what)
    {
        if (message.Body is ErrorReply { Code: ErrorCodes.NotFound } missing)
        {
            throw SandboxError.NotFound("Terminal not found", SupervisorConnection.Sanitize(missing.Message, 200));
        }
        if (message.IsFinal)
        {
            throw SupervisorErrors.Unexpected(message, what);
        }
    }
}

/// <summary>One attachment to a terminal: output out (from <see cref="StartOffset"/>), input and resizes in.</summary>
internal sealed class TerminalAttachment(SupervisorChannel channel, TerminalInfo terminal, long startOffset, bool dropped) : IAsyncDisposable
{
    /// <summary>The terminal as it was at attach time.</summary>
    public TerminalInfo Terminal { get; } = terminal;

    /// <summary>The output offset of the first byte <see cref="ReadAsync"/> returns.</summary>
    public long StartOffset { get; } = startOffset;

    /// <summary>True when output older than the <c>since</c> asked for was no longer kept.</summary>
    public bool Dropped { get; } = dropped;

    /// <summary>The next piece of output, or the terminal's exit (null when the attachment ended).</summary>
    public async ValueTask<TerminalOutput?> ReadAsync(CancellationToken cancellationToken)
    {
        while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
        {
            if (message.IsData)
            {
                return new TerminalOutput(message.Data, null);
            }
            switch (message.Body)
            {
                case ExitEvent exit:
                    return new TerminalOutput(ReadOnlyMemory<byte>.Empty, Math.Clamp(exit.ExitCode, -1, 255 + 128));
                case JobResult:
                    return null;
                case DroppedEvent:
                    continue;
                case ErrorReply { Code: ErrorCodes.NotFound } missing:
                    throw SandboxError.NotFound("Terminal not found", SupervisorConnection.Sanitize(missing.Message, 200));
            }
            if (message.IsFinal)
            {
                throw SupervisorErrors.Unexpected(message, "terminal output");
            }
        }
        return null;
    }

    /// <summary>Input to the terminal, within the supervisor's credit.</summary>
    public Task WriteAsync(ReadOnlyMemory<byte> input, CancellationToken cancellationToken) => channel.SendDataAsync(input, cancellationToken);

    /// <summary>Ends the attachment (the terminal goes on).</summary>
    public async ValueTask DisposeAsync()
    {
        if (!channel.Completed)
        {
            try
            {
                await channel.SendAsync(FrameType.Close, ReadOnlyMemory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
            }
            catch (SupervisorUnavailableException)
            {
            }
        }
        await channel.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>Output bytes, or (with empty data) the exit code of the terminal's process.</summary>
internal sealed record TerminalOutput(ReadOnlyMemory<byte> Data, int? ExitCode);
