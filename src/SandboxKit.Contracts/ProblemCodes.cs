namespace SandboxKit.Contracts;

/// <summary>Machine-readable error codes the server puts in problem details as the <c>code</c> extension.</summary>
public static class ProblemCodes
{
    /// <summary>The session is unknown, expired, deleted or another tenant's (404).</summary>
    public const string SessionNotFound = "session_not_found";

    /// <summary>A file, directory or process was not found (404).</summary>
    public const string NotFound = "not_found";

    /// <summary>The request was malformed or out of bounds (400, or 422 for an idempotency key reused with another body).</summary>
    public const string InvalidRequest = "invalid_request";

    /// <summary>Missing or wrong API key (401).</summary>
    public const string Unauthorized = "unauthorized";

    /// <summary>The sandbox refused a file operation (403), e.g. writing to the read-only root filesystem.</summary>
    public const string Forbidden = "forbidden";

    /// <summary>A quota such as the number of concurrent sessions was exhausted (429, with <c>Retry-After</c>).</summary>
    public const string QuotaExceeded = "quota_exceeded";

    /// <summary>Too many requests in a short time (429, with <c>Retry-After</c>).</summary>
    public const string RateLimited = "rate_limited";

    /// <summary>The body was larger than the server accepts (413).</summary>
    public const string PayloadTooLarge = "payload_too_large";

    /// <summary>The server cannot reach its container engine or a sandbox's agent (503, with <c>Retry-After</c>).</summary>
    public const string EngineUnavailable = "engine_unavailable";

    /// <summary>The request conflicts with the current state (409), e.g. deleting storage of a user with live sessions.</summary>
    public const string Conflict = "conflict";

    /// <summary>The session's in-sandbox supervisor does not answer or broke the protocol (503, with <c>Retry-After</c>).</summary>
    public const string SupervisorUnavailable = "supervisor_unavailable";

    /// <summary>The session runs a supervisor build this server did not bring, e.g. after an upgrade (409); recreate the session.</summary>
    public const string SupervisorMismatch = "supervisor_mismatch";

    /// <summary>The image cannot run the supervisor (no glibc, or one older than it needs) (422).</summary>
    public const string ImageIncompatible = "image_incompatible";

    /// <summary>The session's image lacks the interpreter a request needs, e.g. python3 for Python code (422).</summary>
    public const string LanguageUnavailable = "language_unavailable";

    /// <summary>The host would pass the operator's limits for committed memory or session count (503, with <c>Retry-After</c>).</summary>
    public const string CapacityExhausted = "capacity_exhausted";

    /// <summary>The sandbox's disk or quota is full (507).</summary>
    public const string NoSpace = "no_space";

    /// <summary>An unexpected server error (500); the server log has the details.</summary>
    public const string Internal = "internal";
}
