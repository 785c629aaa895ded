using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Exec;

/// <summary>Idempotency of a work-starting request, as the Api layer derived it (tenant-scoped key and body fingerprint).</summary>
internal sealed record IdempotencyToken(string Key, string Fingerprint);

/// <summary>
/// Starts commands: checks a request against the server's bounds, turns it into a supervisor run request and opens the
/// command's channel. Everything that runs a command (run-and-wait, SSE, WebSocket, code runs, agent tools) comes
/// through here and gets a <see cref="CommandHandle"/>.
/// </summary>
internal sealed class CommandRunner(SessionLifecycle lifecycle, UsageMeter usage, IOptions<SandboxOptions> options, TimeProvider time)
{
    private static readonly TimeSpan ProbeWait = TimeSpan.FromSeconds(6);
    private readonly SandboxOptions _options = options.Value;

    /// <summary>Head+tail bytes kept per stream of a collected result.</summary>
    public int OutputCap => _options.OutputCapBytes;

    /// <summary>A bash command in the session's shell state.</summary>
    public RunRequest ToRunRequest(ExecuteRequest request, IdempotencyToken? idempotency = null, bool pipeStdin = false)
    {
        if (request.Command is null)
        {
            throw SandboxError.Invalid("command is required.");
        }
        CheckSize("command", request.Command, _options.MaxCommandBytes);
        CheckSize("stdin", request.Stdin, _options.MaxCommandBytes);
        if (request.WorkingDirectory is { Length: > 4096 } || request.WorkingDirectory?.Contains('\0', StringComparison.Ordinal) == true)
        {
            throw SandboxError.Invalid("workingDirectory is longer than 4096 characters or contains NUL.");
        }
        return WithIdempotency(new RunRequest
        {
            Command = request.Command,
            TimeoutMs = TimeoutMs(request.TimeoutSeconds),
            StdinText = request.Stdin,
            Stdin = pipeStdin && request.Stdin is null ? "pipe" : "closed",
            MergeStderr = request.MergeStderr,
            Env = CommandEnvironment(request.Environment),
            Cwd = request.WorkingDirectory,
        }, idempotency);
    }

    /// <summary>Source run with its interpreter; 422 when the session's image does not have it.</summary>
    public async Task<RunRequest> ToRunRequestAsync(Session session, RunCodeRequest request, IdempotencyToken? idempotency, CancellationToken cancellationToken)
    {
        var language = request.Language switch
        {
            "python" or "python3" or "py" => "python",
            "node" or "javascript" or "js" => "node",
            "bash" or "sh" => "bash",
            _ => throw SandboxError.Invalid("language must be python, node or bash."),
        };
        if (request.Code is null)
        {
            throw SandboxError.Invalid("code is required.");
        }
        CheckSize("code", request.Code, _options.MaxCommandBytes);
        CheckSize("stdin", request.Stdin, _options.MaxCommandBytes);
        await RequireLanguageAsync(session, language, cancellationToken).ConfigureAwait(false);
        return WithIdempotency(new RunRequest
        {
            Code = request.Code,
            Language = language,
            TimeoutMs = TimeoutMs(request.TimeoutSeconds),
            StdinText = request.Stdin,
            Stdin = "closed",
            Env = CommandEnvironment(request.Environment),
        }, idempotency);
    }

    /// <summary>Opens the command's channel. Dispose the handle when done (before the end, that kills the command).</summary>
    public async Task<CommandHandle> StartAsync(Session session, RunRequest request, CancellationToken cancellationToken)
    {
        var activity = session.BeginActivity(time);
        try
        {
            return await lifecycle.UseSupervisorAsync(session, async connection =>
            {
                var channel = await connection.OpenAsync(FrameType.Run, request, ProtocolJsonContext.Default.RunRequest, cancellationToken).ConfigureAwait(false);
                return new CommandHandle(channel, connection, session, usage, activity, request.TimeoutMs, request.Key is not null);
            }, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            activity.Dispose();
            throw;
        }
    }

    /// <summary>Runs a command to its end and returns its result.</summary>
    public async Task<ExecuteResult> ExecuteAsync(Session session, RunRequest request, CancellationToken cancellationToken)
    {
        await using var handle = await StartAsync(session, request, cancellationToken).ConfigureAwait(false);
        return await handle.CollectAsync(_options.OutputCapBytes, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Fails with 422 when the session's image lacks the interpreter (waiting briefly for the image probes).</summary>
    public async Task RequireLanguageAsync(Session session, string language, CancellationToken cancellationToken)
    {
        if (language == "bash")
        {
            return;
        }
        var capabilities = await lifecycle.UseSupervisorAsync(session,
            connection => connection.GetProbedCapabilitiesAsync(ProbeWait, cancellationToken), cancellationToken).ConfigureAwait(false);
        var present = language == "python" ? capabilities.Python3 is not null : capabilities.Node is not null;
        if (!present)
        {
            var program = language == "python" ? "python3" : "node";
            throw SandboxError.Unprocessable(ProblemCodes.LanguageUnavailable, "Language not available in this image",
                $"The session's image ({session.Image}) has no {program} on its PATH, so {language} code cannot run there. Use an image with {program}, or run bash.");
        }
    }

    private RunRequest WithIdempotency(RunRequest request, IdempotencyToken? idempotency) => idempotency is null
        ? request
        : request with { Key = idempotency.Key, Fingerprint = idempotency.Fingerprint, KeepBytes = _options.OutputCapBytes };

    private static void CheckSize(string field, string? text, int max)
    {
        if (text is not null && (text.Length > max || Encoding.UTF8.GetByteCount(text) > max))
        {
            throw SandboxError.TooLarge($"{field} too large", $"{field} is larger than {max} bytes; write it to a file first (PUT /files) and run that.");
        }
    }

    private long TimeoutMs(double? seconds)
    {
        var value = seconds ?? _options.DefaultCommandTimeoutSeconds;
        if (!(value > 0) || value > _options.MaxCommandTimeoutSeconds)
        {
            throw SandboxError.Invalid($"timeoutSeconds must be greater than 0 and at most {_options.MaxCommandTimeoutSeconds}.");
        }
        return Math.Max(1, (long)(value * 1000));
    }

    /// <summary>
    /// Per-command variables only: the session's own environment is the container's, so the supervisor already starts
    /// every command with it (and a command that unsets one keeps it unset). A request without variables can use a warm shell.
    /// </summary>
    private static IReadOnlyDictionary<string, string>? CommandEnvironment(IReadOnlyDictionary<string, string>? extra)
    {
        if (extra is null || extra.Count == 0)
        {
            return null;
        }
        if (extra.Keys.FirstOrDefault(k => !SessionRequestValidator.IsEnvironmentName(k)) is { } bad)
        {
            throw SandboxError.Invalid($"'{bad}' is not a valid environment variable name.");
        }
        if (extra.FirstOrDefault(kv => kv.Value is null || kv.Value.Contains('\0', StringComparison.Ordinal)) is { Key: { } nul })
        {
            throw SandboxError.Invalid($"Environment variable '{nul}' is null or contains a NUL character.");
        }
        if (extra.Sum(kv => kv.Key.Length + kv.Value.Length) > 64 * 1024)
        {
            throw SandboxError.TooLarge("environment too large", "environment is larger than 64 KiB.");
        }
        return extra;
    }
}
