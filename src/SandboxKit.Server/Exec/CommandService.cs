using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Api;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Exec;

/// <summary>
/// Runs commands through a session's agent channel (never a Docker exec) and turns the agent's frames into
/// results and events. Output kept for a result is capped per stream (head and tail); streamed output is passed on as it comes.
/// </summary>
internal sealed class CommandService(SessionManager sessions, UsageMeter usage, IOptions<SandboxOptions> options)
{
    private static readonly TimeSpan WatchdogMargin = TimeSpan.FromSeconds(30);
    private readonly SandboxOptions _options = options.Value;

    public AgentRunRequest ToAgentRequest(Session session, ExecuteRequest request)
    {
        if (string.IsNullOrEmpty(request.Command))
        {
            throw ApiProblemException.Invalid("command is required.");
        }
        return new AgentRunRequest
        {
            Command = request.Command,
            TimeoutMs = TimeoutMs(request.TimeoutSeconds),
            StdinText = request.Stdin,
            Stdin = request.Stdin is null ? "closed" : null,
            MergeStderr = request.MergeStderr,
            Environment = CommandEnvironment(request.Environment),
            WorkingDirectory = request.WorkingDirectory,
        };
    }

    public AgentRunRequest ToAgentRequest(Session session, RunCodeRequest request)
    {
        var language = request.Language?.ToLowerInvariant() switch
        {
            "python" or "python3" or "py" => "python",
            "node" or "javascript" or "js" or "nodejs" => "node",
            "bash" or "sh" or "shell" => "bash",
            _ => throw ApiProblemException.Invalid($"language must be python, node or bash (got '{request.Language}')."),
        };
        if (request.Code is null)
        {
            throw ApiProblemException.Invalid("code is required.");
        }
        return new AgentRunRequest
        {
            Code = request.Code,
            Language = language,
            TimeoutMs = TimeoutMs(request.TimeoutSeconds),
            StdinText = request.Stdin,
            Stdin = request.Stdin is null ? "closed" : null,
            Environment = CommandEnvironment(request.Environment),
        };
    }

    /// <summary>Runs a command and collects its result.</summary>
    public Task<ExecuteResult> ExecuteAsync(Session session, AgentRunRequest request, CancellationToken cancellationToken) =>
        RunAsync(session, request, sink: null, cancellationToken);

    /// <summary>
    /// Runs a command; <paramref name="sink"/>, when given, receives <c>started</c>, <c>stdout</c> and <c>stderr</c> events as they come
    /// and the returned result then carries no output text (the sink had it). Cancellation kills the command's process tree.
    /// </summary>
    /// <param name="session">The session to run in.</param>
    /// <param name="request">What to run.</param>
    /// <param name="sink">Receives events as they come; null collects output into the result instead.</param>
    /// <param name="cancellationToken">Cancelling kills the command.</param>
    /// <param name="onOpened">Called once the command's channel is open, for callers that feed stdin or send signals (the WebSocket endpoint).</param>
    public Task<ExecuteResult> RunAsync(
        Session session, AgentRunRequest request, Func<CommandEvent, ValueTask>? sink, CancellationToken cancellationToken, Action<AgentChannel>? onOpened = null) =>
        sessions.UseAgentAsync(session, async agent =>
        {
            var payload = JsonSerializer.SerializeToUtf8Bytes(request, AgentJsonContext.Default.AgentRunRequest);
            await using var channel = await agent.OpenAsync(FrameType.Run, payload, cancellationToken).ConfigureAwait(false);
            onOpened?.Invoke(channel);
            using var watchdog = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            if (request.TimeoutMs > 0)
            {
                watchdog.CancelAfter(TimeSpan.FromMilliseconds(request.TimeoutMs) + WatchdogMargin);
            }
            var stdout = new OutputBuffer(_options.OutputCapBytes);
            var stderr = new OutputBuffer(_options.OutputCapBytes);
            var stdoutDecoder = Encoding.UTF8.GetDecoder();
            var stderrDecoder = Encoding.UTF8.GetDecoder();
            try
            {
                await foreach (var frame in channel.ReadAllAsync(watchdog.Token).ConfigureAwait(false))
                {
                    switch (frame.Type)
                    {
                        case FrameType.Started when sink is not null:
                            var started = JsonSerializer.Deserialize(frame.Payload.Span, AgentJsonContext.Default.AgentStarted);
                            await sink(new CommandEvent { Type = CommandEventTypes.Started, Pid = started?.Pid }).ConfigureAwait(false);
                            break;
                        case FrameType.Stdout:
                            stdout.Append(frame.Payload.Span);
                            if (sink is not null)
                            {
                                await sink(new CommandEvent { Type = CommandEventTypes.Stdout, Data = Decode(stdoutDecoder, frame.Payload.Span) }).ConfigureAwait(false);
                            }
                            break;
                        case FrameType.Stderr:
                            stderr.Append(frame.Payload.Span);
                            if (sink is not null)
                            {
                                await sink(new CommandEvent { Type = CommandEventTypes.Stderr, Data = Decode(stderrDecoder, frame.Payload.Span) }).ConfigureAwait(false);
                            }
                            break;
                        case FrameType.Exited:
                            var exit = JsonSerializer.Deserialize(frame.Payload.Span, AgentJsonContext.Default.AgentExit)
                                ?? throw new AgentUnavailableException("The agent sent an empty exit report.");
                            var result = new ExecuteResult
                            {
                                ExitCode = exit.ExitCode,
                                Stdout = sink is null ? stdout.ToString() : "",
                                Stderr = sink is null ? stderr.ToString() : "",
                                TimedOut = exit.TimedOut,
                                OomKilled = exit.OomKilled,
                                Truncated = sink is null && (stdout.Truncated || stderr.Truncated),
                                StdoutBytes = stdout.TotalBytes,
                                StderrBytes = stderr.TotalBytes,
                                DurationMs = exit.DurationMs,
                                WorkingDirectory = exit.WorkingDirectory,
                            };
                            usage.CommandFinished(session, result);
                            return result;
                        case FrameType.Error:
                            throw ToProblem(frame);
                    }
                }
                throw new AgentUnavailableException("The sandbox agent closed the command's channel without an exit report.");
            }
            catch (OperationCanceledException)
            {
                // The caller left or the agent never reported: the command must not run on unobserved.
                await KillQuietlyAsync(channel).ConfigureAwait(false);
                if (!cancellationToken.IsCancellationRequested)
                {
                    throw new AgentUnavailableException("The sandbox agent did not report the command's end in time; it was killed.");
                }
                throw;
            }
        }, cancellationToken);

