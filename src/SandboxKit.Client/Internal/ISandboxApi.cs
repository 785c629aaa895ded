using Refit;
using SandboxKit.Contracts;

namespace SandboxKit.Client.Internal;

/// <summary>
/// The server's JSON routes. Internal: Refit is an implementation detail and never part of the public API.
/// The implementation is generated at compile time (Refit 16); see <see cref="SandboxConnection"/> for how it is built.
/// Streaming and raw file bytes go through <see cref="HttpClient"/> directly.
/// </summary>
internal interface ISandboxApi
{
    [Post("/v1/sessions")]
    Task<SessionInfo> CreateSessionAsync(
        [Body] CreateSessionRequest request,
        CancellationToken cancellationToken);

    [Get("/v1/sessions")]
    Task<SessionList> ListSessionsAsync(
        [Query] string? userId,
        [Query] IDictionary<string, string>? filters,
        CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}")]
    Task<SessionInfo> GetSessionAsync(string sessionId, CancellationToken cancellationToken);

    [Delete("/v1/sessions/{sessionId}")]
    Task DeleteSessionAsync(string sessionId, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/keepalive")]
    Task<SessionInfo> KeepAliveAsync(string sessionId, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/commands")]
    Task<ExecuteResult> ExecuteAsync(
        string sessionId,
        [Body] ExecuteRequest request,
        [Header(SandboxRequestOptions.IdempotencyKeyHeader)] string? idempotencyKey,
        [Property(SandboxRequestOptions.AttemptTimeoutName)] TimeSpan attemptTimeout,
        CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/code")]
    Task<ExecuteResult> RunCodeAsync(
        string sessionId,
        [Body] RunCodeRequest request,
        [Header(SandboxRequestOptions.IdempotencyKeyHeader)] string? idempotencyKey,
        [Property(SandboxRequestOptions.AttemptTimeoutName)] TimeSpan attemptTimeout,
        CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/processes")]
    Task<ProcessInfo> StartProcessAsync(
        string sessionId,
        [Body] StartProcessRequest request,
        [Header(SandboxRequestOptions.IdempotencyKeyHeader)] string? idempotencyKey,
        CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/processes")]
    Task<ProcessList> ListProcessesAsync(string sessionId, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/processes/{processId}")]
    Task<ProcessInfo> GetProcessAsync(string sessionId, string processId, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/processes/{processId}/output")]
    Task<ProcessOutput> GetProcessOutputAsync(
        string sessionId,
        string processId,
        [Query] long cursor,
        CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/processes/{processId}/stdin")]
    Task SendStdinAsync(
        string sessionId,
        string processId,
        [Body] SendStdinRequest request,
        CancellationToken cancellationToken);

    [Delete("/v1/sessions/{sessionId}/processes/{processId}")]
    Task KillProcessAsync(string sessionId, string processId, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/terminals")]
    Task<TerminalInfo> CreateTerminalAsync(string sessionId, [Body] CreateTerminalRequest request, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/terminals")]
    Task<TerminalList> ListTerminalsAsync(string sessionId, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/terminals/{terminalId}")]
    Task<TerminalInfo> GetTerminalAsync(string sessionId, string terminalId, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/terminals/{terminalId}/resize")]
    Task<TerminalInfo> ResizeTerminalAsync(string sessionId, string terminalId, [Body] ResizeTerminalRequest request, CancellationToken cancellationToken);

    [Delete("/v1/sessions/{sessionId}/terminals/{terminalId}")]
    Task CloseTerminalAsync(string sessionId, string terminalId, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/files/list")]
    Task<FileList> ListFilesAsync(string sessionId, [Query] string path, CancellationToken cancellationToken);

    [Delete("/v1/sessions/{sessionId}/files")]
    Task DeleteFileAsync(
        string sessionId,
        [Query] string path,
        [Query] string recursive,
        CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/directories")]
    Task<FileEntry> CreateDirectoryAsync(string sessionId, [Query] string path, CancellationToken cancellationToken);

    [Delete("/v1/users/{userId}/storage")]
    Task DeleteUserStorageAsync(string userId, CancellationToken cancellationToken);

    // ---------------------------------------------------------------- code interpreter: contexts (cells: RunCodeAsync above)

    [Post("/v1/sessions/{sessionId}/contexts")]
    Task<CodeContext> CreateContextAsync(string sessionId, [Body] CreateContextRequest request, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/contexts")]
    Task<CodeContextList> ListContextsAsync(string sessionId, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/contexts/{contextId}")]
    Task<CodeContext> GetContextAsync(string sessionId, string contextId, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/contexts/{contextId}/restart")]
    Task<CodeContext> RestartContextAsync(string sessionId, string contextId, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/contexts/{contextId}/interrupt")]
    Task<CodeContext> InterruptContextAsync(string sessionId, string contextId, CancellationToken cancellationToken);

    [Delete("/v1/sessions/{sessionId}/contexts/{contextId}")]
    Task DeleteContextAsync(string sessionId, string contextId, CancellationToken cancellationToken);

    // ---------------------------------------------------------------- network: egress policy and preview URLs

    [Patch("/v1/sessions/{sessionId}/egress")]
    Task<SessionInfo> UpdateEgressAsync(string sessionId, [Body] EgressPolicyRequest policy, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/egress/log")]
    Task<EgressLog> GetEgressLogAsync(string sessionId, [Query] int? limit, CancellationToken cancellationToken);

    [Post("/v1/sessions/{sessionId}/ports")]
    Task<ExposedPort> ExposePortAsync(string sessionId, [Body] ExposePortRequest request, CancellationToken cancellationToken);

    [Get("/v1/sessions/{sessionId}/ports")]
    Task<ExposedPortList> ListExposedPortsAsync(string sessionId, CancellationToken cancellationToken);

    [Delete("/v1/sessions/{sessionId}/ports/{port}")]
    Task RevokePortAsync(string sessionId, int port, CancellationToken cancellationToken);
}
