using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Commands over WebSocket: events out, stdin and signals in; and the web terminal page that uses it.</summary>
[TestFixture]
public sealed class WebSocketTests : SessionFixture
{

    private async Task<ClientWebSocket> ConnectAsync()
    {
        var socket = new ClientWebSocket();
        var uri = new UriBuilder(Host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{SessionId}/commands/ws" }.Uri;
        await socket.ConnectAsync(uri, CancellationToken.None);
        return socket;
    }

    private static Task SendAsync(ClientWebSocket socket, string json) =>
        socket.SendAsync(Encoding.UTF8.GetBytes(json), WebSocketMessageType.Text, true, CancellationToken.None);

    private static async Task<List<CommandEvent>> ReadUntilClosedAsync(ClientWebSocket socket)
    {
        var events = new List<CommandEvent>();
        var buffer = new byte[64 * 1024];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (true)
        {
            var result = await socket.ReceiveAsync(buffer, timeout.Token);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
                return events;
            }
            events.Add(JsonSerializer.Deserialize(buffer.AsSpan(0, result.Count), SandboxJsonContext.Default.CommandEvent)!);
        }
    }

    [Test]
    public async Task A_command_reads_stdin_sent_over_the_socket_and_reports_its_events()
    {
        using var socket = await ConnectAsync();
        await SendAsync(socket, "{\"command\":\"read a; echo got $a; echo oops >&2; exit 3\"}");
        await SendAsync(socket, "{\"stdin\":\"hello\\n\"}");
        var events = await ReadUntilClosedAsync(socket);
        Assert.That(events[0].Type, Is.EqualTo("started"));
        Assert.That(string.Concat(events.Where(e => e.Type == "stdout").Select(e => e.Data)), Is.EqualTo("got hello\n"));
        Assert.That(string.Concat(events.Where(e => e.Type == "stderr").Select(e => e.Data)), Is.EqualTo("oops\n"));
        Assert.That(events[^1].Type, Is.EqualTo("exited"));
        Assert.That(events[^1].Result!.ExitCode, Is.EqualTo(3));
    }

    [Test]
    public async Task A_signal_sent_over_the_socket_ends_the_command()
    {
        using var socket = await ConnectAsync();
        await SendAsync(socket, "{\"command\":\"echo waiting; sleep 300\"}");
        var buffer = new byte[4096];
        await socket.ReceiveAsync(buffer, CancellationToken.None);
        await SendAsync(socket, "{\"signal\":15}");
        var events = await ReadUntilClosedAsync(socket);
        Assert.That(events[^1].Result!.ExitCode, Is.EqualTo(143));
    }

    [Test]
    public async Task Closing_the_socket_mid_command_kills_it_and_theSessionId_stays_usable()
    {
        using (var socket = await ConnectAsync())
        {
            await SendAsync(socket, "{\"command\":\"sleep 300; echo never\"}");
            var buffer = new byte[4096];
            await socket.ReceiveAsync(buffer, CancellationToken.None);
            socket.Abort();
        }
        await Task.Delay(500);
        var ps = await Host.ExecuteAsync(SessionId, "pgrep -c -x sleep || true");
        Assert.That(ps.Stdout.Trim(), Is.EqualTo("0"));
    }
}
