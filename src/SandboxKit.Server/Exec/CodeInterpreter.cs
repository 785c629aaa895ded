using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Options;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Exec;

/// <summary>
/// The code interpreter: live Python and JavaScript interpreters ("contexts") that the supervisor owns
/// (docs/supervisor-protocol.md, Interpreter contexts), cells run in them, and their rich results. Everything an
/// interpreter sends is user code's output and is treated as such: events are parsed defensively, results are
/// bounded per cell, and a result that does not parse is dropped, never a failure of the request.
/// </summary>
internal sealed class CodeInterpreter(SessionLifecycle lifecycle, CommandRunner commands, UsageMeter usage, IOptions<SandboxOptions> options, TimeProvider time)
{
    /// <summary>Ids of the languages' default contexts.</summary>
    public static string DefaultContextId(string language) => "default-" + language;

    /// <summary>Most rich-result bytes one cell answer carries; more results are dropped and the answer says so.</summary>
    private const int MaxResultBytesPerCell = 32 << 20;

    /// <summary>Most bytes one interpreter event may have (the drivers' bound, plus framing).</summary>
    private const int MaxEventBytes = 16 << 20;

    private readonly SandboxOptions _options = options.Value;

    /// <summary>The interpreter language of a request's <c>language</c>: <c>python</c>, <c>javascript</c> or <c>bash</c> (the shell).</summary>
    public static string NormalizeLanguage(string? language) => language?.Trim().ToLowerInvariant() switch
    {
        "python" or "python3" or "py" => "python",
        "javascript" or "js" or "node" or "nodejs" => "javascript",
        "bash" or "sh" or "shell" => "bash",
        _ => throw SandboxError.Invalid("language must be python, javascript or bash."),
    };

    public async Task<CodeContext> CreateAsync(Session session, CreateContextRequest request, CancellationToken cancellationToken)
    {
        var language = InterpreterLanguage(request.Language);
        await RequireAsync(session, language, cancellationToken).ConfigureAwait(false);
        var id = "ctx-" + Guid.NewGuid().ToString("N")[..12];
        return await ContextOpAsync(session, new ContextRequest { Op = "create", Id = id, Language = language, Cwd = CheckCwd(request.Cwd) }, cancellationToken).ConfigureAwait(false);
    }

