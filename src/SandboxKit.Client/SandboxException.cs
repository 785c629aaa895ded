using SandboxKit.Contracts;
using System.Net;

namespace SandboxKit.Client;

/// <summary>
/// A SandboxKit call failed. The server's RFC 9457 problem details are copied onto
/// <see cref="Status"/>, <see cref="Code"/>, <see cref="Title"/>, <see cref="Detail"/> and <see cref="RequestId"/>.
/// </summary>
/// <remarks>
/// <para>
/// Failures that never produced an HTTP answer (connection refused or reset, DNS, TLS, a client-side timeout)
/// are also reported as a <see cref="SandboxException"/> after the retries are spent: <see cref="Status"/> is
/// <see langword="null"/>, <see cref="Code"/> is <see cref="SandboxErrorCodes.TransportError"/> or
/// <see cref="SandboxErrorCodes.Timeout"/>, and <see cref="Exception.InnerException"/> holds the original
/// <see cref="HttpRequestException"/> or timeout exception. So one <c>catch (SandboxException)</c> covers every failure
/// of the service or the network.
/// </para>
/// <para>
/// Cancellation through the caller's <see cref="CancellationToken"/> is not a failure: it surfaces as
/// <see cref="OperationCanceledException"/>.
/// </para>
/// <para>
/// Branch on <see cref="Code"/> (values in <see cref="SandboxErrorCodes"/>) rather than on the message.
/// Derived types exist only where callers usually react differently:
/// <see cref="SessionNotFoundException"/>, <see cref="SandboxAuthenticationException"/>,
/// <see cref="SandboxQuotaExceededException"/> and <see cref="CommandFailedException"/>.
/// </para>
/// </remarks>
public class SandboxException : Exception
{
    /// <summary>Creates an exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public SandboxException(string message)
        : base(message)
    {
    }

    /// <summary>Creates an exception with a message and the exception that caused it.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public SandboxException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates an exception describing a failed HTTP answer.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="status">HTTP status code of the answer, or <see langword="null"/> when there was none.</param>
    /// <param name="code">Machine-readable error code (see <see cref="SandboxErrorCodes"/>).</param>
    /// <param name="title">Problem title.</param>
    /// <param name="detail">Problem detail.</param>
    /// <param name="requestId">Server request id, for support and logs.</param>
    /// <param name="innerException">The cause, if any.</param>
    public SandboxException(
        string message,
        HttpStatusCode? status,
        string? code,
        string? title = null,
        string? detail = null,
        string? requestId = null,
        Exception? innerException = null)
        : base(message, innerException)
    {
        Status = status;
        Code = code;
        Title = title;
        Detail = detail;
        RequestId = requestId;
    }

    /// <summary>HTTP status of the server's answer; <see langword="null"/> when no answer was received.</summary>
    public HttpStatusCode? Status { get; }

    /// <summary>Machine-readable error code: one of <see cref="SandboxErrorCodes"/>, or another the server sent.</summary>
    public string? Code { get; }

    /// <summary>Short, human-readable summary of the problem (<c>title</c>).</summary>
    public string? Title { get; }

    /// <summary>Human-readable explanation specific to this occurrence (<c>detail</c>).</summary>
    public string? Detail { get; }

    /// <summary>The server's id for the request (<c>requestId</c>); quote it when reporting a problem.</summary>
    public string? RequestId { get; }

    /// <summary>
    /// True when the same call may succeed if tried again later: 408, 429, 502, 503, 504, a transport failure or a
    /// client-side timeout. These are the failures the client retries by itself, so when one is thrown the retries
    /// (or the <c>Retry-After</c> the caller accepts) are spent.
    /// </summary>
    public bool IsTransient =>
        Status is null
            ? Code is SandboxErrorCodes.TransportError or SandboxErrorCodes.Timeout
            : Status is HttpStatusCode.RequestTimeout or HttpStatusCode.TooManyRequests or HttpStatusCode.BadGateway
                or HttpStatusCode.ServiceUnavailable or HttpStatusCode.GatewayTimeout;
}

/// <summary>
/// The session does not exist for this caller: it never existed, expired, was deleted, or belongs to
/// another tenant (HTTP 404, code <see cref="SandboxErrorCodes.SessionNotFound"/>).
/// Create a new session; this one will not come back.
/// </summary>
public class SessionNotFoundException : SandboxException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="sessionId">The session that was not found, when known.</param>
    /// <param name="title">Problem title.</param>
    /// <param name="detail">Problem detail.</param>
    /// <param name="requestId">Server request id.</param>
    public SessionNotFoundException(
        string message,
        string? sessionId,
        string? title = null,
        string? detail = null,
        string? requestId = null)
        : base(message, HttpStatusCode.NotFound, SandboxErrorCodes.SessionNotFound, title, detail, requestId)
    {
        SessionId = sessionId;
    }

    /// <summary>The session that was not found, when known.</summary>
    public string? SessionId { get; }
}

