using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

internal static class HealthApi
{
    public static IEndpointRouteBuilder MapHealthApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/healthz", GetHealthAsync)
            .WithName("GetHealth")
            .WithSummary("Whether the container engine answers and the sandbox image is present (503 when not).")
            .AllowAnonymous();
        return app;
    }

    private static async Task<Results<Ok<HealthReport>, JsonHttpResult<HealthReport>>> GetHealthAsync(
        IContainerEngine engine, SandboxImage image, CancellationToken cancellationToken)
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

        var healthy = engineHealth.Reachable && imagePresent;
        var report = new HealthReport
        {
            Status = healthy ? "healthy" : "unhealthy",
            Engine = engineHealth,
            Image = new ImageHealth { Name = image.Default, Present = imagePresent },
            Version = ServerInfo.Version,
        };
        return healthy
            ? TypedResults.Ok(report)
            : TypedResults.Json(report, SandboxJsonContext.Default.HealthReport, statusCode: StatusCodes.Status503ServiceUnavailable);
    }
}
