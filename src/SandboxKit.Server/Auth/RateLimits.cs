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
            options.GlobalLimiter = PartitionedRateLimiter.Create<HttpContext, string>(context =>
            {
                var tenant = TryGetTenant(context);
                if (tenant is not { RequestsPerSecond: > 0 })
                {
                    return RateLimitPartition.GetNoLimiter("unlimited");
                }
                return RateLimitPartition.GetTokenBucketLimiter(tenant.Name, _ => new TokenBucketRateLimiterOptions
                {
                    TokenLimit = tenant.RequestsPerSecond * 2,
                    TokensPerPeriod = tenant.RequestsPerSecond,
                    ReplenishmentPeriod = TimeSpan.FromSeconds(1),
                    QueueLimit = 0,
                    AutoReplenishment = true,
                });
            });
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
                    Detail = "This tenant sent more requests per second than it is allowed; retry after the given delay.",
                };
                problem.Extensions["code"] = ProblemCodes.RateLimited;
                await http.RequestServices.GetRequiredService<IProblemDetailsService>()
                    .WriteAsync(new ProblemDetailsContext { HttpContext = http, ProblemDetails = problem });
            };
        });

    private static Tenant? TryGetTenant(HttpContext context)
    {
        try
        {
            return context.GetTenant();
        }
        catch (ApiProblemException)
        {
            // No valid key: the endpoint's own check answers 401; anonymous endpoints (health) are not limited.
            return null;
        }
    }
}
