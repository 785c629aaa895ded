using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

internal static class HealthApi
{
    public static IEndpointRouteBuilder MapHealthApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/healthz", GetHealthAsync)
            .WithName("GetHealth")
            .WithSummary("Whether the server can run sandboxes (503 when not). Without a valid key only the status; with one the engine, image and capacity.")
            .AllowAnonymous();
        return app;
    }

    private static async Task<Results<Ok<HealthReport>, JsonHttpResult<HealthReport>>> GetHealthAsync(
        HttpContext http, HealthProbe probe, CancellationToken cancellationToken)
    {
        var report = await probe.GetAsync(cancellationToken);
        if (http.TryGetTenant() is null)
        {
            // Anonymous callers learn whether to route traffic here, nothing about the engine behind it.
            report = new HealthReport { Status = report.Status };
        }
        return report.Status == "healthy"
            ? TypedResults.Ok(report)
            : TypedResults.Json(report, SandboxJsonContext.Default.HealthReport, statusCode: StatusCodes.Status503ServiceUnavailable);
    }
}

/// <summary>
/// The engine and image check behind <c>/healthz</c>, done at most once per two seconds whoever asks, so health
/// checks (anonymous ones included) cannot make the engine busy.
/// </summary>
internal sealed class HealthProbe(IContainerEngine engine, SandboxImage image, CapacityGuard capacity, TimeProvider time)
{
    private static readonly TimeSpan Freshness = TimeSpan.FromSeconds(2);
    private readonly SemaphoreSlim _lock = new(1, 1);
    private (HealthReport Report, DateTimeOffset At)? _last;

    public async Task<HealthReport> GetAsync(CancellationToken cancellationToken)
    {
        if (_last is { } cached && time.GetUtcNow() - cached.At < Freshness)
        {
            return cached.Report with { Capacity = capacity.Report() };
        }
        await _lock.WaitAsync(cancellationToken);
        try
        {
            if (_last is { } again && time.GetUtcNow() - again.At < Freshness)
            {
                return again.Report with { Capacity = capacity.Report() };
            }
            var report = await ProbeAsync(cancellationToken);
            _last = (report, time.GetUtcNow());
            return report;
        }
        finally
        {
            _lock.Release();
        }
    }

    private async Task<HealthReport> ProbeAsync(CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(5));
        EngineHealth engineHealth;
        var imagePresent = false;
        try
        {
            var info = await engine.GetInfoAsync(timeout.Token);
            imagePresent = await engine.ImageExistsAsync(image.Default, timeout.Token);
            engineHealth = new EngineHealth
            {
                Reachable = true,
                Endpoint = engine.Endpoint,
                Version = info.Version,
                ApiVersion = info.ApiVersion,
                Runtimes = info.Runtimes,
            };
        }
        catch (Exception e) when (e is EngineUnavailableException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            engineHealth = new EngineHealth
            {
                Reachable = false,
                Endpoint = engine.Endpoint,
                Error = e is OperationCanceledException ? "The engine did not answer within 5 seconds." : e.Message,
            };
        }
        return new HealthReport
        {
            Status = engineHealth.Reachable && imagePresent ? "healthy" : "unhealthy",
            Engine = engineHealth,
            Image = new ImageHealth { Name = image.Default, Present = imagePresent },
            Version = ServerInfo.Version,
            Capacity = capacity.Report(),
        };
    }
}
