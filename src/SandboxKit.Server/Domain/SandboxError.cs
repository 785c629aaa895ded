using SandboxKit.Contracts;

namespace SandboxKit.Server.Domain;

/// <summary>What kind of failure a <see cref="SandboxError"/> is; the Api edge maps each kind to one HTTP status.</summary>
internal enum ErrorKind
{
    /// <summary>The request is malformed or out of bounds (400).</summary>
    Invalid,
    /// <summary>The request is well-formed but cannot be carried out as asked (422), e.g. a language the image lacks.</summary>
    Unprocessable,
    /// <summary>The session does not exist for this caller (404).</summary>
    SessionNotFound,
    /// <summary>A file, directory, job or terminal does not exist (404).</summary>
    NotFound,
    /// <summary>The sandbox user may not (403).</summary>
    Forbidden,
    /// <summary>The request conflicts with the current state (409).</summary>
    Conflict,
    /// <summary>Something is larger than allowed (413).</summary>
    TooLarge,
    /// <summary>A quota is used up (429).</summary>
    QuotaExceeded,
    /// <summary>The host has no room for more sessions (503).</summary>
    CapacityExhausted,
    /// <summary>The container engine does not answer (503).</summary>
    EngineUnavailable,
    /// <summary>The session's supervisor does not answer or broke the protocol (503).</summary>
    SupervisorUnavailable,
    /// <summary>The session's supervisor is a build this server did not bring (409).</summary>
    SupervisorMismatch,
    /// <summary>The sandbox's disk is full (507).</summary>
    InsufficientStorage,
    /// <summary>A bug or an unexpected state (500).</summary>
    Internal,
}

/// <summary>
/// A failure of the sandbox domain (sessions, commands, files, engine, supervisor). Everything below the Api layer
/// raises these; <c>Api/ProblemExceptionHandler</c> is the one place that turns them into problem details.
/// </summary>
internal sealed class SandboxError : Exception
{
    private SandboxError(ErrorKind kind, string code, string title, string detail, TimeSpan? retryAfter, Exception? inner)
        : base(detail, inner)
    {
        Kind = kind;
        Code = code;
        Title = title;
        RetryAfter = retryAfter;
    }

    /// <summary>The kind, which decides the HTTP status.</summary>
    public ErrorKind Kind { get; }

    /// <summary>The machine-readable code (<see cref="ProblemCodes"/>).</summary>
    public string Code { get; }

    /// <summary>A short summary; <see cref="Exception.Message"/> is the detail.</summary>
    public string Title { get; }

    /// <summary>When a retry may succeed, if it may.</summary>
    public TimeSpan? RetryAfter { get; }

    public static SandboxError Invalid(string detail) =>
        new(ErrorKind.Invalid, ProblemCodes.InvalidRequest, "Invalid request", detail, null, null);

    public static SandboxError Unprocessable(string code, string title, string detail) =>
        new(ErrorKind.Unprocessable, code, title, detail, null, null);

    public static SandboxError SessionNotFound(string id) =>
        new(ErrorKind.SessionNotFound, ProblemCodes.SessionNotFound, "Session not found",
            $"No session '{id}' exists (it may have expired or been deleted).", null, null);

    public static SandboxError NotFound(string title, string detail) =>
        new(ErrorKind.NotFound, ProblemCodes.NotFound, title, detail, null, null);

    public static SandboxError Forbidden(string detail) =>
        new(ErrorKind.Forbidden, ProblemCodes.Forbidden, "Permission denied", detail, null, null);

    public static SandboxError Conflict(string title, string detail) =>
        new(ErrorKind.Conflict, ProblemCodes.Conflict, title, detail, null, null);

    public static SandboxError TooLarge(string title, string detail) =>
        new(ErrorKind.TooLarge, ProblemCodes.PayloadTooLarge, title, detail, null, null);

    public static SandboxError QuotaExceeded(string detail, TimeSpan retryAfter) =>
        new(ErrorKind.QuotaExceeded, ProblemCodes.QuotaExceeded, "Session quota exceeded", detail, retryAfter, null);

    public static SandboxError CapacityExhausted(string detail, TimeSpan retryAfter) =>
        new(ErrorKind.CapacityExhausted, ProblemCodes.CapacityExhausted, "Host capacity exhausted", detail, retryAfter, null);

    public static SandboxError EngineUnavailable(string detail, Exception? inner = null) =>
        new(ErrorKind.EngineUnavailable, ProblemCodes.EngineUnavailable, "Container engine unavailable", detail, TimeSpan.FromSeconds(5), inner);

    public static SandboxError SupervisorUnavailable(string detail, Exception? inner = null) =>
        new(ErrorKind.SupervisorUnavailable, ProblemCodes.SupervisorUnavailable, "Sandbox supervisor unavailable", detail, TimeSpan.FromSeconds(1), inner);

    public static SandboxError SupervisorMismatch(string detail) =>
        new(ErrorKind.SupervisorMismatch, ProblemCodes.SupervisorMismatch, "Supervisor version mismatch", detail, null, null);

    public static SandboxError NoSpace(string detail) =>
        new(ErrorKind.InsufficientStorage, ProblemCodes.NoSpace, "No space left in the sandbox", detail, null, null);

    public static SandboxError Internal(string detail, Exception? inner = null) =>
        new(ErrorKind.Internal, ProblemCodes.Internal, "Internal error", detail, null, inner);

    /// <summary>Wraps an unexpected exception without losing it.</summary>
    public static SandboxError Wrap(string what, Exception inner) => Internal($"{what}: {inner.Message}", inner);
}
