using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>Code contexts: live Python and JavaScript interpreters of a session (cells run in them with <c>POST /code</c>).</summary>
internal static class ContextsApi
{
    public static RouteGroupBuilder MapContextsApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}/contexts").WithTags("Code").RequireTenant();
        group.MapPost("/", CreateAsync).WithSummary("Start a live interpreter (python or javascript) whose variables persist from cell to cell.").ProducesStandardProblems().StartsWork();
        group.MapGet("/", ListAsync).WithSummary("List the session's code contexts.").ProducesStandardProblems();
        group.MapGet("/{contextId}", GetAsync).WithSummary("A context's state: idle, busy or dead, and its execution count.").ProducesStandardProblems();
        group.MapPost("/{contextId}/restart", RestartAsync).WithSummary("A fresh interpreter in the context: its variables are gone.").ProducesStandardProblems();
        group.MapPost("/{contextId}/interrupt", InterruptAsync)
            .WithSummary("Interrupt the running cell (KeyboardInterrupt); the state is kept unless it does not stop within 3 s.")
            .ProducesStandardProblems();
        group.MapDelete("/{contextId}", DeleteAsync).WithSummary("Stop the interpreter and forget the context.").ProducesStandardProblems();
        return group;
    }

    private static async Task<Created<CodeContext>> CreateAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id,
        CreateContextRequest request, CancellationToken cancellationToken)
    {
        var context = await interpreter.CreateAsync(sessions.Get(http.GetTenant(), id), request, cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/contexts/{context.Id}", context);
    }

    private static async Task<Ok<CodeContextList>> ListAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id, CancellationToken cancellationToken) =>
        TypedResults.Ok(new CodeContextList { Contexts = await interpreter.ListAsync(sessions.Get(http.GetTenant(), id), cancellationToken) });

    private static async Task<Ok<CodeContext>> GetAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id, string contextId,
        CancellationToken cancellationToken) =>
        TypedResults.Ok(await interpreter.GetAsync(sessions.Get(http.GetTenant(), id), contextId, cancellationToken));

    private static async Task<Ok<CodeContext>> RestartAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id, string contextId,
        CancellationToken cancellationToken) =>
        TypedResults.Ok(await interpreter.RestartAsync(sessions.Get(http.GetTenant(), id), contextId, cancellationToken));

    private static async Task<Ok<CodeContext>> InterruptAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id, string contextId,
        CancellationToken cancellationToken) =>
        TypedResults.Ok(await interpreter.InterruptAsync(sessions.Get(http.GetTenant(), id), contextId, cancellationToken));

    private static async Task<NoContent> DeleteAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id, string contextId,
        CancellationToken cancellationToken)
    {
        await interpreter.DeleteAsync(sessions.Get(http.GetTenant(), id), contextId, cancellationToken);
        return TypedResults.NoContent();
    }
}
