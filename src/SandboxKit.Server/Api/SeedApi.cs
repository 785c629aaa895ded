using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>
/// The original Python sandbox's three calls, unchanged in shape, so its client and curl lines keep working.
/// They run on the same sessions and agent exec path as v1.
/// </summary>
internal static class SeedApi
{
    public static IEndpointRouteBuilder MapSeedApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/").WithTags("Seed-compatible").RequireTenant();
        group.MapPost("/create_session", CreateAsync).WithSummary("Seed-compatible: create a session with the default settings.");
        group.MapPost("/execute", ExecuteAsync).WithSummary("Seed-compatible: run a command; stdout and stderr come back together, in order.");
        group.MapPost("/cleanup", CleanupAsync).WithSummary("Seed-compatible: delete a session.");
        return app;
    }

    private static async Task<Ok<SeedCreateSessionResponse>> CreateAsync(HttpContext http, SessionManager sessions, CancellationToken cancellationToken)
    {
        var session = await sessions.CreateAsync(http.GetTenant(), new CreateSessionRequest(), cancellationToken);
        return TypedResults.Ok(new SeedCreateSessionResponse(session.Id, "created"));
    }

    private static async Task<Ok<SeedExecuteResponse>> ExecuteAsync(
        HttpContext http, SessionManager sessions, CommandService commands, SeedExecuteRequest request, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(request.SessionId) || request.Command is null)
        {
            throw ApiProblemException.Invalid("session_id and command are required.");
        }
        var session = sessions.Get(http.GetTenant(), request.SessionId);
        var agentRequest = commands.ToAgentRequest(session, new ExecuteRequest { Command = request.Command, MergeStderr = true });
        var result = await commands.ExecuteAsync(session, agentRequest, cancellationToken);
        return TypedResults.Ok(new SeedExecuteResponse(result.ExitCode, result.Stdout));
    }

    private static async Task<Ok<SeedCleanupResponse>> CleanupAsync(HttpContext http, SessionManager sessions, SeedCleanupRequest request)
    {
        if (string.IsNullOrEmpty(request.SessionId))
        {
            throw ApiProblemException.Invalid("session_id is required.");
        }
        await sessions.DeleteAsync(sessions.Get(http.GetTenant(), request.SessionId), "cleanup by request");
        return TypedResults.Ok(new SeedCleanupResponse("cleaned up"));
    }
}
