using System.Net.WebSockets;
using System.Text.Json;
using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Api;

/// <summary>
/// Terminals on real pseudo-terminals, and the WebSocket that attaches to one. On the socket, binary messages are bytes
/// (output from the server, input from the client) and text messages are <see cref="TerminalMessage"/>s: the server
/// first says where its output starts (<c>attached</c>), later <c>exit</c>; the client sends <c>resize</c>. A second
/// client attached to the same terminal <b>shares</b> it, as a tmux session does: every client sees all output and
/// may type; the size is whatever was set last.
/// </summary>
internal static class TerminalsApi
{
    public static RouteGroupBuilder MapTerminalsApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}/terminals").WithTags("Terminals").RequireTenant();
        group.MapPost("/", CreateAsync).WithSummary("Open a terminal: a login shell (or a command) on a pseudo-terminal of the given size.").ProducesStandardProblems().StartsWork();
        group.MapGet("/", ListAsync).WithSummary("List the session's terminals.").ProducesStandardProblems();
        group.MapGet("/{terminalId}", GetAsync).WithSummary("A terminal's state: size, offsets of its replay buffer, exit code.").ProducesStandardProblems();
        group.MapDelete("/{terminalId}", CloseAsync).WithSummary("Close a terminal: SIGHUP to its process tree, SIGKILL after 2 s.").ProducesStandardProblems();
        group.MapPost("/{terminalId}/resize", ResizeAsync).WithSummary("Set the terminal's size (the program in it gets SIGWINCH).").ProducesStandardProblems();
        group.MapGet("/{terminalId}/recording", RecordingAsync)
            .WithSummary("The terminal's output with timings as an asciicast v2 file (bounded; the oldest part dropped with a marker).")
            .Produces(StatusCodes.Status200OK, contentType: "application/x-asciicast")
            .ProducesStandardProblems();
        group.MapPost("/{terminalId}/tickets", IssueTicket)
            .WithSummary("A single-use ticket (60 s) for the terminal's WebSocket, for browsers: they cannot send the key in a header there.")
            .ProducesStandardProblems();
        group.MapGet("/{terminalId}/ws", AttachAsync)
            .WithSummary("Attach over a WebSocket: binary output and input, JSON resize; ?since=<offset> replays what was missed; ?ticket= for browsers.");
        return group;
    }

    private static async Task<Created<TerminalInfo>> CreateAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, string id,
        CreateTerminalRequest? request, CancellationToken cancellationToken)
    {
        var terminal = await terminals.CreateAsync(sessions.Get(http.GetTenant(), id), request ?? new CreateTerminalRequest(), cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/terminals/{terminal.Id}", terminal);
    }

    private static async Task<Ok<TerminalList>> ListAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, string id, CancellationToken cancellationToken) =>
        TypedResults.Ok(new TerminalList { Terminals = await terminals.ListAsync(sessions.Get(http.GetTenant(), id), cancellationToken) });

    private static async Task<Ok<TerminalInfo>> GetAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, string id, string terminalId,
        CancellationToken cancellationToken) =>
        TypedResults.Ok(await terminals.GetAsync(sessions.Get(http.GetTenant(), id), terminalId, cancellationToken));

    private static async Task<NoContent> CloseAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, string id, string terminalId,
        CancellationToken cancellationToken)
    {
        await terminals.CloseAsync(sessions.Get(http.GetTenant(), id), terminalId, cancellationToken);
        return TypedResults.NoContent();
    }

    private static async Task<Ok<TerminalInfo>> ResizeAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, string id, string terminalId,
        ResizeTerminalRequest request, CancellationToken cancellationToken) =>
        TypedResults.Ok(await terminals.ResizeAsync(sessions.Get(http.GetTenant(), id), terminalId, request.Cols, request.Rows, cancellationToken));

    private static async Task RecordingAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, string id, string terminalId,
        CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        // Problems before the first byte are ordinary problem responses; the file is streamed as it comes.
        var started = false;
        await terminals.WriteRecordingAsync(session, terminalId, async (chunk, token) =>
        {
            if (!started)
            {
                started = true;
                http.Response.ContentType = "application/x-asciicast";
                http.Response.Headers.ContentDisposition = FilesApi.ContentDisposition(terminalId + ".cast");
            }
            await http.Response.Body.WriteAsync(chunk, token);
        }, cancellationToken);
        if (!started)
        {
            http.Response.ContentType = "application/x-asciicast";
        }
    }

    private static async Task<Ok<WebSocketTicket>> IssueTicket(HttpContext http, SessionRegistry sessions, TerminalService terminals, WebSocketTickets tickets,
        string id, string terminalId, CancellationToken cancellationToken)
    {
        var tenant = http.GetTenant();
        var session = sessions.Get(tenant, id);
        // Only for a terminal that exists: a ticket is no way to probe.
        var terminal = await terminals.GetAsync(session, terminalId, cancellationToken);
        var (ticket, expires) = tickets.Issue(tenant, $"/v1/sessions/{session.Id}/terminals/{terminal.Id}/ws");
        return TypedResults.Ok(new WebSocketTicket { Ticket = ticket, ExpiresAt = expires });
    }

    private static async Task AttachAsync(HttpContext http, SessionRegistry sessions, TerminalService terminals, TimeProvider time,
        string id, string terminalId, long? since)
    {
        var session = sessions.Get(http.GetTenant(), id);
        if (!http.WebSockets.IsWebSocketRequest)
        {
            throw SandboxError.Invalid("This endpoint needs a WebSocket upgrade.");
        }
        // Attached before the upgrade: a missing terminal is an ordinary 404 problem.
        await using var attachment = await terminals.AttachAsync(session, terminalId, since ?? 0, http.RequestAborted);
        using var activity = session.BeginActivity(time);
        using var socket = await http.WebSockets.AcceptWebSocketAsync();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted);
        await SendAsync(socket, new TerminalMessage { Type = TerminalMessageTypes.Attached, Offset = attachment.StartOffset, Dropped = attachment.Dropped }, stop.Token);
        var inbound = PumpInputAsync(socket, attachment, session, terminals, terminalId, stop);
        try
        {
            while (await attachment.ReadAsync(stop.Token) is { } output)
            {
                if (output.ExitCode is { } code)
                {
                    await SendAsync(socket, new TerminalMessage { Type = TerminalMessageTypes.Exit, ExitCode = code }, stop.Token);
                    break;
                }
                // One message at a time: a client that stops reading holds back this terminal's output, nothing else.
                await socket.SendAsync(output.Data, WebSocketMessageType.Binary, true, stop.Token);
            }
            if (socket.State == WebSocketState.Open)
            {
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "terminal exited", CancellationToken.None);
            }
        }
        catch (Exception e) when (e is SandboxError or SupervisorUnavailableException && socket.State == WebSocketState.Open)
        {
            await SendAsync(socket, new TerminalMessage { Type = TerminalMessageTypes.Error, Message = ProblemExceptionHandler.StreamMessage(e) }, CancellationToken.None);
            // 4404: the terminal or its session is gone (deleted, expired), so a client stops reconnecting.
            var gone = e is SandboxError { Kind: ErrorKind.NotFound } || session.Closed;
            await socket.CloseOutputAsync(gone ? (WebSocketCloseStatus)4404 : WebSocketCloseStatus.InternalServerError, gone ? "gone" : "error", CancellationToken.None);
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException)
        {
            // The client left; the terminal goes on.
        }
        finally
        {
            if (socket.State is WebSocketState.CloseSent)
            {
                await Task.WhenAny(inbound, Task.Delay(TimeSpan.FromSeconds(2)));
            }
            await stop.CancelAsync();
            await inbound.ContinueWith(_ => { }, TaskScheduler.Default);
            if (socket.State is WebSocketState.CloseReceived)
            {
                // The client detached: complete its close handshake (the terminal goes on).
                try
                {
                    await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "detached", CancellationToken.None);
                }
                catch (WebSocketException)
                {
                }
            }
        }
    }

    private static async Task PumpInputAsync(WebSocket socket, TerminalAttachment attachment, Session session, TerminalService terminals, string terminalId,
        CancellationTokenSource stop)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (!stop.IsCancellationRequested)
            {
                var result = await socket.ReceiveAsync(buffer, stop.Token);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    await stop.CancelAsync();
                    return;
                }
                if (result.MessageType == WebSocketMessageType.Binary)
                {
                    // Within the supervisor's credit: a client typing faster than the terminal reads waits here.
                    await attachment.WriteAsync(buffer.AsMemory(0, result.Count), stop.Token);
                    continue;
                }
                var text = await ReadRestAsync(socket, buffer, result, stop.Token);
                TerminalMessage? message;
                try
                {
                    message = JsonSerializer.Deserialize(text, SandboxJsonContext.Default.TerminalMessage);
                }
                catch (JsonException)
                {
                    continue;
                }
                if (message is { Type: TerminalMessageTypes.Resize, Cols: { } cols, Rows: { } rows })
                {
                    await terminals.ResizeAsync(session, terminalId, cols, rows, stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or SandboxError or SupervisorUnavailableException)
        {
            await stop.CancelAsync();
        }
    }

    /// <summary>The whole text message whose first part is in <paramref name="buffer"/> (control messages: at most 4 KiB).</summary>
    private static async Task<byte[]> ReadRestAsync(WebSocket socket, byte[] buffer, WebSocketReceiveResult first, CancellationToken cancellationToken)
    {
        using var text = new MemoryStream();
        text.Write(buffer, 0, first.Count);
        var result = first;
        while (!result.EndOfMessage)
        {
            result = await socket.ReceiveAsync(buffer, cancellationToken);
            text.Write(buffer, 0, result.Count);
            if (text.Length > 4096)
            {
                throw SandboxError.TooLarge("Message too large", "Terminal control messages are at most 4 KiB.");
            }
        }
        return text.ToArray();
    }

    private static Task SendAsync(WebSocket socket, TerminalMessage message, CancellationToken cancellationToken) =>
        socket.SendAsync(JsonSerializer.SerializeToUtf8Bytes(message, SandboxJsonContext.Default.TerminalMessage), WebSocketMessageType.Text, true, cancellationToken);
}
