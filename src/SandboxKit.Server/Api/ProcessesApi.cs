using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>
/// Background commands: started detached, read by cursor, fed stdin, killed. The session's supervisor owns them, so they
/// are listed again after a server restart. A background process is not session activity by itself (a forgotten
/// <c>sleep infinity</c> must not keep a sandbox alive); calls about it are.
/// </summary>
internal static class ProcessesApi
{
    public static RouteGroupBuilder MapProcessesApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}/processes").WithTags("Processes").RequireTenant();
        group.MapPost("/", StartAsync).WithSummary("Start a command in the background; returns its id at once.").ProducesStandardProblems().StartsWork();
        group.MapGet("/", ListAsync).WithSummary("List the session's background processes.").ProducesStandardProblems();
        group.MapGet("/{processId}", GetAsync).WithSummary("A background process's state and, once exited, its result.").ProducesStandardProblems();
        group.MapGet("/{processId}/output", OutputAsync).WithSummary("Output events after a cursor (0 for all that is still kept).").ProducesStandardProblems();
        group.MapPost("/{processId}/stdin", SendStdinAsync).WithSummary("Write text to the process's stdin, optionally closing it.").ProducesStandardProblems();
        group.MapDelete("/{processId}", KillAsync).WithSummary("Kill the process and its whole tree.").ProducesStandardProblems();
        return group;
    }

    private static async Task<Created<ProcessInfo>> StartAsync(
        HttpContext http, SessionRegistry sessions, JobService jobs, string id, StartProcessRequest request, CancellationToken cancellationToken)
    {
        var process = await jobs.StartAsync(sessions.Get(http.GetTenant(), id), request, cancellationToken, http.GetIdempotencyToken());
        return TypedResults.Created($"/v1/sessions/{id}/processes/{process.Id}", process);
    }

    private static async Task<Ok<ProcessList>> ListAsync(HttpContext http, SessionRegistry sessions, JobService jobs, string id, CancellationToken cancellationToken) =>
        TypedResults.Ok(new ProcessList { Processes = await jobs.ListAsync(sessions.Get(http.GetTenant(), id), cancellationToken) });

    private static async Task<Ok<ProcessInfo>> GetAsync(HttpContext http, SessionRegistry sessions, JobService jobs, string id, string processId, CancellationToken cancellationToken) =>
        TypedResults.Ok(await jobs.GetAsync(sessions.Get(http.GetTenant(), id), processId, cancellationToken));

    private static async Task<Ok<ProcessOutput>> OutputAsync(
        HttpContext http, SessionRegistry sessions, JobService jobs, string id, string processId, long? cursor, CancellationToken cancellationToken) =>
        TypedResults.Ok(await jobs.ReadAsync(sessions.Get(http.GetTenant(), id), processId, cursor ?? 0, cancellationToken));

    private static async Task<NoContent> SendStdinAsync(
        HttpContext http, SessionRegistry sessions, JobService jobs, string id, string processId, SendStdinRequest request, CancellationToken cancellationToken)
    {
        await jobs.SendStdinAsync(sessions.Get(http.GetTenant(), id), processId, request.Text, request.Close, cancellationToken);
        return TypedResults.NoContent();
    }

    private static async Task<NoContent> KillAsync(HttpContext http, SessionRegistry sessions, JobService jobs, string id, string processId, CancellationToken cancellationToken)
    {
        await jobs.KillAsync(sessions.Get(http.GetTenant(), id), processId, cancellationToken);
        return TypedResults.NoContent();
    }
}
