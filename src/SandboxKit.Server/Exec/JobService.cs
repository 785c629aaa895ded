using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Exec;

/// <summary>
/// Background processes. The supervisor owns them (docs/supervisor-protocol.md, Jobs): they outlive any connection and
/// any server restart, their output sits in a bounded ring in the sandbox's supervisor, and this class only asks it.
/// The server keeps nothing about them. Cursors are byte offsets into the process's combined output.
/// </summary>
internal sealed class JobService(SessionLifecycle lifecycle, CommandRunner commands, IOptions<SandboxOptions> options)
{
    private readonly SandboxOptions _options = options.Value;

    public Task<ProcessInfo> StartAsync(Session session, StartProcessRequest request, CancellationToken cancellationToken, IdempotencyToken? idempotency = null)
    {
        var run = commands.ToRunRequest(new ExecuteRequest
        {
            Command = request.Command,
            TimeoutSeconds = request.TimeoutSeconds ?? _options.MaxCommandTimeoutSeconds,
            Environment = request.Environment,
        }) with
        {
            Stdin = request.KeepStdinOpen ? "pipe" : "closed",
            Detach = true,
            // A keyed start gets the same id every time: the supervisor answers a repeat with the job it already runs,
            // across server restarts too.
            JobId = idempotency is null ? Guid.NewGuid().ToString("N")[..12] : idempotency.Key[..12],
            RingBytes = _options.OutputCapBytes,
        };
        return lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await RequestAsync(connection, FrameType.Run, run, ProtocolJsonContext.Default.RunRequest, null, cancellationToken).ConfigureAwait(false);
            return ToInfo(result.Job ?? throw SandboxError.SupervisorUnavailable("The supervisor started the process without describing it."));
        }, cancellationToken);
    }

    public Task<IReadOnlyList<ProcessInfo>> ListAsync(Session session, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await JobAsync(connection, new JobRequest { Op = "list" }, null, cancellationToken).ConfigureAwait(false);
            return (IReadOnlyList<ProcessInfo>)(result.Jobs ?? []).Where(j => !TerminalService.IsTerminal(j)).Select(ToInfo).OrderBy(p => p.StartedAt).ToList();
        }, cancellationToken);

    public Task<ProcessInfo> GetAsync(Session session, string id, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
            ToInfo(await JobOfAsync(connection, new JobRequest { Op = "get", Id = CheckId(id) }, cancellationToken).ConfigureAwait(false)), cancellationToken);

    /// <summary>Output after <paramref name="cursor"/> (a byte offset; 0 for everything still kept), at most one window per call.</summary>
    public Task<ProcessOutput> ReadAsync(Session session, string id, long cursor, CancellationToken cancellationToken)
    {
        if (cursor < 0)
        {
            throw SandboxError.Invalid("cursor must be 0 or greater.");
        }
        return lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var events = new List<CommandEvent>();
            var stdout = Encoding.UTF8.GetDecoder();
            var stderr = Encoding.UTF8.GetDecoder();
            var result = await JobAsync(connection, new JobRequest { Op = "read", Id = CheckId(id), Since = cursor, Max = _options.SupervisorWindowBytes }, message =>
            {
                var err = message.Type == FrameType.Stderr;
                events.Add(new CommandEvent
                {
                    Type = err ? CommandEventTypes.Stderr : CommandEventTypes.Stdout,
                    Data = CommandEvents.Decode(err ? stderr : stdout, message.Data.Span),
                });
            }, cancellationToken).ConfigureAwait(false);
            var job = result.Job ?? throw SandboxError.SupervisorUnavailable("The supervisor's read answer has no process.");
            return new ProcessOutput
            {
                Events = events,
                NextCursor = Math.Max(cursor, result.Next ?? cursor),
                Dropped = result.Dropped == true,
                Process = ToInfo(job),
            };
        }, cancellationToken);
    }

    public Task SendStdinAsync(Session session, string id, string? text, bool close, CancellationToken cancellationToken)
    {
        var bytes = text is null ? [] : Encoding.UTF8.GetBytes(text);
        if (bytes.Length > _options.MaxCommandBytes)
        {
            throw SandboxError.TooLarge("stdin too large", $"One stdin write is at most {_options.MaxCommandBytes} bytes; send it in parts.");
        }
        return lifecycle.UseSupervisorAsync(session, connection =>
            JobOfAsync(connection, new JobRequest { Op = "stdin", Id = CheckId(id), Data = Convert.ToBase64String(bytes), Close = close }, cancellationToken),
            cancellationToken);
    }

    /// <summary>Kills the process tree and waits (up to 10 s) until the process is reported exited.</summary>
    public Task KillAsync(Session session, string id, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var job = await JobOfAsync(connection, new JobRequest { Op = "signal", Id = CheckId(id), Signal = 9 }, cancellationToken).ConfigureAwait(false);
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(TimeSpan.FromSeconds(10));
            var delay = TimeSpan.FromMilliseconds(10);
            while (job.Status != "exited")
            {
                try
                {
                    await Task.Delay(delay, deadline.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw SandboxError.Conflict("Process still running", $"Process '{id}' was sent SIGKILL but has not exited within 10 s.");
                }
                delay = TimeSpan.FromMilliseconds(Math.Min(200, delay.TotalMilliseconds * 2));
                job = await JobOfAsync(connection, new JobRequest { Op = "get", Id = id }, cancellationToken).ConfigureAwait(false);
            }
            return true;
        }, cancellationToken);

    internal static ProcessInfo ToInfo(JobInfo job) => new()
    {
        Id = job.Id,
        Command = job.Command,
        Status = job.Status == "exited" ? "exited" : "running",
        Pid = job.Pid,
        StartedAt = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(job.StartedAtMs, 0, 253_402_300_799_000)),
        Result = job.Exit is { } exit ? new ExecuteResult
        {
            ExitCode = exit.ExitCode is >= 0 and <= 255 + 128 ? exit.ExitCode : 255,
            Stdout = "",
            Stderr = "",
            TimedOut = exit.TimedOut,
            OomKilled = exit.OomKilled,
            Truncated = job.FirstOffset > 0,
            StdoutBytes = Math.Max(0, exit.StdoutBytes),
            StderrBytes = Math.Max(0, exit.StderrBytes),
            DurationMs = double.IsFinite(exit.DurationMs) ? Math.Max(0, exit.DurationMs) : 0,
            WorkingDirectory = exit.Cwd,
            CpuUserMs = double.IsFinite(exit.CpuUserMs) ? Math.Max(0, exit.CpuUserMs) : 0,
            CpuSystemMs = double.IsFinite(exit.CpuSystemMs) ? Math.Max(0, exit.CpuSystemMs) : 0,
            PeakMemoryBytes = Math.Max(0, exit.PeakMemoryBytes),
        } : null,
    };

    private static string CheckId(string id) =>
        id.Length is > 0 and <= 64 && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_')
            ? id
            : throw SandboxError.NotFound("Process not found", $"No background process '{SupervisorConnection.Sanitize(id, 64)}' in this session.");

    private static async Task<JobInfo> JobOfAsync(SupervisorConnection connection, JobRequest request, CancellationToken cancellationToken) =>
        (await JobAsync(connection, request, null, cancellationToken).ConfigureAwait(false)).Job
        ?? throw SandboxError.SupervisorUnavailable("The supervisor's answer has no process.");

    private static Task<JobResult> JobAsync(SupervisorConnection connection, JobRequest request, Action<SupervisorMessage>? onData, CancellationToken cancellationToken) =>
        RequestAsync(connection, FrameType.Job, request, ProtocolJsonContext.Default.JobRequest, onData, cancellationToken);

    private static async Task<JobResult> RequestAsync<T>(SupervisorConnection connection, byte type, T request, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info,
        Action<SupervisorMessage>? onData, CancellationToken cancellationToken)
    {
        await using var channel = await connection.OpenAsync(type, request, info, cancellationToken).ConfigureAwait(false);
        while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
        {
            if (message.IsData)
            {
                onData?.Invoke(message);
                continue;
            }
            if (message.Body is JobResult result)
            {
                return result;
            }
            if (message.Body is ErrorReply { Code: ErrorCodes.NotFound } missing)
            {
                throw SandboxError.NotFound("Process not found", SupervisorConnection.Sanitize(missing.Message, 200));
            }
            if (message.IsFinal)
            {
                throw SupervisorErrors.Unexpected(message, "a process answer");
            }
        }
        throw SandboxError.SupervisorUnavailable("The supervisor closed the request without an answer.");
    }
}
