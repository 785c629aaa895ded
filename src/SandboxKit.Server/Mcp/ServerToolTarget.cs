using SandboxKit.Agents;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Api;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Mcp;

/// <summary>
/// Carries the shared agent tools' calls out in-process, on a session of the caller's tenant: commands through
/// <see cref="CommandService"/>, files through the session's agent channel (as the Files API does), never HTTP to itself.
/// Failures become <see cref="SandboxToolException"/>s whose messages are fit for a model.
/// </summary>
internal sealed class ServerToolTarget(CommandService commands, FileService files, Session session, long maxFileBytes) : ISandboxToolTarget
{
    public Task<ExecuteResult> ExecuteAsync(ExecuteRequest request, CancellationToken cancellationToken) =>
        TranslateAsync(() => commands.ExecuteAsync(session, commands.ToAgentRequest(session, request), cancellationToken), session.Id);

    public Task<ExecuteResult> RunCodeAsync(RunCodeRequest request, CancellationToken cancellationToken) =>
        TranslateAsync(() => commands.ExecuteAsync(session, commands.ToAgentRequest(session, request), cancellationToken), session.Id);

    public Task<FileEntry> WriteFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken) =>
        TranslateAsync(() => files.WriteAsync(session, path, content, maxFileBytes, cancellationToken), session.Id);

    public Task<long> ReadFileAsync(string path, Stream destination, CancellationToken cancellationToken) =>
        TranslateAsync(() => files.ReadAsync(session, path, destination, beforeFirstWrite: null, cancellationToken), session.Id);

    public Task<FileList> ListFilesAsync(string path, CancellationToken cancellationToken) =>
        TranslateAsync(() => files.ListAsync(session, path, cancellationToken), session.Id);

    /// <summary>Runs <paramref name="call"/>, mapping the server's failures to messages a model may read (the server's log keeps the details).</summary>
    internal static async Task<T> TranslateAsync<T>(Func<Task<T>> call, string sessionId)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (Exception e) when (ToToolException(e, sessionId) is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>The model-facing form of a server failure, or null for failures that are not expected here.</summary>
    internal static SandboxToolException? ToToolException(Exception exception, string sessionId) => exception switch
    {
        ApiProblemException { Code: ProblemCodes.SessionNotFound } e =>
            new SandboxToolException($"session '{sessionId}' does not exist (it may have expired or been deleted); create a new one.", e) { SessionGone = true },
        ApiProblemException { Code: ProblemCodes.NotFound } e => new SandboxToolException("not found: " + (e.Detail ?? e.Title), e),
        ApiProblemException e => new SandboxToolException(e.Detail ?? e.Title, e),
        AgentUnavailableException e => new SandboxToolException("the sandbox is not responding; try again.", e),
        EngineUnavailableException e => new SandboxToolException("the container engine is unavailable; try again later.", e),
        _ => null,
    };
}