    internal static ApiProblemException ToProblem(AgentFrame frame)
    {
        var error = JsonSerializer.Deserialize(frame.Payload.Span, AgentJsonContext.Default.AgentError) ?? new AgentError();
        return error.Code switch
        {
            "not_found" => new ApiProblemException(StatusCodes.Status404NotFound, ProblemCodes.NotFound, "Not found", error.Message),
            "permission_denied" => new ApiProblemException(StatusCodes.Status403Forbidden, ProblemCodes.Forbidden, "Permission denied", error.Message),
            "exists" or "not_empty" or "busy" => new ApiProblemException(StatusCodes.Status409Conflict, ProblemCodes.Conflict, "Conflict", error.Message),
            "internal" => new ApiProblemException(StatusCodes.Status500InternalServerError, ProblemCodes.Internal, "Sandbox agent error", error.Message),
            _ => ApiProblemException.Invalid(error.Message),
        };
    }

    private static async Task KillQuietlyAsync(AgentChannel channel)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await channel.SendAsync(FrameType.Kill, "{\"signal\":9}"u8.ToArray(), timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is AgentUnavailableException or OperationCanceledException)
        {
        }
    }

    /// <summary>Decodes a chunk of a UTF-8 stream; a character split across chunks is completed by the next one.</summary>
    internal static string Decode(Decoder decoder, ReadOnlySpan<byte> bytes)
    {
        var chars = new char[decoder.GetCharCount(bytes, flush: false)];
        var count = decoder.GetChars(bytes, chars, flush: false);
        return new string(chars, 0, count);
    }

    private long TimeoutMs(double? seconds)
    {
        var value = seconds ?? _options.DefaultCommandTimeoutSeconds;
        if (!(value > 0) || value > _options.MaxCommandTimeoutSeconds)
        {
            throw ApiProblemException.Invalid($"timeoutSeconds must be greater than 0 and at most {_options.MaxCommandTimeoutSeconds}.");
        }
        return Math.Max(1, (long)(value * 1000));
    }

    /// <summary>
    /// Per-command variables only: the session's own environment is the container's, so the agent already starts every
    /// command with it (and a command that unsets one keeps it unset). A request without variables can use the agent's
    /// pre-started shell.
    /// </summary>
    private static IReadOnlyDictionary<string, string>? CommandEnvironment(IReadOnlyDictionary<string, string>? extra)
    {
        if (extra is not null && extra.Keys.FirstOrDefault(k => !SessionManager.IsEnvironmentName(k)) is { } bad)
        {
            throw ApiProblemException.Invalid($"'{bad}' is not a valid environment variable name.");
        }
        return extra is { Count: > 0 } ? extra : null;
    }
}
