using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Mvc;
using SandboxKit.Server.Api;
using SandboxKit.Contracts;

namespace SandboxKit.Server.Auth;

/// <summary>Per-tenant request rate limits (token buckets); a tenant over its rate gets 429 <c>rate_limited</c> with <c>Retry-After</c>.</summary>
internal static class RateLimits
{
    public static IServiceCollection AddTenantRateLimits(this IServiceCollection services) =>
        services.AddRateLimiter(options =>
        {
            // A request with a valid key counts against its tenant's rate; one without (it will be answered 401, or it is
            // an anonymous health check) against its client address, and all of those together against a concurrency cap,
            // so a flood of keyless requests costs the server a bounded amount of work.
            var perCaller = PartitionedRateLimiter.Create<HttpContext, string>(context =>
            {
                var tenant = context.TryGetTenant();
                if (tenant is not null)
                {
                    return tenant.RequestsPerSecond > 0
                        ? RateLimitPartition.GetTokenBucketLimiter("tenant:" + tenant.Name, _ => Bucket(tenant.RequestsPerSecond))
                        : RateLimitPartition.GetNoLimiter("tenant:unlimited");
                }
                var auth = context.RequestServices.GetRequiredService<Microsoft.Extensions.Options.IOptions<AuthOptions>>().Value;
                var address = context.Connection.RemoteIpAddress?.ToString() ?? "unknown";
                if (IsPreview(context))
                {
                    // A web page behind a preview URL loads its assets in bursts; its token, not a key, authorises it.
                    return auth.PreviewRequestsPerSecond > 0
                        ? RateLimitPartition.GetTokenBucketLimiter("preview:" + address, _ => Bucket(auth.PreviewRequestsPerSecond))
                        : RateLimitPartition.GetNoLimiter("preview:unlimited");
                }
                return auth.AnonymousRequestsPerSecond > 0
                    ? RateLimitPartition.GetTokenBucketLimiter("anonymous:" + address, _ => Bucket(auth.AnonymousRequestsPerSecond))
                    : RateLimitPartition.GetNoLimiter("anonymous:unlimited");
            });
            var anonymousConcurrency = PartitionedRateLimiter.Create<HttpContext, string>(context =>
            {
                if (IsPreview(context) || context.TryGetTenant() is not null)
                {
                    return RateLimitPartition.GetNoLimiter("tenant");
                }
                var auth = context.RequestServices.GetRequiredService<Microsoft.Extensions.Options.IOptions<AuthOptions>>().Value;
                return auth.AnonymousConcurrentRequests > 0
                    ? RateLimitPartition.GetConcurrencyLimiter("anonymous", _ => new ConcurrencyLimiterOptions { PermitLimit = auth.AnonymousConcurrentRequests, QueueLimit = 0 })
                    : RateLimitPartition.GetNoLimiter("anonymous");
            });
            options.GlobalLimiter = PartitionedRateLimiter.CreateChained(perCaller, anonymousConcurrency);
            options.OnRejected = async (context, cancellationToken) =>
            {
                var retryAfter = context.Lease.TryGetMetadata(MetadataName.RetryAfter, out var wait) ? wait : TimeSpan.FromSeconds(1);
                var http = context.HttpContext;
                http.Response.StatusCode = StatusCodes.Status429TooManyRequests;
                http.Response.Headers.RetryAfter = Math.Max(1, (int)Math.Ceiling(retryAfter.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
                var problem = new ProblemDetails
                {
                    Status = StatusCodes.Status429TooManyRequests,
                    Title = "Rate limit exceeded",
                    Detail = http.TryGetTenant() is null
                        ? "Too many requests without a valid API key from this address; retry after the given delay."
                        : "This tenant sent more requests per second than it is allowed; retry after the given delay.",
                };
                problem.Extensions["code"] = ProblemCodes.RateLimited;
                await http.RequestServices.GetRequiredService<IProblemDetailsService>()
                    .WriteAsync(new ProblemDetailsContext { HttpContext = http, ProblemDetails = problem });
            };
        });

    private static bool IsPreview(HttpContext context) => context.Request.Path.StartsWithSegments(Network.PreviewService.PathPrefix, StringComparison.Ordinal);

    private static TokenBucketRateLimiterOptions Bucket(int perSecond) => new()
    {
        TokenLimit = perSecond * 2,
        TokensPerPeriod = perSecond,
        ReplenishmentPeriod = TimeSpan.FromSeconds(1),
        QueueLimit = 0,
        AutoReplenishment = true,
    };
}
