using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Exec;

namespace SandboxKit.Server.Api;

/// <summary>Endpoint metadata: a POST that starts work and honours <c>Idempotency-Key</c>.</summary>
internal sealed class StartsWorkMetadata
{
    public static readonly StartsWorkMetadata Instance = new();
}

internal static class IdempotencyEndpointExtensions
{
    /// <summary>Marks the endpoint as starting work: a request with an <c>Idempotency-Key</c> is run once, repeats get its answer.</summary>
    public static TBuilder StartsWork<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.WithMetadata(StartsWorkMetadata.Instance);
}

/// <summary>
/// Makes the POSTs that start work safe to retry (the IETF Idempotency-Key draft): a request with a key runs once; a repeat
/// with the same key from the same tenant, to the same method, path and query, with the same body, gets the first answer
/// (waiting for it while the first still runs); the same key with another request is a 422. It runs after the key check,
/// only for endpoints marked <see cref="IdempotencyEndpointExtensions.StartsWork{TBuilder}"/> (never for unknown routes,
/// streams or uploads), with per-tenant budgets of entries and bytes. Keyed work is detached from the first caller's
/// connection, so a client that times out and retries joins it instead of killing it. Answers over
/// <see cref="SandboxOptions.IdempotencyMaxReplayBytes"/> are not kept: a repeat runs the endpoint again, and keyed
/// commands are then answered by the session's supervisor, which kept the result (across server restarts too).
/// </summary>
internal sealed class IdempotencyMiddleware(RequestDelegate next, IdempotencyStore store, IOptions<SandboxOptions> options, ILogger<IdempotencyMiddleware> logger)
{
    public const string Header = "Idempotency-Key";
    private readonly SandboxOptions _options = options.Value;

    public async Task InvokeAsync(HttpContext context)
    {
        var key = context.Request.Headers[Header].ToString();
        if (key.Length == 0 || !HttpMethods.IsPost(context.Request.Method)
            || context.GetEndpoint()?.Metadata.GetMetadata<StartsWorkMetadata>() is null || context.Request.HasFormContentType)
        {
            await next(context);
            return;
        }
        if (key.Length > 255 || key.Any(c => c is < ' ' or > '~'))
        {
            throw SandboxError.Invalid("Idempotency-Key must be 1-255 printable ASCII characters.");
        }
        var tenant = context.GetTenant();
        var fingerprint = await FingerprintAsync(context.Request, _options.MaxFileBytes);
        var requestKey = string.Join('\n', context.Request.Method, context.Request.Path.Value, context.Request.QueryString.Value, key);
        // The supervisor remembers keyed commands across server restarts: it gets a digest, never the caller's key.
        context.SetIdempotencyToken(new IdempotencyToken(
            Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(tenant.Name + "\n" + requestKey)))[..40], fingerprint));

        var (entry, first) = store.Begin(tenant.Name, requestKey, fingerprint);
        if (first)
        {
            await RunAndCaptureAsync(context, tenant.Name, requestKey, entry);
        }
        var captured = await entry.Response.Task.WaitAsync(context.RequestAborted);
        if (captured is null)
        {
            // The first answer was not kept (a failure, or too large): run again. Work that must not run twice (commands)
            // is joined or replayed by the supervisor through the token.
            if (!first)
            {
                await next(context);
            }
            return;
        }
        if (!first)
        {
            context.Response.Headers["Idempotent-Replayed"] = "true";
        }
        await captured.WriteToAsync(context.Response);
    }

    private async Task RunAndCaptureAsync(HttpContext context, string tenant, string requestKey, IdempotencyStore.Entry entry)
    {
        var originalBody = context.Response.Body;
        using var buffer = new MemoryStream();
        context.Response.Body = buffer;
        // The work outlives this connection: a retry with the same key joins it.
        context.RequestAborted = CancellationToken.None;
        IdempotencyStore.CapturedResponse? captured = null;
        try
        {
            await next(context);
            captured = new IdempotencyStore.CapturedResponse(context.Response.StatusCode, context.Response.ContentType,
                context.Response.Headers.Location.ToString(), context.Response.Headers.RetryAfter.ToString(), buffer.ToArray());
        }
        catch (Exception e)
        {
            // The exception handler answers this request; keep nothing so a retry runs again.
            store.Complete(tenant, requestKey, entry, null);
            context.Response.Body = originalBody;
            logger.LogDebug(e, "Idempotent request failed; not kept");
            throw;
        }
        finally
        {
            context.Response.Body = originalBody;
        }
        // 5xx are not kept (a retry after a failure runs again), nor answers too big to keep.
        var keep = captured.Status < 500 && captured.Body.Length <= _options.IdempotencyMaxReplayBytes;
        store.Complete(tenant, requestKey, entry, keep ? captured : null);
        if (!keep)
        {
            // Our own caller still gets the answer, once.
            await captured.WriteToAsync(context.Response);
        }
        else
        {
            context.Response.Clear();
        }
    }

    private static async Task<string> FingerprintAsync(HttpRequest request, long maxBytes)
    {
        if (request.ContentLength > maxBytes)
        {
            throw SandboxError.TooLarge("Body too large", $"Request bodies are limited to {maxBytes} bytes.");
        }
        request.EnableBuffering();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[16 * 1024];
        int read;
        long total = 0;
        while ((read = await request.Body.ReadAsync(buffer)) > 0)
        {
            total += read;
            if (total > maxBytes)
            {
                throw SandboxError.TooLarge("Body too large", $"Request bodies are limited to {maxBytes} bytes.");
            }
            sha.AppendData(buffer, 0, read);
        }
        request.Body.Position = 0;
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}