/// <summary>
/// The server rejected the credentials (HTTP 401, code <see cref="SandboxErrorCodes.Unauthorized"/>, or 403).
/// Check <see cref="SandboxClientOptions.ApiKey"/>.
/// </summary>
public class SandboxAuthenticationException : SandboxException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="status">401 or 403.</param>
    /// <param name="code">Error code sent by the server.</param>
    /// <param name="title">Problem title.</param>
    /// <param name="detail">Problem detail.</param>
    /// <param name="requestId">Server request id.</param>
    public SandboxAuthenticationException(
        string message,
        HttpStatusCode status,
        string? code,
        string? title = null,
        string? detail = null,
        string? requestId = null)
        : base(message, status, code ?? SandboxErrorCodes.Unauthorized, title, detail, requestId)
    {
    }
}

/// <summary>
/// A quota or rate limit was hit (HTTP 429, code <see cref="SandboxErrorCodes.QuotaExceeded"/> or
/// <see cref="SandboxErrorCodes.RateLimited"/>). The client retries a 429 by itself when the server's
/// <c>Retry-After</c> is within <see cref="SandboxClientOptions.MaxRetryAfter"/>; this exception means it gave up
/// or the wait was longer. <see cref="RetryAfter"/> says when to try again.
/// </summary>
public class SandboxQuotaExceededException : SandboxException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="code">Error code sent by the server.</param>
    /// <param name="retryAfter">The server's <c>Retry-After</c>, when given.</param>
    /// <param name="title">Problem title.</param>
    /// <param name="detail">Problem detail.</param>
    /// <param name="requestId">Server request id.</param>
    public SandboxQuotaExceededException(
        string message,
        string? code,
        TimeSpan? retryAfter,
        string? title = null,
        string? detail = null,
        string? requestId = null)
        : base(message, HttpStatusCode.TooManyRequests, code ?? SandboxErrorCodes.QuotaExceeded, title, detail, requestId)
    {
        RetryAfter = retryAfter;
    }

    /// <summary>How long the server asked the caller to wait (<c>Retry-After</c>), when it said.</summary>
    public TimeSpan? RetryAfter { get; }
}

/// <summary>
/// Thrown by <see cref="CommandResult.EnsureSuccess"/> when a command exited non-zero, timed out or was
/// killed for memory. The call itself succeeded; <see cref="Result"/> holds everything the command produced.
/// </summary>
public class CommandFailedException : SandboxException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="result">The command's result.</param>
    public CommandFailedException(CommandResult result)
        : base(Describe(result ?? throw new ArgumentNullException(nameof(result))), null, SandboxErrorCodes.CommandFailed)
    {
        Result = result;
    }

    /// <summary>What the command produced.</summary>
    public CommandResult Result { get; }

    /// <summary>The command's exit code.</summary>
    public int ExitCode => Result.ExitCode;

    private static string Describe(CommandResult result)
    {
        var why = result.TimedOut ? "timed out"
            : result.OomKilled ? "was killed by the out-of-memory killer"
            : $"exited with code {result.ExitCode}";
        var stderr = result.Stderr.Trim();
        if (stderr.Length > 500)
        {
            stderr = "..." + stderr[^500..];
        }

        return stderr.Length == 0 ? $"The command {why}." : $"The command {why}: {stderr}";
    }
}

/// <summary>Error codes found in <see cref="SandboxException.Code"/>.</summary>
public static class SandboxErrorCodes
{
    /// <summary>The session is unknown, expired, deleted or another tenant's (404).</summary>
    public const string SessionNotFound = ProblemCodes.SessionNotFound;

    /// <summary>A file, directory or process was not found (404).</summary>
    public const string NotFound = ProblemCodes.NotFound;

    /// <summary>The request was malformed or out of bounds (400).</summary>
    public const string InvalidRequest = ProblemCodes.InvalidRequest;

    /// <summary>Missing or wrong API key (401).</summary>
    public const string Unauthorized = ProblemCodes.Unauthorized;

    /// <summary>A quota such as the number of sessions was exhausted (429).</summary>
    public const string QuotaExceeded = ProblemCodes.QuotaExceeded;

    /// <summary>Too many requests in a short time (429).</summary>
    public const string RateLimited = ProblemCodes.RateLimited;

    /// <summary>The body was larger than the server accepts (413).</summary>
    public const string PayloadTooLarge = ProblemCodes.PayloadTooLarge;

    /// <summary>The server cannot reach its container engine (503).</summary>
    public const string EngineUnavailable = ProblemCodes.EngineUnavailable;

    /// <summary>The request conflicts with the current state, e.g. deleting storage of a user with live sessions (409).</summary>
    public const string Conflict = ProblemCodes.Conflict;

    /// <summary>Client side: no HTTP answer could be obtained (connection refused or reset, DNS, TLS).</summary>
    public const string TransportError = "transport_error";

    /// <summary>Client side: the call ran past its timeout (see <see cref="SandboxClientOptions.AttemptTimeout"/>).</summary>
    public const string Timeout = "timeout";

    /// <summary>Client side: the server's answer could not be understood.</summary>
    public const string InvalidResponse = "invalid_response";

    /// <summary>Client side: a command stream reported an <c>error</c> event or ended early.</summary>
    public const string StreamError = "stream_error";

    /// <summary>Client side: <see cref="CommandResult.EnsureSuccess"/> found a failed command.</summary>
    public const string CommandFailed = "command_failed";
}
