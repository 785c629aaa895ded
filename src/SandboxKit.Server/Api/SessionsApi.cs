using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

internal static class SessionsApi
{
    public static RouteGroupBuilder MapSessionsApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions").WithTags("Sessions").RequireTenant();
        group.MapPost("/", CreateAsync).WithSummary("Create a session: one hardened container, bounded by the server's maxima.");
        group.MapGet("/", List).WithSummary("List the caller's sessions; filter with userId and metadata[key]=value.");
        group.MapGet("/{id}", Get).WithSummary("Describe a session.");
        group.MapDelete("/{id}", DeleteAsync).WithSummary("Delete a session and its container.");
        group.MapPost("/{id}/keepalive", KeepAlive).WithSummary("Extend the idle deadline (never past the maximum lifetime).");
        group.MapGet("/{id}/stats", GetStatsAsync).WithSummary("Memory, CPU time and process count of the session's container now.");

        app.MapGroup("/v1/usage").WithTags("Sessions").RequireTenant()
            .MapGet("/", (HttpContext http, SessionManager sessions, UsageMeter usage) =>
            {
                var tenant = http.GetTenant();
                return TypedResults.Ok(usage.Report(tenant.Name, sessions.CountFor(tenant)));
            })
            .WithSummary("The caller's usage since the server started: sessions, commands, command time, output bytes.");

        app.MapGroup("/v1/users").WithTags("Sessions").RequireTenant()
            .MapDelete("/{userId}/storage", DeleteUserStorageAsync)
            .WithSummary("Delete an end user's persistent storage (the user must have no live session).");
        return group;
    }

    private static async Task<Created<SessionInfo>> CreateAsync(HttpContext http, SessionManager sessions, CreateSessionRequest? request, CancellationToken cancellationToken)
    {
        var session = await sessions.CreateAsync(http.GetTenant(), request ?? new CreateSessionRequest(), cancellationToken);
        return TypedResults.Created($"/v1/sessions/{session.Id}", session.ToInfo());
    }

    private static Ok<SessionList> List(HttpContext http, SessionManager sessions, string? userId)
    {
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in http.Request.Query)
        {
            if (key.StartsWith("metadata[", StringComparison.Ordinal) && key.EndsWith(']'))
            {
                metadata[key["metadata[".Length..^1]] = value.ToString();
            }
        }
        var list = sessions.List(http.GetTenant(), userId, metadata).Select(s => s.ToInfo()).ToList();
        return TypedResults.Ok(new SessionList { Sessions = list });
    }

    private static Ok<SessionInfo> Get(HttpContext http, SessionManager sessions, string id) =>
        TypedResults.Ok(sessions.Get(http.GetTenant(), id).ToInfo());

    private static async Task<NoContent> DeleteAsync(HttpContext http, SessionManager sessions, string id)
    {
        await sessions.DeleteAsync(sessions.Get(http.GetTenant(), id), "deleted by request");
        return TypedResults.NoContent();
    }

    private static Ok<SessionInfo> KeepAlive(HttpContext http, SessionManager sessions, string id) =>
        TypedResults.Ok(sessions.KeepAlive(sessions.Get(http.GetTenant(), id)));

    private static async Task<Ok<SessionStats>> GetStatsAsync(HttpContext http, SessionManager sessions, string id, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var stats = await sessions.Engine.GetStatsAsync(session.ContainerId, cancellationToken);
        if (stats is null)
        {
            await sessions.ThrowIfGoneAsync(session);
            throw ApiProblemException.SessionNotFound(id);
        }
        return TypedResults.Ok(new SessionStats
        {
            MemoryUsageBytes = stats.MemoryUsageBytes,
            MemoryLimitBytes = stats.MemoryLimitBytes,
            CpuSeconds = stats.CpuSeconds,
            Pids = stats.Pids,
            PidsLimit = session.PidsLimit,
        });
    }

    private static async Task<NoContent> DeleteUserStorageAsync(HttpContext http, SessionManager sessions, string userId, CancellationToken cancellationToken)
    {
        await sessions.DeleteUserStorageAsync(http.GetTenant(), userId, cancellationToken);
        return TypedResults.NoContent();
    }
}
