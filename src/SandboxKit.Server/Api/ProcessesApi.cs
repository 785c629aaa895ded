using System.Text.Json;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>
/// Background commands: started detached, read by cursor, fed stdin, killed. A background process is not
/// session activity by itself (a forgotten <c>sleep infinity</c> must not keep a sandbox alive); calls about it are.
/// </summary>
internal static class ProcessesApi
{
    private const int MaxTrackedProcesses = 64;

    public static RouteGroupBuilder MapProcessesApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}/processes").WithTags("Processes").RequireTenant();
        group.MapPost("/", StartAsync).WithSummary("Start a command in the background; returns its id at once.");
        group.MapGet("/", List).WithSummary("List the session's background processes.");
        group.MapGet("/{processId}", Get).WithSummary("A background process's state and, once exited, its result.");
        group.MapGet("/{processId}/output", Output).WithSummary("Output events after a cursor (0 for all that is still buffered).");
        group.MapPost("/{processId}/stdin", SendStdinAsync).WithSummary("Write text to the process's stdin, optionally closing it.");
        group.MapDelete("/{processId}", KillAsync).WithSummary("Kill the process and its whole tree.");
        return group;
    }

    private static async Task<Created<ProcessInfo>> StartAsync(
        HttpContext http, SessionManager sessions, CommandService commands, IOptions<SandboxOptions> options, TimeProvider time,
        string id, StartProcessRequest request, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        if (session.Processes.Count >= MaxTrackedProcesses)
        {
            foreach (var done in session.Processes.Values.Where(p => p.Result is not null).OrderBy(p => p.StartedAt).Take(session.Processes.Count - MaxTrackedProcesses + 1))
            {
                session.Processes.TryRemove(done.Id, out _);
            }
            if (session.Processes.Count >= MaxTrackedProcesses)
            {
                throw new ApiProblemException(StatusCodes.Status409Conflict, ProblemCodes.Conflict, "Too many background processes",
                    $"A session runs at most {MaxTrackedProcesses} background processes; kill one first.");
            }
        }
        var agentRequest = commands.ToAgentRequest(session, new ExecuteRequest
        {
            Command = request.Command,
            TimeoutSeconds = request.TimeoutSeconds ?? options.Value.MaxCommandTimeoutSeconds,
            Environment = request.Environment,
        }) with
        {
            Stdin = request.KeepStdinOpen ? "pipe" : "closed",
        };
        var process = await sessions.UseAgentAsync(session, async agent =>
        {
            var payload = JsonSerializer.SerializeToUtf8Bytes(agentRequest, AgentJsonContext.Default.AgentRunRequest);
            var channel = await agent.OpenAsync(FrameType.Run, payload, cancellationToken);
            var started = new BackgroundProcess(Guid.NewGuid().ToString("N")[..12], request.Command, channel, options.Value.OutputCapBytes, time.GetUtcNow());
            session.Processes[started.Id] = started;
            return started;
        }, cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/processes/{process.Id}", process.ToInfo());
    }

    private static Ok<ProcessList> List(HttpContext http, SessionManager sessions, string id)
    {
        var session = sessions.Get(http.GetTenant(), id);
        return TypedResults.Ok(new ProcessList { Processes = session.Processes.Values.OrderBy(p => p.StartedAt).Select(p => p.ToInfo()).ToList() });
    }

    private static Ok<ProcessInfo> Get(HttpContext http, SessionManager sessions, TimeProvider time, string id, string processId) =>
        TypedResults.Ok(Find(http, sessions, time, id, processId).ToInfo());

    private static Ok<ProcessOutput> Output(HttpContext http, SessionManager sessions, TimeProvider time, string id, string processId, long? cursor)
    {
        if (cursor < 0)
        {
            throw ApiProblemException.Invalid("cursor must be 0 or greater.");
        }
        return TypedResults.Ok(Find(http, sessions, time, id, processId).ReadSince(cursor ?? 0));
    }

    private static async Task<NoContent> SendStdinAsync(
        HttpContext http, SessionManager sessions, TimeProvider time, string id, string processId, SendStdinRequest request, CancellationToken cancellationToken)
    {
        var process = Find(http, sessions, time, id, processId);
        if (process.Result is not null)
        {
            throw new ApiProblemException(StatusCodes.Status409Conflict, ProblemCodes.Conflict, "Process exited", "The process has already exited.");
        }
        await process.SendStdinAsync(request.Text, request.Close, cancellationToken);
        return TypedResults.NoContent();
    }

    private static async Task<NoContent> KillAsync(HttpContext http, SessionManager sessions, TimeProvider time, string id, string processId, CancellationToken cancellationToken)
    {
        var process = Find(http, sessions, time, id, processId);
        await process.KillAsync(cancellationToken);
        await process.Completion.WaitAsync(TimeSpan.FromSeconds(10), cancellationToken);
        return TypedResults.NoContent();
    }

    private static BackgroundProcess Find(HttpContext http, SessionManager sessions, TimeProvider time, string id, string processId)
    {
        var session = sessions.Get(http.GetTenant(), id);
        session.Touch(time.GetUtcNow());
        return session.Processes.TryGetValue(processId, out var process)
            ? process
            : throw new ApiProblemException(StatusCodes.Status404NotFound, ProblemCodes.NotFound, "Process not found", $"No background process '{processId}' in this session.");
    }
}
