using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Api;

internal static class CommandsApi
{
    private static readonly TimeSpan KeepAliveInterval = TimeSpan.FromSeconds(15);

    public static RouteGroupBuilder MapCommandsApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}").WithTags("Commands").RequireTenant();
        group.MapPost("/commands", ExecuteAsync)
            .WithSummary("Run a bash command in the session's shell state and wait for its result (non-zero exit is a normal result).")
            .ProducesStandardProblems()
            .StartsWork();
        group.MapPost("/commands/stream", StreamAsync)
            .WithSummary("Run a command and stream its events as Server-Sent Events; disconnecting kills the command.")
            .Produces(StatusCodes.Status200OK, contentType: "text/event-stream")
            .ProducesStandardProblems();
        group.MapPost("/code", RunCodeAsync)
            .WithSummary("Run a cell in a live Python or JavaScript context (state persists; rich results as mime bundles), or bash in the session's shell.")
            .ProducesStandardProblems()
            .StartsWork();
        group.MapPost("/code/stream", StreamCodeAsync)
            .WithSummary("Run a cell and stream its events as Server-Sent Events: stdout, stderr, result, error, exited.")
            .Produces(StatusCodes.Status200OK, contentType: "text/event-stream")
            .ProducesStandardProblems();
        return group;
    }

    private static async Task<Ok<ExecuteResult>> ExecuteAsync(
        HttpContext http, SessionRegistry sessions, CommandRunner commands, string id, ExecuteRequest request, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var run = commands.ToRunRequest(request, http.GetIdempotencyToken());
        return TypedResults.Ok(await commands.ExecuteAsync(session, run, cancellationToken));
    }

    private static async Task<Ok<ExecuteResult>> RunCodeAsync(
        HttpContext http, SessionRegistry sessions, CommandRunner commands, CodeInterpreter interpreter, string id, RunCodeRequest request, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        if (CodeInterpreter.NormalizeLanguage(request.Language) == "bash")
        {
            var run = await commands.ToRunRequestAsync(session, request, http.GetIdempotencyToken(), cancellationToken);
            return TypedResults.Ok(await commands.ExecuteAsync(session, run, cancellationToken));
        }
        return TypedResults.Ok(await interpreter.RunAsync(session, request, cancellationToken));
    }

    private static async Task StreamCodeAsync(
        HttpContext http, SessionRegistry sessions, CommandRunner commands, CodeInterpreter interpreter, string id, RunCodeRequest request, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        if (CodeInterpreter.NormalizeLanguage(request.Language) == "bash")
        {
            var run = await commands.ToRunRequestAsync(session, request, null, cancellationToken);
            await using var handle = await commands.StartAsync(session, run, cancellationToken);
            await WriteEventsAsync(http, handle.ReadEventsAsync(cancellationToken), cancellationToken);
            return;
        }
        // The first event is awaited before the response starts: problems (a missing language, a busy context) stay problem responses.
        var events = interpreter.StreamAsync(session, request, cancellationToken).GetAsyncEnumerator(cancellationToken);
        try
        {
            var any = await events.MoveNextAsync();
            await WriteEventsAsync(http, Rest(events, any), cancellationToken);
        }
        finally
        {
            await events.DisposeAsync();
        }

        static async IAsyncEnumerable<CommandEvent> Rest(IAsyncEnumerator<CommandEvent> events, bool any)
        {
            if (!any)
            {
                yield break;
            }
            yield return events.Current;
            while (await events.MoveNextAsync())
            {
                yield return events.Current;
            }
        }
    }

    /// <summary>Writes events as SSE, one at a time, with keepalives; a failure after the start (headers are gone) is the stream's last event.</summary>
    private static async Task WriteEventsAsync(HttpContext http, IAsyncEnumerable<CommandEvent> events, CancellationToken cancellationToken)
    {
        await using var stream = new ServerSentEvents(http.Response);
        await stream.StartAsync(cancellationToken);
        using var keepAlive = stream.StartKeepAlive(KeepAliveInterval, cancellationToken);
        try
        {
            await foreach (var e in events.WithCancellation(cancellationToken))
            {
                await stream.WriteAsync(e, cancellationToken);
            }
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            if (!cancellationToken.IsCancellationRequested && e is not IOException)
            {
                await stream.WriteAsync(new CommandEvent { Type = CommandEventTypes.Error, Error = ProblemExceptionHandler.StreamMessage(e) }, CancellationToken.None);
            }
        }
    }

    private static async Task StreamAsync(
        HttpContext http, SessionRegistry sessions, CommandRunner commands, string id, ExecuteRequest request, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var run = commands.ToRunRequest(request);
        // Problems before the first byte are ordinary problem responses.
        await using var handle = await commands.StartAsync(session, run, cancellationToken);
        // Each event is written (and flushed) before the next is read: a client that stops reading holds back this
        // command's output in the sandbox, and nothing else.
        await WriteEventsAsync(http, handle.ReadEventsAsync(cancellationToken), cancellationToken);
    }
}

/// <summary>Writes <see cref="CommandEvent"/>s as Server-Sent Events, one writer at a time.</summary>
internal sealed class ServerSentEvents(HttpResponse response) : IAsyncDisposable
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private long _lastWrite = Environment.TickCount64;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        await response.StartAsync(cancellationToken);
        await response.Body.FlushAsync(cancellationToken);
    }

    public async ValueTask WriteAsync(CommandEvent e, CancellationToken cancellationToken = default)
    {
        var json = JsonSerializer.Serialize(e, SandboxJsonContext.Default.CommandEvent);
        var bytes = Encoding.UTF8.GetBytes($"event: {e.Type}\ndata: {json}\n\n");
        await _lock.WaitAsync(cancellationToken);
        try
        {
            await response.Body.WriteAsync(bytes, cancellationToken);
            await response.Body.FlushAsync(cancellationToken);
            _lastWrite = Environment.TickCount64;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>Sends a keepalive event after each <paramref name="interval"/> of silence, until disposed.</summary>
    public IDisposable StartKeepAlive(TimeSpan interval, CancellationToken cancellationToken)
    {
        var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        _ = Task.Run(async () =>
        {
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    await Task.Delay(interval / 3, stop.Token);
                    if (Environment.TickCount64 - Interlocked.Read(ref _lastWrite) >= interval.TotalMilliseconds)
                    {
                        await WriteAsync(new CommandEvent { Type = CommandEventTypes.KeepAlive });
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException)
            {
            }
        }, CancellationToken.None);
        return new CancelOnDispose(stop);
    }

    public ValueTask DisposeAsync()
    {
        _lock.Dispose();
        return ValueTask.CompletedTask;
    }

    private sealed class CancelOnDispose(CancellationTokenSource source) : IDisposable
    {
        public void Dispose()
        {
            source.Cancel();
            source.Dispose();
        }
    }
}
