using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Web;

namespace SandboxKit.Server.Api;

/// <summary>
/// Commands over WebSocket (real-time output both ways), and the web terminal page (Web/, on the terminals API).
/// Protocol: the client's first text message is an <see cref="ExecuteRequest"/>; the server sends each
/// <see cref="CommandEvent"/> as a text message and closes after <c>exited</c>. Without <c>stdin</c> in the request,
/// stdin stays open: the client sends <c>{"stdin":"text"}</c>, <c>{"closeStdin":true}</c> or <c>{"signal":15}</c>.
/// A client that disconnects kills the command.
/// </summary>
internal static class TerminalApi
{
    public static IEndpointRouteBuilder MapTerminalApi(this IEndpointRouteBuilder app)
    {
        app.MapGroup("/v1/sessions/{id}").WithTags("Commands").RequireTenant()
            .MapGet("/commands/ws", RunOverWebSocketAsync)
            .WithSummary("Run a command over a WebSocket: events out, stdin and signals in.");
        app.MapGroup("/v1/sessions/{id}").WithTags("Code").RequireTenant()
            .MapGet("/code/ws", RunCodeOverWebSocketAsync)
            .WithSummary("Run a cell over a WebSocket: its events out (stdout, stderr, result, error, exited), {\"interrupt\":true} in.");
        app.MapWebAssets();
        return app;
    }

