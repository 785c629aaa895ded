using System.ComponentModel;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Options;
using ModelContextProtocol.Protocol;
using ModelContextProtocol.Server;
using SandboxKit.Agents;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Mcp;

/// <summary>
/// The sandbox tools over MCP. Each call acts on a session of the caller's tenant (from the API key of the HTTP request),
/// through the server's own <see cref="SessionRegistry"/> and <see cref="CommandRunner"/>; arguments are validated and results
/// shaped by the same <see cref="SandboxTools"/> as the Semantic Kernel and Microsoft.Extensions.AI integrations.
/// Results come as structured content (with an output schema) and as the same JSON in a text block; <c>isError</c> is set
/// whenever <c>status</c> is not <c>ok</c>. <c>run_code</c> runs Python and JavaScript in the session's live interpreters
/// (<see cref="CodeInterpreter"/>) and adds an image block for each image the code displayed, after the text block.
/// </summary>
/// <remarks>
/// Annotations: sessions have no network (the tools cannot ask for one), so every tool is closed-world (<c>openWorld: false</c>).
/// Commands and code can change anything in the sandbox: destructive, not idempotent. Writing a file replaces it: destructive,
/// idempotent. Reading and listing are read-only.
/// </remarks>
[McpServerToolType]
internal sealed class SandboxMcpTools(
    SessionRegistry sessions,
    SessionCreator creator,
    SessionLifecycle lifecycle,
    CommandRunner commands,
    CodeInterpreter interpreter,
    FileService files,
    SandboxTools tools,
    IHttpContextAccessor http,
    IOptions<SandboxOptions> options)
{
    private const string InSession = "In the sandbox session given by sessionId (from create_session): ";
    private const string SessionIdParameter = "The session id returned by create_session.";

    internal static readonly JsonSerializerOptions Json = new()
    {
        TypeInfoResolver = McpResultJsonContext.Default,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    [McpServerTool(Name = "create_session", Title = "Create a sandbox session",
        Destructive = false, Idempotent = false, ReadOnly = false, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxSessionResult))]
    [Description("Create a new sandbox session: an isolated Linux container with no network access, with bash, python3 and node. " +
        "Pass the returned sessionId to the other tools, and call delete_session when done; an idle session is removed by the server after a while. " +
        "Returns JSON {status, sessionId, expiresAt, maxExpiresAt, error}.")]
    public async Task<CallToolResult> CreateSessionAsync(
        [Description("Seconds without activity after which the session is removed. Omit for the server's default.")] int? idleTimeoutSeconds = null,
        CancellationToken cancellationToken = default)
    {
        try
        {
            var session = await ServerToolTarget.TranslateAsync(
                () => creator.CreateAsync(Tenant, new CreateSessionRequest { IdleTimeoutSeconds = idleTimeoutSeconds }, cancellationToken), "new");
            var info = session.ToInfo();
            return ToCallResult(new SandboxSessionResult
            {
                Status = SandboxToolStatus.Ok,
                SessionId = info.Id,
                ExpiresAt = info.ExpiresAt,
                MaxExpiresAt = info.MaxExpiresAt,
            }, SandboxToolStatus.Ok);
        }
        catch (SandboxToolException e)
        {
            return ToCallResult(new SandboxSessionResult { Status = SandboxToolStatus.Error, Error = e.Message }, SandboxToolStatus.Error);
        }
    }

    [McpServerTool(Name = "delete_session", Title = "Delete a sandbox session",
        Destructive = true, Idempotent = true, ReadOnly = false, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxSessionResult))]
    [Description("Delete a sandbox session and everything in it. Returns JSON {status, sessionId, error}.")]
    public async Task<CallToolResult> DeleteSessionAsync(
        [Description(SessionIdParameter)] string sessionId,
        CancellationToken cancellationToken = default)
    {
        try
        {
            var session = Find(sessionId);
            await ServerToolTarget.TranslateAsync(async () =>
            {
                await lifecycle.DeleteAsync(session, "deleted by MCP request");
                return true;
            }, session.Id);
            return ToCallResult(new SandboxSessionResult { Status = SandboxToolStatus.Ok, SessionId = session.Id }, SandboxToolStatus.Ok);
        }
        catch (SandboxToolException e)
        {
            return ToCallResult(new SandboxSessionResult { Status = SandboxToolStatus.Error, SessionId = Shorten(sessionId), Error = e.Message }, SandboxToolStatus.Error);
        }
    }

    [McpServerTool(Name = SandboxToolNames.RunCommand, Title = "Run a bash command",
        Destructive = true, Idempotent = false, ReadOnly = false, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxCommandResult))]
    [Description(InSession + SandboxToolDescriptions.RunCommand)]
    public async Task<CallToolResult> RunCommandAsync(
        [Description(SessionIdParameter)] string sessionId,
        [Description(SandboxToolDescriptions.CommandParameter)] string command,
        [Description(SandboxToolDescriptions.TimeoutParameter)] double? timeoutSeconds = null,
        CancellationToken cancellationToken = default)
    {
        if (Target(sessionId, out var error) is not { } target)
        {
            return Result(SandboxCommandResult.Failed(error!));
        }
        return Result(await tools.RunCommandAsync(target, command, timeoutSeconds, cancellationToken));
    }

    [McpServerTool(Name = SandboxToolNames.RunCode, Title = "Run Python or JavaScript code in a live interpreter, or bash",
        Destructive = true, Idempotent = false, ReadOnly = false, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxCodeResult))]
    [Description(InSession + SandboxToolDescriptions.RunCode)]
    public async Task<CallToolResult> RunCodeAsync(
        [Description(SessionIdParameter)] string sessionId,
        [Description(SandboxToolDescriptions.LanguageParameter)] string language,
        [Description(SandboxToolDescriptions.CodeParameter)] string code,
        [Description(SandboxToolDescriptions.TimeoutParameter)] double? timeoutSeconds = null,
        CancellationToken cancellationToken = default)
    {
        if (Target(sessionId, out var error) is not { } target)
        {
            return Result(SandboxCodeResult.Failed(error!));
        }
        return Result(await tools.RunCodeAsync(target, language, code, timeoutSeconds, cancellationToken));
    }

    [McpServerTool(Name = SandboxToolNames.WriteFile, Title = "Write a text file",
        Destructive = true, Idempotent = true, ReadOnly = false, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxFileResult))]
    [Description(InSession + SandboxToolDescriptions.WriteFile)]
    public async Task<CallToolResult> WriteFileAsync(
        [Description(SessionIdParameter)] string sessionId,
        [Description(SandboxToolDescriptions.PathParameter)] string path,
        [Description(SandboxToolDescriptions.ContentParameter)] string content,
        CancellationToken cancellationToken = default)
    {
        if (Target(sessionId, out var error) is not { } target)
        {
            return Result(SandboxFileResult.Failed(path, error!));
        }
        return Result(await tools.WriteFileAsync(target, path, content, cancellationToken));
    }

    [McpServerTool(Name = SandboxToolNames.ReadFile, Title = "Read a text file",
        Destructive = false, Idempotent = true, ReadOnly = true, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxFileResult))]
    [Description(InSession + SandboxToolDescriptions.ReadFile)]
    public async Task<CallToolResult> ReadFileAsync(
        [Description(SessionIdParameter)] string sessionId,
        [Description(SandboxToolDescriptions.PathParameter)] string path,
        CancellationToken cancellationToken = default)
    {
        if (Target(sessionId, out var error) is not { } target)
        {
            return Result(SandboxFileResult.Failed(path, error!));
        }
        return Result(await tools.ReadFileAsync(target, path, cancellationToken));
    }

    [McpServerTool(Name = SandboxToolNames.ListFiles, Title = "List a directory",
        Destructive = false, Idempotent = true, ReadOnly = true, OpenWorld = false,
        UseStructuredContent = true, OutputSchemaType = typeof(SandboxFileListResult))]
    [Description(InSession + SandboxToolDescriptions.ListFiles)]
    public async Task<CallToolResult> ListFilesAsync(
        [Description(SessionIdParameter)] string sessionId,
        [Description(SandboxToolDescriptions.DirectoryParameter)] string? path = null,
        CancellationToken cancellationToken = default)
    {
        if (Target(sessionId, out var error) is not { } target)
        {
            return Result(SandboxFileListResult.Failed(path, error!));
        }
        return Result(await tools.ListFilesAsync(target, path, cancellationToken));
    }

    /// <summary>The caller's tenant; the MCP endpoint's middleware has already refused calls without a valid key.</summary>
    private Tenant Tenant => (http.HttpContext ?? throw new InvalidOperationException("MCP tools run within an HTTP request.")).GetTenant();

    private Session Find(string sessionId)
    {
        if (string.IsNullOrWhiteSpace(sessionId) || sessionId.Length > 128)
        {
            throw new SandboxToolException("sessionId is required (the id returned by create_session).");
        }
        try
        {
            return sessions.Get(Tenant, sessionId);
        }
        catch (Exception e) when (ServerToolTarget.ToToolException(e, Shorten(sessionId)) is { } translated)
        {
            throw translated;
        }
    }

    private ServerToolTarget? Target(string sessionId, out string? error)
    {
        try
        {
            error = null;
            return new ServerToolTarget(commands, interpreter, files, Find(sessionId), options.Value.MaxFileBytes);
        }
        catch (SandboxToolException e)
        {
            error = e.Message;
            return null;
        }
    }

    private static CallToolResult Result(SandboxCommandResult result) => ToCallResult(result, result.Status);

    private static CallToolResult Result(SandboxFileResult result) => ToCallResult(result, result.Status);

    /// <summary>The JSON as structured content and a text block, then one image block per image (never inside the JSON).</summary>
    private static CallToolResult Result(SandboxCodeResult result)
    {
        var call = ToCallResult(result, result.Status);
        foreach (var image in result.Images)
        {
            call.Content.Add(ImageContentBlock.FromBytes(image.Data, image.MimeType));
        }
        return call;
    }

    private static CallToolResult Result(SandboxFileListResult result) => ToCallResult(result, result.Status);

    private static CallToolResult ToCallResult<T>(T result, string status)
    {
        var element = JsonSerializer.SerializeToElement(result, (System.Text.Json.Serialization.Metadata.JsonTypeInfo<T>)Json.GetTypeInfo(typeof(T)));
        return new CallToolResult
        {
            Content = [new TextContentBlock { Text = element.GetRawText() }],
            StructuredContent = element,
            IsError = status != SandboxToolStatus.Ok,
        };
    }

    private static string Shorten(string? value) => value is null ? "" : value.Length <= 64 ? value : value[..64] + "...";
}

/// <summary>Result of <c>create_session</c> and <c>delete_session</c>.</summary>
internal sealed record SandboxSessionResult
{
    [JsonPropertyName("status")]
    public required string Status { get; init; }

    [JsonPropertyName("sessionId")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? SessionId { get; init; }

    [JsonPropertyName("expiresAt")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public DateTimeOffset? ExpiresAt { get; init; }

    [JsonPropertyName("maxExpiresAt")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public DateTimeOffset? MaxExpiresAt { get; init; }

    [JsonPropertyName("error")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Error { get; init; }
}

[JsonSerializable(typeof(SandboxCommandResult))]
[JsonSerializable(typeof(SandboxCodeResult))]
[JsonSerializable(typeof(SandboxFileResult))]
[JsonSerializable(typeof(SandboxFileListResult))]
[JsonSerializable(typeof(SandboxSessionResult))]
internal sealed partial class McpResultJsonContext : JsonSerializerContext;
