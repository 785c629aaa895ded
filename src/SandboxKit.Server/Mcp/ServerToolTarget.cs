using SandboxKit.Agents;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Mcp;

/// <summary>
/// Carries the shared agent tools' calls out in-process, on a session of the caller's tenant: commands through
/// <see cref="CommandRunner"/>, Python and JavaScript cells through <see cref="CodeInterpreter"/> (the session's default
/// contexts), files through <see cref="FileService"/> (as the APIs do), never HTTP to itself.
/// Failures become <see cref="SandboxToolException"/>s whose messages are fit for a model.
/// </summary>
internal sealed class ServerToolTarget(CommandRunner commands, CodeInterpreter interpreter, FileService files, Session session, long maxFileBytes) : ISandboxToolTarget
{
    public Task<ExecuteResult> ExecuteAsync(ExecuteRequest request, CancellationToken cancellationToken) =>
        TranslateAsync(() => commands.ExecuteAsync(session, commands.ToRunRequest(request), cancellationToken), session.Id);

    public Task<ExecuteResult> RunCodeAsync(RunCodeRequest request, CancellationToken cancellationToken) =>
        TranslateAsync(async () => CodeInterpreter.NormalizeLanguage(request.Language) == "bash"
            ? await commands.ExecuteAsync(session, await commands.ToRunRequestAsync(session, request, null, cancellationToken), cancellationToken)
            : await interpreter.RunAsync(session, request, cancellationToken), session.Id);

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
        SandboxError { Kind: ErrorKind.SessionNotFound } e =>
            new SandboxToolException($"session '{sessionId}' does not exist (it may have expired or been deleted); create a new one.", e) { SessionGone = true },
        SandboxError { Kind: ErrorKind.NotFound } e => new SandboxToolException("not found: " + e.Message, e),
        SandboxError { Kind: ErrorKind.SupervisorUnavailable } e => new SandboxToolException("the sandbox is not responding; try again.", e),
        SandboxError { Kind: ErrorKind.EngineUnavailable } e => new SandboxToolException("the container engine is unavailable; try again later.", e),
        SandboxError e => new SandboxToolException(e.Message, e),
        _ => null,
    };
}
