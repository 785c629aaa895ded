using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Exec;

namespace SandboxKit.Server.Api;

/// <summary>
/// Makes every POST that starts work safe to retry: a request with an <c>Idempotency-Key</c> header is run once;
/// a repeat with the same key (from the same caller, to the same path, with the same body) within the window gets
/// the first answer, or waits for it while the first is still running. Keyed work is detached from the first
/// caller's connection, so a client that times out and retries joins the command instead of killing it.
/// 5xx answers are not kept, so a retry after a failure runs again.
/// </summary>
internal sealed class IdempotencyMiddleware(RequestDelegate next, IOptions<SandboxOptions> options, TimeProvider time, ILogger<IdempotencyMiddleware> logger)
{
    public const string Header = "Idempotency-Key";
    private const int MaxBodyToFingerprint = 4 << 20;
    private const int MaxEntries = 10_000;
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly TimeSpan _window = TimeSpan.FromSeconds(options.Value.IdempotencyWindowSeconds);

    public async Task InvokeAsync(HttpContext context)
    {
        var key = context.Request.Headers[Header].ToString();
        if (key.Length == 0 || !HttpMethods.IsPost(context.Request.Method) || IsStreamOrUpload(context.Request))
        {
            await next(context);
            return;
        }
        if (key.Length > 256)
        {
            throw SandboxError.Invalid("Idempotency-Key is longer than 256 characters.");
        }

        var fingerprint = await FingerprintAsync(context.Request);
        var cacheKey = string.Join('\n', Caller(context.Request), context.Request.Path.Value, key);
        // The supervisor remembers keyed commands across server restarts: it gets a digest, never the caller's key.
        context.SetIdempotencyToken(new IdempotencyToken(
            Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(cacheKey)))[..40], fingerprint));
        var now = time.GetUtcNow();
        Sweep(now);
        var mine = new Entry(fingerprint, now);
        var entry = _entries.GetOrAdd(cacheKey, mine);
        if (!ReferenceEquals(entry, mine) && entry.Fingerprint != fingerprint)
        {
            throw new ApiProblemException(StatusCodes.Status422UnprocessableEntity, ProblemCodes.InvalidRequest, "Idempotency key reused",
                "This Idempotency-Key was already used with a different request body.");
        }

        if (ReferenceEquals(entry, mine))
        {
            await RunAndCaptureAsync(context, cacheKey, mine);
        }
        var captured = await entry.Response.Task.WaitAsync(context.RequestAborted);
        if (captured is null)
        {
            // The first attempt failed without an answer worth keeping: run this one afresh.
            await next(context);
            return;
        }
        if (!ReferenceEquals(entry, mine))
        {
            context.Response.Headers["Idempotent-Replayed"] = "true";
        }
        await captured.WriteToAsync(context.Response);
    }

    private async Task RunAndCaptureAsync(HttpContext context, string cacheKey, Entry entry)
    {
        var originalBody = context.Response.Body;
        using var buffer = new MemoryStream();
        context.Response.Body = buffer;
        // The work outlives this connection: a retry with the same key joins it.
        context.RequestAborted = CancellationToken.None;
        CapturedResponse? captured = null;
        try
        {
            await next(context);
            captured = new CapturedResponse(context.Response.StatusCode, context.Response.ContentType,
                context.Response.Headers.Location.ToString(), context.Response.Headers.RetryAfter.ToString(), buffer.ToArray());
        }
        catch (Exception e)
        {
            // The exception handler answers this request; keep nothing so a retry runs again.
            _entries.TryRemove(cacheKey, out _);
            entry.Response.TrySetResult(null);
            context.Response.Body = originalBody;
            logger.LogDebug(e, "Idempotent request failed; not cached");
            throw;
        }
        finally
        {
            context.Response.Body = originalBody;
        }
        if (captured.Status >= 500)
        {
            _entries.TryRemove(cacheKey, out _);
        }
        entry.Response.TrySetResult(captured);
        // Our own response is written by the caller from the captured copy.
        context.Response.Clear();
    }

    private static bool IsStreamOrUpload(HttpRequest request) =>
        request.Path.Value?.EndsWith("/stream", StringComparison.Ordinal) == true || request.HasFormContentType;

    private static string Caller(HttpRequest request) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(request.Headers.Authorization + "\n" + request.Headers["X-API-Key"])));

    private static async Task<string> FingerprintAsync(HttpRequest request)
    {
        if (request.ContentLength is > MaxBodyToFingerprint)
        {
            return "large:" + request.ContentLength;
        }
        request.EnableBuffering();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[16 * 1024];
        int read;
        long total = 0;
        while ((read = await request.Body.ReadAsync(buffer)) > 0 && total < MaxBodyToFingerprint)
        {
            sha.AppendData(buffer, 0, read);
            total += read;
        }
        request.Body.Position = 0;
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private void Sweep(DateTimeOffset now)
    {
        if (_entries.Count < MaxEntries / 2 && Random.Shared.Next(64) != 0)
        {
            return;
        }
        foreach (var (key, entry) in _entries)
        {
            if (now - entry.CreatedAt > _window && entry.Response.Task.IsCompleted)
            {
                _entries.TryRemove(key, out _);
            }
        }
        if (_entries.Count >= MaxEntries)
        {
            throw new ApiProblemException(StatusCodes.Status429TooManyRequests, ProblemCodes.RateLimited, "Too many idempotent requests",
                "The server holds too many idempotency keys; retry shortly.", TimeSpan.FromSeconds(5));
        }
    }

    private sealed class Entry(string fingerprint, DateTimeOffset createdAt)
    {
        public string Fingerprint { get; } = fingerprint;
        public DateTimeOffset CreatedAt { get; } = createdAt;
        public TaskCompletionSource<CapturedResponse?> Response { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed record CapturedResponse(int Status, string? ContentType, string Location, string RetryAfter, byte[] Body)
    {
        public async Task WriteToAsync(HttpResponse response)
        {
            response.StatusCode = Status;
            response.ContentType = ContentType;
            if (Location.Length > 0)
            {
                response.Headers.Location = Location;
            }
            if (RetryAfter.Length > 0)
            {
                response.Headers.RetryAfter = RetryAfter;
            }
            response.ContentLength = Body.Length;
            await response.Body.WriteAsync(Body);
        }
    }
}