    public Task<IReadOnlyList<CodeContext>> ListAsync(Session session, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await RequestAsync(connection, new ContextRequest { Op = "list" }, cancellationToken).ConfigureAwait(false);
            return (IReadOnlyList<CodeContext>)(result.Contexts ?? []).Select(ToContext).OrderBy(c => c.CreatedAt).ToList();
        }, cancellationToken);

    public Task<CodeContext> GetAsync(Session session, string id, CancellationToken cancellationToken) =>
        ContextOpAsync(session, new ContextRequest { Op = "get", Id = CheckId(id) }, cancellationToken);

    /// <summary>A fresh interpreter in the context (its variables are gone).</summary>
    public Task<CodeContext> RestartAsync(Session session, string id, CancellationToken cancellationToken) =>
        ContextOpAsync(session, new ContextRequest { Op = "restart", Id = CheckId(id) }, cancellationToken);

    /// <summary>Interrupts the running cell (KeyboardInterrupt); the context keeps its state unless it does not stop within the grace period.</summary>
    public Task<CodeContext> InterruptAsync(Session session, string id, CancellationToken cancellationToken) =>
        ContextOpAsync(session, new ContextRequest { Op = "interrupt", Id = CheckId(id), GraceMs = 3000 }, cancellationToken);

    public Task DeleteAsync(Session session, string id, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            await RequestAsync(connection, new ContextRequest { Op = "delete", Id = CheckId(id) }, cancellationToken).ConfigureAwait(false);
            return true;
        }, cancellationToken);

    /// <summary>Runs a cell to its end and returns its result.</summary>
    public async Task<ExecuteResult> RunAsync(Session session, RunCodeRequest request, CancellationToken cancellationToken)
    {
        ExecuteResult? result = null;
        await foreach (var e in StreamAsync(session, request, cancellationToken).ConfigureAwait(false))
        {
            if (e.Type == CommandEventTypes.Exited)
            {
                result = e.Result;
            }
        }
        return result ?? throw SandboxError.SupervisorUnavailable("The interpreter's cell ended without an outcome.");
    }

    /// <summary>
    /// Runs a cell and yields its events as they come: <c>stdout</c>, <c>stderr</c>, <c>result</c>, <c>error</c> (the cell's
    /// exception), and <c>exited</c> with the whole result (streams capped as for commands, the rich results included).
    /// </summary>
    public async IAsyncEnumerable<CommandEvent> StreamAsync(Session session, RunCodeRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var language = NormalizeLanguage(request.Language);
        if (language == "bash")
        {
            throw SandboxError.Invalid("bash runs in the session's shell: use the command endpoints (or /code without a context).");
        }
        if (request.Code is null)
        {
            throw SandboxError.Invalid("code is required.");
        }
        if (Encoding.UTF8.GetByteCount(request.Code) > _options.MaxCommandBytes)
        {
            throw SandboxError.TooLarge("code too large", $"code is larger than {_options.MaxCommandBytes} bytes; write it to a file first (PUT /files) and run that.");
        }
        var timeout = request.TimeoutSeconds ?? _options.DefaultCommandTimeoutSeconds;
        if (!(timeout > 0) || timeout > _options.MaxCommandTimeoutSeconds)
        {
            throw SandboxError.Invalid($"timeoutSeconds must be greater than 0 and at most {_options.MaxCommandTimeoutSeconds}.");
        }
        var contextId = request.ContextId is { } given ? CheckId(given) : await EnsureDefaultAsync(session, language, cancellationToken).ConfigureAwait(false);

        using var activity = session.BeginActivity(time);
        var clock = Stopwatch.StartNew();
        var channel = await lifecycle.UseSupervisorAsync(session, connection => connection.OpenAsync(FrameType.Context, new ContextRequest
        {
            Op = "run",
            Id = contextId,
            Code = request.Code,
            TimeoutMs = Math.Max(1, (long)(timeout * 1000)),
            GraceMs = 3000,
        }, ProtocolJsonContext.Default.ContextRequest, cancellationToken), cancellationToken).ConfigureAwait(false);
        await using var _ = channel;

        var stdout = new OutputBuffer(_options.OutputCapBytes);
        var stderr = new OutputBuffer(_options.OutputCapBytes);
        var stdoutText = Encoding.UTF8.GetDecoder();
        var stderrText = Encoding.UTF8.GetDecoder();
        var results = new List<CodeOutput>();
        long resultBytes = 0;
        var resultsDropped = false;
        CodeError? error = null;
        using var pendingEvent = new MemoryStream();
        var eventTooLarge = false;
        while (true)
        {
            SupervisorMessage? next;
            try
            {
                next = await channel.ReadAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (SupervisorUnavailableException e) when (!cancellationToken.IsCancellationRequested)
            {
                await lifecycle.ThrowIfGoneAsync(session).ConfigureAwait(false);
                throw SandboxError.SupervisorUnavailable(e.Message, e);
            }
            if (next is not { } message)
            {
                throw SandboxError.SupervisorUnavailable("The supervisor ended the cell without an outcome.");
            }
            switch (message.Type)
            {
                case FrameType.Stdout or FrameType.Stderr:
                {
                    var err = message.Type == FrameType.Stderr;
                    (err ? stderr : stdout).Append(message.Data.Span);
                    var text = CommandEvents.Decode(err ? stderrText : stdoutText, message.Data.Span);
                    if (text.Length > 0)
                    {
                        yield return new CommandEvent { Type = err ? CommandEventTypes.Stderr : CommandEventTypes.Stdout, Data = text };
                    }
                    continue;
                }
                case FrameType.EventChunk:
                    if (pendingEvent.Length + message.Data.Length > MaxEventBytes)
                    {
                        eventTooLarge = true;
                    }
                    else
                    {
                        pendingEvent.Write(message.Data.Span);
                    }
                    continue;
                case FrameType.EventEnd:
                {
                    var payload = pendingEvent.ToArray();
                    pendingEvent.SetLength(0);
                    if (eventTooLarge)
                    {
                        eventTooLarge = false;
                        resultsDropped = true;
                        continue;
                    }
                    switch (ParseEvent(payload))
                    {
                        case CodeOutput output when resultBytes + payload.Length <= MaxResultBytesPerCell:
                            resultBytes += payload.Length;
                            results.Add(output);
                            yield return new CommandEvent { Type = CommandEventTypes.Result, Output = output };
                            break;
                        case CodeOutput:
                            resultsDropped = true;
                            break;
                        case CodeError raised:
                            error = raised;
                            yield return new CommandEvent { Type = CommandEventTypes.Error, Exception = raised, Error = raised.Name + ": " + raised.Value };
                            break;
                    }
                    continue;
                }
            }
            if (message.Body is ContextResult { Cell: { } cell })
            {
                var died = cell.Status == "died";
                if (died && error is null)
                {
                    error = new CodeError
                    {
                        Name = cell.OomKilled ? "MemoryError" : "InterpreterDied",
                        Value = cell.OomKilled
                            ? "The interpreter was killed by the session's memory limit; its state is lost and the next cell starts a fresh one."
                            : $"The interpreter exited{(cell.ExitCode is { } code ? $" with status {code}" : "")}{(cell.TimedOut ? " after it did not stop when interrupted" : "")}; its state is lost and the next cell starts a fresh one.",
                        Traceback = "",
                    };
                    yield return new CommandEvent { Type = CommandEventTypes.Error, Exception = error, Error = error.Name + ": " + error.Value };
                }
                var result = new ExecuteResult
                {
                    ExitCode = cell.Status == "ok" ? 0 : 1,
                    Stdout = stdout.ToString(),
                    Stderr = stderr.ToString(),
                    TimedOut = cell.TimedOut,
                    OomKilled = cell.OomKilled,
                    Truncated = stdout.Truncated || stderr.Truncated || resultsDropped,
                    StdoutBytes = stdout.TotalBytes,
                    StderrBytes = stderr.TotalBytes,
                    DurationMs = clock.Elapsed.TotalMilliseconds,
                    Results = results,
                    Error = error,
                    ExecutionCount = Math.Max(0, cell.ExecutionCount),
                    ContextId = contextId,
                    Interrupted = cell.Status == "interrupted" || (died && cell.TimedOut),
                    StateLost = cell.StateLost || died,
                };
                usage.CommandFinished(session, result);
                yield return new CommandEvent { Type = CommandEventTypes.Exited, Result = result };
                yield break;
            }
            if (message.Body is ErrorReply reply)
            {
                throw ToError(reply, contextId);
            }
            if (message.IsFinal)
            {
                throw SupervisorErrors.Unexpected(message, "a cell outcome");
            }
        }
    }

    /// <summary>The default context of a language, made on first use.</summary>
    private async Task<string> EnsureDefaultAsync(Session session, string language, CancellationToken cancellationToken)
    {
        var id = DefaultContextId(language);
        try
        {
            await GetAsync(session, id, cancellationToken).ConfigureAwait(false);
            return id;
        }
        catch (SandboxError e) when (e.Kind == ErrorKind.NotFound && session.Closed is false)
        {
        }
        await RequireAsync(session, language, cancellationToken).ConfigureAwait(false);
        try
        {
            await ContextOpAsync(session, new ContextRequest { Op = "create", Id = id, Language = language }, cancellationToken).ConfigureAwait(false);
        }
        catch (SandboxError e) when (e.Kind == ErrorKind.Conflict)
        {
            // Made by a concurrent first cell.
        }
        return id;
    }

    private Task RequireAsync(Session session, string language, CancellationToken cancellationToken) =>
        commands.RequireLanguageAsync(session, language == "javascript" ? "node" : "python", cancellationToken);

    private Task<CodeContext> ContextOpAsync(Session session, ContextRequest request, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            var result = await RequestAsync(connection, request, cancellationToken).ConfigureAwait(false);
            return ToContext(result.Context ?? throw SandboxError.SupervisorUnavailable("The supervisor answered without the context."));
        }, cancellationToken);

    private static async Task<ContextResult> RequestAsync(SupervisorConnection connection, ContextRequest request, CancellationToken cancellationToken)
    {
        await using var channel = await connection.OpenAsync(FrameType.Context, request, ProtocolJsonContext.Default.ContextRequest, cancellationToken).ConfigureAwait(false);
        while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
        {
            switch (message.Body)
            {
                case ContextResult result:
                    return result;
                case ErrorReply reply:
                    throw ToError(reply, request.Id);
            }
            if (message.IsFinal)
            {
                throw SupervisorErrors.Unexpected(message, "a context answer");
            }
        }
        throw SandboxError.SupervisorUnavailable("The supervisor closed the request without an answer.");
    }

    private static SandboxError ToError(ErrorReply reply, string? contextId)
    {
        var detail = SupervisorConnection.Sanitize(reply.Message, 300);
        return reply.Code switch
        {
            ErrorCodes.NotFound => SandboxError.NotFound("Context not found", $"No code context '{contextId}' in this session."),
            ErrorCodes.Exists or ErrorCodes.Conflict => SandboxError.Conflict("Context conflict", detail),
            ErrorCodes.Busy => SandboxError.Conflict("Context busy", $"Context '{contextId}' is running another cell (or the session has its maximum of contexts): {detail}"),
            _ => SupervisorErrors.ToDomain(reply),
        };
    }

    /// <summary>An interpreter event: a rich result, the cell's exception, or null when it is neither or does not parse.</summary>
    internal static object? ParseEvent(byte[] payload)
    {
        try
        {
            using var document = JsonDocument.Parse(payload);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("type", out var type))
            {
                return null;
            }
            switch (type.GetString())
            {
                case "result" when root.TryGetProperty("data", out var data) && data.ValueKind == JsonValueKind.Object:
                    var output = new CodeOutput
                    {
                        IsMainResult = root.TryGetProperty("isMainResult", out var main) && main.ValueKind == JsonValueKind.True,
                    };
                    foreach (var entry in data.EnumerateObject())
                    {
                        // Mime types only (never a second isMainResult), values strings as the drivers send them.
                        if (entry.Name.Contains('/', StringComparison.Ordinal) && entry.Name.Length <= 255 && entry.Value.ValueKind == JsonValueKind.String)
                        {
                            output.Data[entry.Name] = entry.Value.Clone();
                        }
                    }
                    return output.Data.Count > 0 ? output : null;
                case "error":
                    return new CodeError
                    {
                        Name = Text(root, "name", 256) ?? "Error",
                        Value = Text(root, "value", 64 * 1024) ?? "",
                        Traceback = Text(root, "traceback", 1 << 20) ?? "",
                    };
                default:
                    return null;
            }
        }
        catch (JsonException)
        {
            return null;
        }

        static string? Text(JsonElement root, string name, int max) =>
            root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String
                ? value.GetString() is { } s && s.Length > max ? s[..max] + "…" : value.GetString()
                : null;
    }

    private static CodeContext ToContext(ContextInfo info) => new()
    {
        Id = info.Id,
        Language = info.Language,
        Status = info.Status,
        ExecutionCount = Math.Max(0, info.ExecutionCount),
        CreatedAt = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(info.CreatedAtMs, 0, 253_402_300_799_000)),
        Cwd = info.Cwd,
        Version = info.Version,
        IPython = info.IPython,
        Generation = Math.Max(0, info.Generation),
    };

    private static string InterpreterLanguage(string? language) =>
        NormalizeLanguage(language) is var normalized && normalized != "bash"
            ? normalized
            : throw SandboxError.Invalid("A context is python or javascript; bash is the session's shell itself.");

    private static string CheckId(string id) =>
        id.Length is > 0 and <= 64 && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_')
            ? id
            : throw SandboxError.NotFound("Context not found", $"No code context '{SupervisorConnection.Sanitize(id, 64)}' in this session.");

    private static string? CheckCwd(string? cwd) =>
        cwd is { Length: > 4096 } || cwd?.Contains('\0', StringComparison.Ordinal) == true
            ? throw SandboxError.Invalid("cwd is longer than 4096 characters or contains NUL.")
            : cwd;
}
