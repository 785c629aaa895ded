using System.Net;
using Polly;
using Polly.Retry;
using Polly.Timeout;

namespace SandboxKit.Client.Internal;

/// <summary>
/// The one resilience pipeline of the client, used both by DI (<c>AddResilienceHandler</c>) and by the direct
/// constructors (<see cref="Microsoft.Extensions.Http.Resilience.ResilienceHandler"/> around a
/// <see cref="SocketsHttpHandler"/>), so both behave the same:
/// <code>
/// total timeout  (TotalTimeout, or call timeout + TotalTimeout for commands)
///   └ retry      (HttpRequestException, attempt timeout, 408/429/502/503/504; Retry-After honoured up to MaxRetryAfter)
///       └ attempt timeout (AttemptTimeout, or command timeout + margin)
/// </code>
/// Retrying POSTs is safe because <see cref="IdempotencyKeyHandler"/>, outside this pipeline, stamps one key per call.
/// The standard resilience handler is not used: its 10 s attempt / 30 s total timeouts would cut long commands and it
/// retries 500s, which a server with idempotency keys would only replay.
/// </summary>
internal static class SandboxResilience
{
    public static void Configure(ResiliencePipelineBuilder<HttpResponseMessage> builder, SandboxClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(options);

        builder.AddTimeout(new TimeoutStrategyOptions
        {
            Name = "SandboxKit.TotalTimeout",
            Timeout = options.TotalTimeout,
            TimeoutGenerator = args => new ValueTask<TimeSpan>(TotalTimeoutFor(args.Context.GetRequestMessage(), options)),
        });

        if (options.MaxRetryAttempts > 0)
        {
            builder.AddRetry(new RetryStrategyOptions<HttpResponseMessage>
            {
                Name = "SandboxKit.Retry",
                MaxRetryAttempts = options.MaxRetryAttempts,
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
                Delay = options.RetryDelay,
                ShouldHandle = args => new ValueTask<bool>(ShouldRetry(args.Outcome, args.Context.GetRequestMessage(), options)),
                DelayGenerator = args => new ValueTask<TimeSpan?>(
                    args.Outcome.Result is { } response ? ProblemDetailsMapper.GetRetryAfter(response.Headers) : null),
            });
        }

        builder.AddTimeout(new TimeoutStrategyOptions
        {
            Name = "SandboxKit.AttemptTimeout",
            Timeout = options.AttemptTimeout,
            TimeoutGenerator = args => new ValueTask<TimeSpan>(AttemptTimeoutFor(args.Context.GetRequestMessage(), options)),
        });
    }

    internal static TimeSpan AttemptTimeoutFor(HttpRequestMessage? request, SandboxClientOptions options) =>
        Clamp(CallAttemptTimeout(request) ?? options.AttemptTimeout);

    internal static TimeSpan TotalTimeoutFor(HttpRequestMessage? request, SandboxClientOptions options) =>
        Clamp(CallAttemptTimeout(request) is { } attempt ? attempt + options.TotalTimeout : options.TotalTimeout);

    internal static bool ShouldRetry(Outcome<HttpResponseMessage> outcome, HttpRequestMessage? request, SandboxClientOptions options)
    {
        if (request is not null && request.Options.TryGetValue(SandboxRequestOptions.NoRetry, out var noRetry) && noRetry)
        {
            return false;
        }

        switch (outcome.Exception)
        {
            case HttpRequestException:
            case TimeoutRejectedException:
                return true;
            case not null:
                // Cancellation by the caller, and anything unexpected, is not retried.
                return false;
        }

        if (outcome.Result is not { } response)
        {
            return false;
        }

        var transient = response.StatusCode is HttpStatusCode.RequestTimeout
            or HttpStatusCode.TooManyRequests
            or HttpStatusCode.BadGateway
            or HttpStatusCode.ServiceUnavailable
            or HttpStatusCode.GatewayTimeout;
        if (!transient)
        {
            return false;
        }

        // A wait longer than the caller accepts is not waited out: the failure (e.g. a quota exception with
        // RetryAfter) is reported at once.
        var retryAfter = ProblemDetailsMapper.GetRetryAfter(response.Headers);
        return retryAfter is null || retryAfter <= options.MaxRetryAfter;
    }

    private static TimeSpan? CallAttemptTimeout(HttpRequestMessage? request) =>
        request is not null
        && request.Options.TryGetValue(SandboxRequestOptions.AttemptTimeout, out var timeout)
        && timeout > TimeSpan.Zero
            ? timeout
            : null;

    // Polly's timeout strategy accepts at most a day.
    private static TimeSpan Clamp(TimeSpan timeout) => timeout > TimeSpan.FromDays(1) ? TimeSpan.FromDays(1) : timeout;
}
