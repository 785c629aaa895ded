using System.Text.Json;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Mvc;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Api;

/// <summary>An error that exists only at the HTTP edge (authentication, request shape); everything below raises <see cref="SandboxError"/>.</summary>
internal sealed class ApiProblemException(int status, string code, string title, string? detail = null, TimeSpan? retryAfter = null)
    : Exception(detail ?? title)
{
    public int Status { get; } = status;
    public string Code { get; } = code;
    public string Title { get; } = title;
    public string? Detail { get; } = detail;
    public TimeSpan? RetryAfter { get; } = retryAfter;
}

/// <summary>
/// The one place failures become RFC 9457 problem details: domain errors by kind, the edge's own problems, and anything
/// unexpected as a 500 whose details stay in the server log.
/// </summary>
internal sealed class ProblemExceptionHandler(IProblemDetailsService problems, ILogger<ProblemExceptionHandler> logger) : IExceptionHandler
{
    public async ValueTask<bool> TryHandleAsync(HttpContext context, Exception exception, CancellationToken cancellationToken)
    {
        var (status, code, title, detail, retryAfter) = Describe(exception, context);
        if (status >= 500)
        {
            logger.LogError(exception, "Request {Method} {Path} failed with {Status}", context.Request.Method, context.Request.Path, status);
        }
        if (context.Response.HasStarted)
        {
            return true;
        }
        context.Response.StatusCode = status;
        if (retryAfter is { } wait)
        {
            context.Response.Headers.RetryAfter = Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        var problem = new ProblemDetails { Status = status, Title = title, Detail = detail };
        problem.Extensions["code"] = code;
        return await problems.TryWriteAsync(new ProblemDetailsContext { HttpContext = context, ProblemDetails = problem, Exception = exception });
    }

    /// <summary>Status, code, title, detail and retry delay of a failure.</summary>
    internal static (int Status, string Code, string Title, string? Detail, TimeSpan? RetryAfter) Describe(Exception exception, HttpContext context) => exception switch
    {
        SandboxError e => (StatusOf(e.Kind), e.Code, e.Title, e.Message, e.RetryAfter),
        ApiProblemException p => (p.Status, p.Code, p.Title, p.Detail, p.RetryAfter),
        // Below the domain layer these should have been translated; mapped here too so none becomes a bare 500.
        EngineUnavailableException e => (StatusCodes.Status503ServiceUnavailable, ProblemCodes.EngineUnavailable, "Container engine unavailable", e.Message, TimeSpan.FromSeconds(5)),
        SupervisorUnavailableException e => (StatusCodes.Status503ServiceUnavailable, ProblemCodes.SupervisorUnavailable, "Sandbox supervisor unavailable", e.Message, TimeSpan.FromSeconds(1)),
        BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } e => (StatusCodes.Status413PayloadTooLarge, ProblemCodes.PayloadTooLarge, "Payload too large", e.Message, null),
        BadHttpRequestException e => (e.StatusCode, ProblemCodes.InvalidRequest, "Invalid request", e.InnerException is JsonException json ? "Malformed JSON: " + json.Message : e.Message, null),
        JsonException e => (StatusCodes.Status400BadRequest, ProblemCodes.InvalidRequest, "Malformed JSON", e.Message, null),
        OperationCanceledException when context.RequestAborted.IsCancellationRequested => (499, "client_closed", "Client closed the request", null, null),
        _ => (StatusCodes.Status500InternalServerError, ProblemCodes.Internal, "Internal server error", "An unexpected error occurred; the server log has details.", null),
    };

    /// <summary>A short message for failures that end a stream (SSE, WebSocket) after its headers went out.</summary>
    internal static string StreamMessage(Exception exception) => exception switch
    {
        SandboxError e => e.Message,
        ApiProblemException p => p.Detail ?? p.Title,
        _ => "The stream failed; the server log has details.",
    };

    internal static int StatusOf(ErrorKind kind) => kind switch
    {
        ErrorKind.Invalid => StatusCodes.Status400BadRequest,
        ErrorKind.Unprocessable => StatusCodes.Status422UnprocessableEntity,
        ErrorKind.SessionNotFound or ErrorKind.NotFound => StatusCodes.Status404NotFound,
        ErrorKind.Forbidden => StatusCodes.Status403Forbidden,
        ErrorKind.Conflict or ErrorKind.SupervisorMismatch => StatusCodes.Status409Conflict,
        ErrorKind.TooLarge => StatusCodes.Status413PayloadTooLarge,
        ErrorKind.QuotaExceeded => StatusCodes.Status429TooManyRequests,
        ErrorKind.CapacityExhausted or ErrorKind.EngineUnavailable or ErrorKind.SupervisorUnavailable => StatusCodes.Status503ServiceUnavailable,
        ErrorKind.InsufficientStorage => StatusCodes.Status507InsufficientStorage,
        _ => StatusCodes.Status500InternalServerError,
    };
}
