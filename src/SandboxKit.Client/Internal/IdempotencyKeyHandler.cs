namespace SandboxKit.Client.Internal;

/// <summary>
/// Gives every request that is not a GET/HEAD/OPTIONS an <c>Idempotency-Key</c> header, unless the caller set one.
/// It sits OUTSIDE the resilience handler, so it runs once per logical call and every retry of that call carries
/// the same key: the server then answers a repeat with its first answer instead of running a command twice.
/// </summary>
internal sealed class IdempotencyKeyHandler : DelegatingHandler
{
    public IdempotencyKeyHandler()
    {
    }

    public IdempotencyKeyHandler(HttpMessageHandler innerHandler)
        : base(innerHandler)
    {
    }

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        AddKey(request);
        return base.SendAsync(request, cancellationToken);
    }

    internal static void AddKey(HttpRequestMessage request)
    {
        var method = request.Method;
        if (method == HttpMethod.Get || method == HttpMethod.Head || method == HttpMethod.Options || method == HttpMethod.Trace)
        {
            return;
        }

        if (!request.Headers.Contains(SandboxRequestOptions.IdempotencyKeyHeader))
        {
            request.Headers.TryAddWithoutValidation(SandboxRequestOptions.IdempotencyKeyHeader, Guid.NewGuid().ToString("N"));
        }
    }
}
