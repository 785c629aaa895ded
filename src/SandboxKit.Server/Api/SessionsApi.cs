using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

internal static class SessionsApi
{
    public static RouteGroupBuilder MapSessionsApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions").WithTags("Sessions").RequireTenant();
        group.MapPost("/", CreateAsync).WithSummary("Create a session: one hardened container, bounded by the server's maxima.").ProducesStandardProblems().StartsWork();
        group.MapGet("/", List).WithSummary("List the caller's sessions; filter with userId and metadata[key]=value.");
        group.MapGet("/{id}", Get).WithSummary("Describe a session, including what its image offers.").ProducesStandardProblems();
        group.MapDelete("/{id}", DeleteAsync).WithSummary("Delete a session and its container.").ProducesStandardProblems();
        group.MapPost("/{id}/keepalive", KeepAlive).WithSummary("Extend the idle deadline (never past the maximum lifetime).").ProducesStandardProblems();
        group.MapGet("/{id}/stats", GetStatsAsync).WithSummary("Memory, CPU time and process count of the session's container now.").ProducesStandardProblems();

        app.MapGroup("/v1/usage").WithTags("Sessions").RequireTenant()
            .MapGet("/", (HttpContext http, SessionRegistry sessions, UsageMeter usage) =>
            {
                var tenant = http.GetTenant();
                return TypedResults.Ok(usage.Report(tenant.Name, sessions.CountFor(tenant)));
            })
            .WithSummary("The caller's usage since the server started: sessions, commands, command time, CPU time, peak memory, output bytes.");

        app.MapGroup("/v1/users").WithTags("Sessions").RequireTenant()
            .MapDelete("/{userId}/storage", DeleteUserStorageAsync)
            .WithSummary("Delete an end user's persistent storage (the user must have no live session).")
            .ProducesStandardProblems();
        return group;
    }

    private static async Task<Created<SessionInfo>> CreateAsync(HttpContext http, SessionCreator creator, CreateSessionRequest? request, CancellationToken cancellationToken)
    {
        var session = await creator.CreateAsync(http.GetTenant(), request ?? new CreateSessionRequest(), cancellationToken, http.GetIdempotencyToken());
        return TypedResults.Created($"/v1/sessions/{session.Id}", session.ToInfo());
    }

    private static Ok<SessionList> List(HttpContext http, SessionRegistry sessions, string? userId)
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

    private static Ok<SessionInfo> Get(HttpContext http, SessionRegistry sessions, string id) =>
        TypedResults.Ok(sessions.Get(http.GetTenant(), id).ToInfo());

    private static async Task<NoContent> DeleteAsync(HttpContext http, SessionRegistry sessions, SessionLifecycle lifecycle, string id)
    {
        await lifecycle.DeleteAsync(sessions.Get(http.GetTenant(), id), "deleted by request");
        return TypedResults.NoContent();
    }

    private static Ok<SessionInfo> KeepAlive(HttpContext http, SessionRegistry sessions, TimeProvider time, string id)
    {
        var session = sessions.Get(http.GetTenant(), id);
        session.Touch(time.GetUtcNow());
        return TypedResults.Ok(session.ToInfo());
    }

    private static async Task<Ok<SessionStats>> GetStatsAsync(
        HttpContext http, SessionRegistry sessions, SessionLifecycle lifecycle, IContainerEngine engine, string id, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        ContainerStats? stats;
        try
        {
            stats = await engine.GetStatsAsync(session.ContainerId, cancellationToken);
        }
        catch (EngineUnavailableException e)
        {
            throw SandboxError.EngineUnavailable(e.Message, e);
        }
        if (stats is null)
        {
            await lifecycle.ThrowIfGoneAsync(session);
            throw SandboxError.SessionNotFound(id);
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

    private static async Task<NoContent> DeleteUserStorageAsync(HttpContext http, SessionLifecycle lifecycle, string userId, CancellationToken cancellationToken)
    {
        await lifecycle.DeleteUserStorageAsync(http.GetTenant(), userId, cancellationToken);
        return TypedResults.NoContent();
    }
}
