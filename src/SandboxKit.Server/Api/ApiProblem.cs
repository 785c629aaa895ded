using System.Text.Json;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Mvc;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Api;

/// <summary>An error with a status and code, turned into RFC 9457 problem details by <see cref="ProblemExceptionHandler"/>.</summary>
internal sealed class ApiProblemException(int status, string code, string title, string? detail = null, TimeSpan? retryAfter = null)
    : Exception(detail ?? title)
{
    public int Status { get; } = status;
    public string Code { get; } = code;
    public string Title { get; } = title;
    public string? Detail { get; } = detail;
    public TimeSpan? RetryAfter { get; } = retryAfter;

    public static ApiProblemException SessionNotFound(string id) =>
        new(StatusCodes.Status404NotFound, ProblemCodes.SessionNotFound, "Session not found", $"No session '{id}' exists (it may have expired or been deleted).");

    public static ApiProblemException Invalid(string detail) =>
        new(StatusCodes.Status400BadRequest, ProblemCodes.InvalidRequest, "Invalid request", detail);
}

/// <summary>Maps every escaping exception to problem details; nothing reaches the client as a bare 500 with a stack trace.</summary>
internal sealed class ProblemExceptionHandler(IProblemDetailsService problems, ILogger<ProblemExceptionHandler> logger) : IExceptionHandler
{
    public async ValueTask<bool> TryHandleAsync(HttpContext context, Exception exception, CancellationToken cancellationToken)
    {
        var (status, code, title, detail, retryAfter) = exception switch
        {
            ApiProblemException p => (p.Status, p.Code, p.Title, p.Detail, p.RetryAfter),
            EngineUnavailableException e => (StatusCodes.Status503ServiceUnavailable, ProblemCodes.EngineUnavailable, "Container engine unavailable", e.Message, (TimeSpan?)TimeSpan.FromSeconds(5)),
            AgentUnavailableException e => (StatusCodes.Status503ServiceUnavailable, ProblemCodes.EngineUnavailable, "Sandbox agent unavailable", e.Message, (TimeSpan?)TimeSpan.FromSeconds(1)),
            BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } e => (StatusCodes.Status413PayloadTooLarge, ProblemCodes.PayloadTooLarge, "Payload too large", e.Message, null),
            BadHttpRequestException e => (e.StatusCode, ProblemCodes.InvalidRequest, "Invalid request", Describe(e), null),
            JsonException e => (StatusCodes.Status400BadRequest, ProblemCodes.InvalidRequest, "Malformed JSON", e.Message, null),
            OperationCanceledException when context.RequestAborted.IsCancellationRequested => (499, "client_closed", "Client closed the request", null, null),
            _ => (StatusCodes.Status500InternalServerError, ProblemCodes.Internal, "Internal server error", "An unexpected error occurred; the server log has details.", null),
        };
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

    private static string Describe(BadHttpRequestException e) =>
        e.InnerException is JsonException json ? "Malformed JSON: " + json.Message : e.Message;
}