/// <summary>
/// The answers kept for idempotency keys, per tenant, each tenant bounded in entries and bytes; entries expire after
/// <see cref="SandboxOptions.IdempotencyWindowSeconds"/>. A tenant over its budget loses its oldest finished entries
/// first; when all are still running, a new keyed request is refused (429) rather than growing the store.
/// </summary>
internal sealed class IdempotencyStore(IOptions<SandboxOptions> options, TimeProvider time)
{
    private readonly Dictionary<string, TenantEntries> _tenants = new(StringComparer.Ordinal);
    private readonly TimeSpan _window = TimeSpan.FromSeconds(options.Value.IdempotencyWindowSeconds);
    private readonly int _maxEntries = options.Value.IdempotencyMaxEntriesPerTenant;
    private readonly long _maxBytes = options.Value.IdempotencyMaxBytesPerTenant;

    /// <summary>The entry for a keyed request, and whether this caller is the first (and must run it).</summary>
    /// <exception cref="SandboxError">The key was used for another request (422), or the tenant's budget is full of running work (429).</exception>
    public (Entry Entry, bool First) Begin(string tenant, string requestKey, string fingerprint)
    {
        lock (_tenants)
        {
            if (!_tenants.TryGetValue(tenant, out var entries))
            {
                entries = new TenantEntries();
                _tenants[tenant] = entries;
            }
            var now = time.GetUtcNow();
            entries.Sweep(now - _window);
            if (entries.Map.TryGetValue(requestKey, out var existing))
            {
                if (existing.Fingerprint != fingerprint)
                {
                    throw SandboxError.Unprocessable(ProblemCodes.InvalidRequest, "Idempotency key reused",
                        "This Idempotency-Key was already used with a different request body.");
                }
                return (existing, false);
            }
            while (entries.Map.Count >= _maxEntries || entries.Bytes > _maxBytes)
            {
                if (!entries.EvictOldestFinished())
                {
                    throw SandboxError.QuotaExceeded(
                        $"This tenant has {entries.Map.Count} keyed requests in progress, the most the server keeps; retry shortly.", TimeSpan.FromSeconds(5));
                }
            }
            var entry = new Entry(requestKey, fingerprint, now);
            entries.Add(entry);
            return (entry, true);
        }
    }

    /// <summary>Records the answer (null: none kept) and wakes those who wait for it.</summary>
    public void Complete(string tenant, string requestKey, Entry entry, CapturedResponse? captured)
    {
        lock (_tenants)
        {
            if (_tenants.TryGetValue(tenant, out var entries))
            {
                if (captured is null)
                {
                    entries.Remove(entry);
                }
                else
                {
                    entry.Bytes = captured.Body.Length + 256;
                    entries.Bytes += entry.Bytes;
                }
            }
        }
        entry.Response.TrySetResult(captured);
    }

    /// <summary>Entries and bytes held for a tenant (for tests and diagnostics).</summary>
    public (int Entries, long Bytes) Usage(string tenant)
    {
        lock (_tenants)
        {
            return _tenants.TryGetValue(tenant, out var entries) ? (entries.Map.Count, entries.Bytes) : (0, 0);
        }
    }

    internal sealed class Entry(string requestKey, string fingerprint, DateTimeOffset createdAt)
    {
        public string RequestKey { get; } = requestKey;
        public string Fingerprint { get; } = fingerprint;
        public DateTimeOffset CreatedAt { get; } = createdAt;
        public long Bytes { get; set; }
        public TaskCompletionSource<CapturedResponse?> Response { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public LinkedListNode<Entry>? Node { get; set; }
    }

    internal sealed record CapturedResponse(int Status, string? ContentType, string Location, string RetryAfter, byte[] Body)
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

    private sealed class TenantEntries
    {
        public Dictionary<string, Entry> Map { get; } = new(StringComparer.Ordinal);
        public LinkedList<Entry> Order { get; } = new();
        public long Bytes { get; set; }

        public void Add(Entry entry)
        {
            Map[entry.RequestKey] = entry;
            entry.Node = Order.AddLast(entry);
        }

        public void Remove(Entry entry)
        {
            if (Map.Remove(entry.RequestKey) && entry.Node is not null)
            {
                Order.Remove(entry.Node);
                entry.Node = null;
                Bytes -= entry.Bytes;
            }
        }

        public void Sweep(DateTimeOffset before)
        {
            while (Order.First is { } first && first.Value.CreatedAt < before && first.Value.Response.Task.IsCompleted)
            {
                Remove(first.Value);
            }
        }

        public bool EvictOldestFinished()
        {
            for (var node = Order.First; node is not null; node = node.Next)
            {
                if (node.Value.Response.Task.IsCompleted)
                {
                    Remove(node.Value);
                    return true;
                }
            }
            return false;
        }
    }
}
