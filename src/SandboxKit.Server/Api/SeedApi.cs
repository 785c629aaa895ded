using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>
/// The original Python sandbox's three calls, unchanged in shape, so its client and curl lines keep working.
/// They run on the same sessions and command path as v1.
/// </summary>
internal static class SeedApi
{
    public static IEndpointRouteBuilder MapSeedApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/").WithTags("Seed-compatible").RequireTenant();
        group.MapPost("/create_session", CreateAsync).WithSummary("Seed-compatible: create a session with the default settings.").StartsWork();
        group.MapPost("/execute", ExecuteAsync).WithSummary("Seed-compatible: run a command; stdout and stderr come back together, in order.").StartsWork();
        group.MapPost("/cleanup", CleanupAsync).WithSummary("Seed-compatible: delete a session.");
        return app;
    }

    private static async Task<Ok<SeedCreateSessionResponse>> CreateAsync(HttpContext http, SessionCreator creator, CancellationToken cancellationToken)
    {
        var session = await creator.CreateAsync(http.GetTenant(), new CreateSessionRequest(), cancellationToken, http.GetIdempotencyToken());
        return TypedResults.Ok(new SeedCreateSessionResponse(session.Id, "created"));
    }

    private static async Task<Ok<SeedExecuteResponse>> ExecuteAsync(
        HttpContext http, SessionRegistry sessions, CommandRunner commands, SeedExecuteRequest request, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(request.SessionId) || request.Command is null)
        {
            throw SandboxError.Invalid("session_id and command are required.");
        }
        var session = sessions.Get(http.GetTenant(), request.SessionId);
        var run = commands.ToRunRequest(new ExecuteRequest { Command = request.Command, MergeStderr = true }, http.GetIdempotencyToken());
        var result = await commands.ExecuteAsync(session, run, cancellationToken);
        return TypedResults.Ok(new SeedExecuteResponse(result.ExitCode, result.Stdout));
    }

    private static async Task<Ok<SeedCleanupResponse>> CleanupAsync(HttpContext http, SessionRegistry sessions, SessionLifecycle lifecycle, SeedCleanupRequest request)
    {
        if (string.IsNullOrEmpty(request.SessionId))
        {
            throw SandboxError.Invalid("session_id is required.");
        }
        await lifecycle.DeleteAsync(sessions.Get(http.GetTenant(), request.SessionId), "cleanup by request");
        return TypedResults.Ok(new SeedCleanupResponse("cleaned up"));
    }
}