    private static async Task RunOverWebSocketAsync(HttpContext http, SessionRegistry sessions, CommandRunner commands, string id)
    {
        var session = sessions.Get(http.GetTenant(), id);
        if (!http.WebSockets.IsWebSocketRequest)
        {
            throw SandboxError.Invalid("This endpoint needs a WebSocket upgrade.");
        }
        using var socket = await http.WebSockets.AcceptWebSocketAsync();
        var aborted = http.RequestAborted;
        var first = await ReceiveTextAsync(socket, aborted);
        ExecuteRequest? request;
        try
        {
            request = first is null ? null : JsonSerializer.Deserialize(first, SandboxJsonContext.Default.ExecuteRequest);
        }
        catch (JsonException e)
        {
            await CloseWithErrorAsync(socket, "Malformed JSON: " + e.Message);
            return;
        }
        if (request is null)
        {
            await CloseWithErrorAsync(socket, "The first message must be an ExecuteRequest.");
            return;
        }

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        Task? inbound = null;
        CommandHandle? handle = null;
        try
        {
            handle = await commands.StartAsync(session, commands.ToRunRequest(request, pipeStdin: true), stop.Token);
            inbound = PumpInboundAsync(socket, handle, stop);
            // One message at a time: a client that stops reading holds back this command's output in the sandbox.
            await foreach (var e in handle.ReadEventsAsync(stop.Token))
            {
                await SendAsync(socket, e, stop.Token);
            }
            await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "exited", CancellationToken.None);
        }
        catch (Exception e) when (e is not OperationCanceledException and not WebSocketException && socket.State == WebSocketState.Open)
        {
            await SendAsync(socket, new CommandEvent { Type = CommandEventTypes.Error, Error = ProblemExceptionHandler.StreamMessage(e) }, CancellationToken.None);
            await socket.CloseOutputAsync(WebSocketCloseStatus.InternalServerError, "error", CancellationToken.None);
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException)
        {
            // The client left: disposing the handle kills the command.
        }
        finally
        {
            if (inbound is not null && socket.State is WebSocketState.CloseSent)
            {
                // Let the client answer our close: cancelling a pending receive aborts the socket, and the reset
                // it sends can discard events the client has not read yet.
                await Task.WhenAny(inbound, Task.Delay(TimeSpan.FromSeconds(2)));
            }
            await stop.CancelAsync();
            if (inbound is not null)
            {
                await inbound.ContinueWith(_ => { }, TaskScheduler.Default);
            }
            if (handle is not null)
            {
                await handle.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// A code cell over a WebSocket: the first text message is a <see cref="RunCodeRequest"/> (python or javascript), every
    /// event of the cell goes out as a text message as it comes, and the socket closes after <c>exited</c>. The client may
    /// send <c>{"interrupt":true}</c> meanwhile (the cell's context gets SIGINT and keeps its state); a client that leaves
    /// abandons the cell's output, like an SSE client.
    /// </summary>
    private static async Task RunCodeOverWebSocketAsync(HttpContext http, SessionRegistry sessions, CodeInterpreter interpreter, string id)
    {
        var session = sessions.Get(http.GetTenant(), id);
        if (!http.WebSockets.IsWebSocketRequest)
        {
            throw SandboxError.Invalid("This endpoint needs a WebSocket upgrade.");
        }
        using var socket = await http.WebSockets.AcceptWebSocketAsync();
        var first = await ReceiveTextAsync(socket, http.RequestAborted);
        RunCodeRequest? request;
        string language;
        try
        {
            request = first is null ? null : JsonSerializer.Deserialize(first, SandboxJsonContext.Default.RunCodeRequest);
            language = CodeInterpreter.NormalizeLanguage(request?.Language);
        }
        catch (Exception e) when (e is JsonException or SandboxError)
        {
            await CloseWithErrorAsync(socket, e is JsonException ? "Malformed JSON: " + e.Message : e.Message);
            return;
        }
        if (request is null || language == "bash")
        {
            await CloseWithErrorAsync(socket, request is null ? "The first message must be a RunCodeRequest." : "bash runs in the session's shell: use /commands/ws.");
            return;
        }

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted);
        var contextId = request.ContextId ?? CodeInterpreter.DefaultContextId(language);
        var inbound = PumpCodeInboundAsync(socket, session, interpreter, contextId, stop);
        try
        {
            await foreach (var e in interpreter.StreamAsync(session, request, stop.Token))
            {
                await SendAsync(socket, e, stop.Token);
            }
            await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "exited", CancellationToken.None);
        }
        catch (Exception e) when (e is not OperationCanceledException and not WebSocketException && socket.State == WebSocketState.Open)
        {
            await SendAsync(socket, new CommandEvent { Type = CommandEventTypes.Error, Error = ProblemExceptionHandler.StreamMessage(e) }, CancellationToken.None);
            await socket.CloseOutputAsync(WebSocketCloseStatus.InternalServerError, "error", CancellationToken.None);
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException)
        {
            // The client left.
        }
        finally
        {
            if (socket.State is WebSocketState.CloseSent)
            {
                // As for commands: let the client answer our close before the pending receive is cancelled.
                await Task.WhenAny(inbound, Task.Delay(TimeSpan.FromSeconds(2)));
            }
            await stop.CancelAsync();
            await inbound.ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    private static async Task PumpCodeInboundAsync(WebSocket socket, Session session, CodeInterpreter interpreter, string contextId, CancellationTokenSource stop)
    {
        try
        {
            while (!stop.IsCancellationRequested)
            {
                var text = await ReceiveTextAsync(socket, stop.Token);
                if (text is null)
                {
                    await stop.CancelAsync();
                    return;
                }
                if (JsonSerializer.Deserialize(text, TerminalJsonContext.Default.CodeInput)?.Interrupt == true)
                {
                    await interpreter.InterruptAsync(session, contextId, stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or JsonException or SandboxError)
        {
        }
    }

    private static Task SendAsync(WebSocket socket, CommandEvent e, CancellationToken cancellationToken) =>
        socket.SendAsync(JsonSerializer.SerializeToUtf8Bytes(e, SandboxJsonContext.Default.CommandEvent), WebSocketMessageType.Text, true, cancellationToken);

    private static async Task PumpInboundAsync(WebSocket socket, CommandHandle handle, CancellationTokenSource stop)
    {
        try
        {
            while (!stop.IsCancellationRequested)
            {
                var text = await ReceiveTextAsync(socket, stop.Token);
                if (text is null)
                {
                    // Client closed or went away: end the command.
                    await stop.CancelAsync();
                    return;
                }
                var message = JsonSerializer.Deserialize(text, TerminalJsonContext.Default.TerminalInput);
                if (message?.Stdin is { Length: > 0 } stdin)
                {
                    await handle.WriteStdinAsync(Encoding.UTF8.GetBytes(stdin), stop.Token);
                }
                if (message?.CloseStdin == true)
                {
                    await handle.CloseStdinAsync(stop.Token);
                }
                if (message?.Signal is int signal and > 0 and < 65)
                {
                    await handle.SignalAsync(signal, stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or JsonException or SandboxError)
        {
        }
    }

    /// <summary>One whole text message (up to 1 MiB), or null when the socket closed.</summary>
    private static async Task<string?> ReceiveTextAsync(WebSocket socket, CancellationToken cancellationToken)
    {
        var buffer = new byte[16 * 1024];
        using var message = new MemoryStream();
        while (true)
        {
            var result = await socket.ReceiveAsync(buffer, cancellationToken);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }
            message.Write(buffer, 0, result.Count);
            if (message.Length > 1 << 20)
            {
                await socket.CloseAsync(WebSocketCloseStatus.MessageTooBig, "message too big", cancellationToken);
                return null;
            }
            if (result.EndOfMessage)
            {
                return Encoding.UTF8.GetString(message.GetBuffer(), 0, (int)message.Length);
            }
        }
    }

    private static async Task CloseWithErrorAsync(WebSocket socket, string error)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(new CommandEvent { Type = CommandEventTypes.Error, Error = error }, SandboxJsonContext.Default.CommandEvent);
        await socket.SendAsync(bytes, WebSocketMessageType.Text, true, CancellationToken.None);
        await socket.CloseAsync(WebSocketCloseStatus.InvalidPayloadData, "bad request", CancellationToken.None);
    }
}

/// <summary>A client message after the first on a command WebSocket.</summary>
internal sealed record TerminalInput
{
    [JsonPropertyName("stdin")] public string? Stdin { get; init; }
    [JsonPropertyName("closeStdin")] public bool? CloseStdin { get; init; }
    [JsonPropertyName("signal")] public int? Signal { get; init; }
}

/// <summary>A client message after the first on a code WebSocket.</summary>
internal sealed record CodeInput
{
    [JsonPropertyName("interrupt")] public bool? Interrupt { get; init; }
}

[JsonSerializable(typeof(TerminalInput))]
[JsonSerializable(typeof(CodeInput))]
internal sealed partial class TerminalJsonContext : JsonSerializerContext;
