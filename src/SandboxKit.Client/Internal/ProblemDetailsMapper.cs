using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace SandboxKit.Client.Internal;

/// <summary>Turns a failed HTTP answer (RFC 9457 problem details, or anything else) into a <see cref="SandboxException"/>.</summary>
internal static class ProblemDetailsMapper
{
    // Problem documents are small; a misbehaving proxy may send a large HTML page instead.
    private const int MaxBodyChars = 64 * 1024;

    /// <summary>For Refit's ExceptionFactory: null for a success, the exception otherwise.</summary>
    public static async ValueTask<Exception?> ExceptionFactory(HttpResponseMessage response) =>
        response.IsSuccessStatusCode ? null : await CreateExceptionAsync(response, CancellationToken.None).ConfigureAwait(false);

    public static async Task<SandboxException> CreateExceptionAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        string? body = null;
        try
        {
            body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException or InvalidOperationException)
        {
            // The status line is enough to report the failure.
        }

        return Create(response, body);
    }

    public static SandboxException Create(HttpResponseMessage response, string? body)
    {
        var status = response.StatusCode;
        var problem = Parse(body);
        var code = problem.Code;
        var title = problem.Title ?? response.ReasonPhrase;
        var retryAfter = GetRetryAfter(response.Headers);
        var sessionId = GetSessionId(response.RequestMessage?.RequestUri);
        var message = BuildMessage(response, problem, title, body);

        if (status == HttpStatusCode.NotFound && code == SandboxErrorCodes.SessionNotFound)
        {
            return new SessionNotFoundException(message, sessionId, title, problem.Detail, problem.RequestId);
        }

        if (status is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
        {
            return new SandboxAuthenticationException(message, status, code, title, problem.Detail, problem.RequestId);
        }

        if (status == HttpStatusCode.TooManyRequests)
        {
            return new SandboxQuotaExceededException(message, code, retryAfter, title, problem.Detail, problem.RequestId);
        }

        return new SandboxException(message, status, code, title, problem.Detail, problem.RequestId);
    }

    /// <summary>The server's Retry-After as a delay from now, when present and sensible.</summary>
    public static TimeSpan? GetRetryAfter(HttpResponseHeaders headers)
    {
        var retryAfter = headers.RetryAfter;
        if (retryAfter is null)
        {
            return null;
        }

        if (retryAfter.Delta is { } delta)
        {
            return delta < TimeSpan.Zero ? TimeSpan.Zero : delta;
        }

        if (retryAfter.Date is { } date)
        {
            var wait = date - DateTimeOffset.UtcNow;
            return wait < TimeSpan.Zero ? TimeSpan.Zero : wait;
        }

        return null;
    }

    /// <summary>The session id of a <c>/v1/sessions/{id}/...</c> address, so a <see cref="SessionNotFoundException"/> can name it.</summary>
    internal static string? GetSessionId(Uri? uri)
    {
        if (uri is null || !uri.IsAbsoluteUri)
        {
            return null;
        }

        var segments = uri.AbsolutePath.Split('/', StringSplitOptions.RemoveEmptyEntries);
        for (var i = 0; i + 2 < segments.Length; i++)
        {
            if (segments[i] == "v1" && segments[i + 1] == "sessions")
            {
                return Uri.UnescapeDataString(segments[i + 2]);
            }
        }

        return null;
    }

    private static string BuildMessage(HttpResponseMessage response, Problem problem, string? title, string? body)
    {
        var sb = new StringBuilder();
        var request = response.RequestMessage;
        if (request is not null)
        {
            sb.Append(request.Method.Method).Append(' ').Append(request.RequestUri?.AbsolutePath).Append(": ");
        }

        sb.Append((int)response.StatusCode);
        if (!string.IsNullOrEmpty(problem.Code))
        {
            sb.Append(' ').Append(problem.Code);
        }

        if (!string.IsNullOrEmpty(title))
        {
            sb.Append(" (").Append(title).Append(')');
        }

        if (!string.IsNullOrEmpty(problem.Detail))
        {
            sb.Append(": ").Append(problem.Detail);
        }
        else if (!problem.IsProblem && !string.IsNullOrWhiteSpace(body))
        {
            var text = body.Length > 200 ? body[..200] + "..." : body;
            sb.Append(": ").Append(text.Trim());
        }

        if (!string.IsNullOrEmpty(problem.RequestId))
        {
            sb.Append(" [requestId ").Append(problem.RequestId).Append(']');
        }

        return sb.ToString();
    }

    private static Problem Parse(string? body)
    {
        if (string.IsNullOrWhiteSpace(body) || body.Length > MaxBodyChars || body.TrimStart()[0] != '{')
        {
            return default;
        }

        try
        {
            using var doc = JsonDocument.Parse(body);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                return default;
            }

            return new Problem(
                IsProblem: true,
                Title: GetString(root, "title"),
                Detail: GetString(root, "detail"),
                Code: GetString(root, "code"),
                RequestId: GetString(root, "requestId"));
        }
        catch (JsonException)
        {
            return default;
        }
    }

    private static string? GetString(JsonElement root, string name) =>
        root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;

    private readonly record struct Problem(bool IsProblem, string? Title, string? Detail, string? Code, string? RequestId);
}
