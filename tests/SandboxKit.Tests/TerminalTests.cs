using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Terminals on real pseudo-terminals: the client SDK, the raw WebSocket, replay, recording, closing.</summary>
[TestFixture]
public sealed class TerminalTests : SessionFixture
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    private SandboxClient Client => _client ??= new SandboxClient(Host.BaseAddress);
    private SandboxClient? _client;

    [OneTimeTearDown]
    public void DisposeClient() => _client?.Dispose();

    [Test]
    public async Task A_terminal_is_a_real_tty_whose_size_follows_resizes()
    {
        var session = await Client.AttachSessionAsync(SessionId);
        await using var terminal = await session.OpenTerminalAsync(cols: 80, rows: 24);
        using var timeout = new CancellationTokenSource(Wait);
        await terminal.WriteAsync("tty; stty size; echo \"term=$TERM user=$(id -u) cwd=$PWD\"\r", timeout.Token);
        var first = await terminal.ReadUntilAsync(t => t.Contains("cwd=/workspace", StringComparison.Ordinal), timeout.Token);
        Assert.That(first, Does.Contain("/dev/pts/"));
        Assert.That(first, Does.Contain("24 80"));
        Assert.That(first, Does.Contain("term=xterm-256color user=1000"));

        var resized = await terminal.ResizeAsync(120, 40, timeout.Token);
        Assert.That((resized.Cols, resized.Rows), Is.EqualTo((120, 40)));
        await terminal.WriteAsync("stty size\r", timeout.Token);
        Assert.That(await terminal.ReadUntilAsync(t => t.Contains("40 120", StringComparison.Ordinal), timeout.Token), Does.Contain("40 120"));

        // An interactive program that needs a TTY answers at once (without one, python3 would read stdin to its end).
        await terminal.WriteAsync("python3 -q\r", timeout.Token);
        await terminal.ReadUntilAsync(t => t.Contains(">>> ", StringComparison.Ordinal), timeout.Token);
        await terminal.WriteAsync("print(6 * 7)\r", timeout.Token);
        Assert.That(await terminal.ReadUntilAsync(t => t.Contains("42", StringComparison.Ordinal), timeout.Token), Does.Contain("42"));
        await terminal.WriteAsync("exit()\r", timeout.Token);
    }

    [Test]
    public async Task Over_the_raw_websocket_resize_works_and_a_reconnect_with_since_replays_exactly_what_was_missed()
    {
        var terminal = await CreateAsync(80, 24);
        long offset;
        using (var socket = await ConnectAsync(terminal.Id, since: 0))
        {
            var attached = await ReadMessageAsync(socket);
            Assert.That(attached.Type, Is.EqualTo(TerminalMessageTypes.Attached));
            Assert.That(attached.Offset, Is.Zero);
            await socket.SendAsync(JsonSerializer.SerializeToUtf8Bytes(new TerminalMessage { Type = TerminalMessageTypes.Resize, Cols = 91, Rows = 33 },
                SandboxJsonContext.Default.TerminalMessage), WebSocketMessageType.Text, true, CancellationToken.None);
            await Task.Delay(200);
            // Computed markers: the output is "before-5", which the tty's echo of the typed line does not contain.
            await socket.SendAsync("stty size; echo before-$((2+3))\r"u8.ToArray(), WebSocketMessageType.Binary, true, CancellationToken.None);
            var (text, received) = await ReadOutputUntilAsync(socket, t => t.Contains("before-5\r\n", StringComparison.Ordinal) && t.Contains("33 91", StringComparison.Ordinal));
            Assert.That(text, Does.Contain("33 91"));
            offset = attached.Offset!.Value + received;
            // Typed, then gone before any of it comes back: the echo and the output happen while the client is away.
            await socket.SendAsync("sleep 1; echo away-$((1+1))\r"u8.ToArray(), WebSocketMessageType.Binary, true, CancellationToken.None);
            socket.Abort();
        }
        await Task.Delay(2000);
        var info = await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}/terminals/{terminal.Id}", SandboxJsonContext.Default.TerminalInfo);
        Assert.That(info!.NextOffset, Is.GreaterThan(offset));

        using (var again = await ConnectAsync(terminal.Id, since: offset))
        {
            var attached = await ReadMessageAsync(again);
            Assert.That(attached.Offset, Is.EqualTo(offset));
            Assert.That(attached.Dropped, Is.False);
            var (replayed, _) = await ReadOutputUntilAsync(again, t => t.Contains("away-2\r\n", StringComparison.Ordinal));
            Assert.That(replayed, Does.Not.Contain("before-5"), "nothing from before the offset is sent again");
            Assert.That(replayed, Does.Contain("echo away-$((1+1))"), "the echo of what was typed while away is replayed");
        }
        await CloseAsync(terminal.Id);
    }

    [Test]
    public async Task Two_terminals_in_one_session_are_separate_shells_and_both_are_listed()
    {
        var session = await Client.AttachSessionAsync(SessionId);
        await using var one = await session.OpenTerminalAsync();
        await using var two = await session.OpenTerminalAsync(100, 30);
        using var timeout = new CancellationTokenSource(Wait);
        await one.WriteAsync("export ONLY_HERE=one; echo set-$ONLY_HERE\r", timeout.Token);
        await one.ReadUntilAsync(t => t.Contains("set-one", StringComparison.Ordinal), timeout.Token);
        await two.WriteAsync("echo \"seen=[$ONLY_HERE]\"\r", timeout.Token);
        Assert.That(await two.ReadUntilAsync(t => t.Contains("seen=[]", StringComparison.Ordinal), timeout.Token), Does.Contain("seen=[]"));
        var listed = await session.ListTerminalsAsync(timeout.Token);
        Assert.That(listed.Select(t => t.Id), Is.SupersetOf(new[] { one.Id, two.Id }));
        Assert.That(listed.Single(t => t.Id == two.Id).Cols, Is.EqualTo(100));
        var processes = await session.ListProcessesAsync(timeout.Token);
        Assert.That(processes.Select(p => p.Id), Has.None.StartWith("term-"), "terminals are not background processes");
    }

    [Test]
    public async Task Closing_a_terminal_kills_its_whole_process_tree()
    {
        var session = await Client.AttachSessionAsync(SessionId);
        var terminal = await session.OpenTerminalAsync();
        using var timeout = new CancellationTokenSource(Wait);
        await terminal.WriteAsync("(sleep 1000; echo never) & nohup sleep 2000 >/dev/null 2>&1 & echo \"pids=$(jobs -p | tr '\\n' ' ')\"\r", timeout.Token);
        var text = await terminal.ReadUntilAsync(t => System.Text.RegularExpressions.Regex.IsMatch(t, @"pids=\d+ \d+ "), timeout.Token);
        var pids = System.Text.RegularExpressions.Regex.Match(text, @"pids=(\d+) (\d+) ").Groups.Values.Skip(1).Select(g => g.Value).ToArray();
        await terminal.DisposeAsync();
        Assert.That((await Host.Http.GetAsync($"/v1/sessions/{SessionId}/terminals/{terminal.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        var alive = await Host.ExecuteAsync(SessionId, $"for p in {string.Join(' ', pids)}; do kill -0 $p 2>/dev/null && echo alive-$p; done; pgrep -u 1000 -x sleep || true");
        Assert.That(alive.Stdout, Is.Empty, "no process of the terminal survives it, nohup'd or not");
    }

    [Test]
    public async Task The_recording_is_valid_asciicast_v2_with_what_was_typed_and_printed()
    {
        var session = await Client.AttachSessionAsync(SessionId);
        await using var terminal = await session.OpenTerminalAsync(90, 25);
        using var timeout = new CancellationTokenSource(Wait);
        await terminal.WriteAsync("echo recorded-$((40+2))\r", timeout.Token);
        await terminal.ReadUntilAsync(t => t.Contains("recorded-42", StringComparison.Ordinal), timeout.Token);
        await terminal.ResizeAsync(100, 30, timeout.Token);
        var cast = await terminal.GetRecordingAsync(timeout.Token);

        var lines = cast.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var header = JsonDocument.Parse(lines[0]).RootElement;
        Assert.That(header.GetProperty("version").GetInt32(), Is.EqualTo(2));
        Assert.That(header.GetProperty("width").GetInt32(), Is.EqualTo(90));
        Assert.That(header.GetProperty("height").GetInt32(), Is.EqualTo(25));
        var last = 0.0;
        var output = new StringBuilder();
        var resized = false;
        foreach (var line in lines.Skip(1))
        {
            var e = JsonDocument.Parse(line).RootElement;
            Assert.That(e.GetArrayLength(), Is.EqualTo(3), line);
            var t = e[0].GetDouble();
            Assert.That(t, Is.GreaterThanOrEqualTo(last), "event times never go back");
            last = t;
            switch (e[1].GetString())
            {
                case "o":
                    output.Append(e[2].GetString());
                    break;
                case "r":
                    resized |= e[2].GetString() == "100x30";
                    break;
                default:
                    Assert.Fail("unexpected event type in " + line);
                    break;
            }
        }
        Assert.That(output.ToString(), Does.Contain("echo recorded-$((40+2))"), "the typed line (echoed by the tty)");
        Assert.That(output.ToString(), Does.Contain("recorded-42"), "the printed output");
        Assert.That(resized, Is.True, "the resize is an event");
    }

    [Test]
    public async Task Bad_terminal_requests_are_clear_problems()
    {
        var tooBig = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/terminals", new CreateTerminalRequest { Cols = 5000, Rows = 10 }, SandboxJsonContext.Default.CreateTerminalRequest);
        Assert.That(tooBig.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        var missing = await Host.Http.GetAsync($"/v1/sessions/{SessionId}/terminals/term-000000000000");
        Assert.That(missing.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await ServerHost.ProblemAsync(missing)).GetProperty("code").GetString(), Is.EqualTo("not_found"));
        var notATerminal = await Host.Http.GetAsync($"/v1/sessions/{SessionId}/terminals/../processes");
        Assert.That(notATerminal.StatusCode, Is.Not.EqualTo(HttpStatusCode.InternalServerError));
        using var socket = new ClientWebSocket();
        var uri = new UriBuilder(Host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{SessionId}/terminals/term-000000000000/ws" }.Uri;
        var refused = await Assert.ThrowsAsync<WebSocketException>(() => socket.ConnectAsync(uri, CancellationToken.None));
        Assert.That(refused!.Message, Does.Contain("404"));
    }

    private async Task<TerminalInfo> CreateAsync(int cols, int rows)
    {
        var response = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/terminals", new CreateTerminalRequest { Cols = cols, Rows = rows }, SandboxJsonContext.Default.CreateTerminalRequest);
        await ServerHost.EnsureAsync(response, HttpStatusCode.Created);
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.TerminalInfo))!;
    }

    private async Task CloseAsync(string terminalId) =>
        Assert.That((await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/terminals/{terminalId}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));

    private async Task<ClientWebSocket> ConnectAsync(string terminalId, long since)
    {
        var socket = new ClientWebSocket();
        var uri = new UriBuilder(Host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{SessionId}/terminals/{terminalId}/ws", Query = $"since={since}" }.Uri;
        await socket.ConnectAsync(uri, CancellationToken.None);
        return socket;
    }

    private static async Task<TerminalMessage> ReadMessageAsync(ClientWebSocket socket)
    {
        var buffer = new byte[4096];
        using var timeout = new CancellationTokenSource(Wait);
        var result = await socket.ReceiveAsync(buffer, timeout.Token);
        Assert.That(result.MessageType, Is.EqualTo(WebSocketMessageType.Text));
        return JsonSerializer.Deserialize(buffer.AsSpan(0, result.Count), SandboxJsonContext.Default.TerminalMessage)!;
    }

    /// <summary>Binary output until <paramref name="done"/> holds for all of it; returns the text and the bytes received.</summary>
    private static async Task<(string Text, long Bytes)> ReadOutputUntilAsync(ClientWebSocket socket, Func<string, bool> done)
    {
        var buffer = new byte[64 * 1024];
        var bytes = new List<byte>();
        using var timeout = new CancellationTokenSource(Wait);
        while (!done(Encoding.UTF8.GetString(bytes.ToArray())))
        {
            WebSocketReceiveResult result;
            try
            {
                result = await socket.ReceiveAsync(buffer, timeout.Token);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail("Output did not arrive in time; so far: " + Encoding.UTF8.GetString(bytes.ToArray()));
                throw;
            }
            if (result.MessageType == WebSocketMessageType.Binary)
            {
                bytes.AddRange(buffer.AsSpan(0, result.Count).ToArray());
            }
            else if (result.MessageType == WebSocketMessageType.Close)
            {
                break;
            }
        }
        return (Encoding.UTF8.GetString(bytes.ToArray()), bytes.Count);
    }
}

/// <summary>With API keys a browser attaches to a terminal with a single-use ticket, never with the key in a URL.</summary>
[TestFixture]
public sealed class TerminalTicketTests
{
    [Test]
    public async Task A_ticket_opens_one_websocket_to_one_terminal_once()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Key"] = "ticket-key",
            ["Auth:ApiKeys:0:Tenant"] = "alpha",
        });
        using var http = new HttpClient { BaseAddress = host.BaseAddress };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "ticket-key");
        var session = (await (await http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest))
            .Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!;
        var terminal = (await (await http.PostAsJsonAsync($"/v1/sessions/{session.Id}/terminals", new CreateTerminalRequest(), SandboxJsonContext.Default.CreateTerminalRequest))
            .Content.ReadFromJsonAsync(SandboxJsonContext.Default.TerminalInfo))!;
        var path = $"/v1/sessions/{session.Id}/terminals/{terminal.Id}/ws";

        Assert.That((await host.Http.PostAsync($"/v1/sessions/{session.Id}/terminals/{terminal.Id}/tickets", null)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized),
            "a ticket needs the key");
        var ticket = (await (await http.PostAsync($"/v1/sessions/{session.Id}/terminals/{terminal.Id}/tickets", null))
            .Content.ReadFromJsonAsync(SandboxJsonContext.Default.WebSocketTicket))!;
        Assert.That(ticket.ExpiresAt - DateTimeOffset.UtcNow, Is.LessThanOrEqualTo(TimeSpan.FromSeconds(61)));

        using (var socket = new ClientWebSocket())
        {
            await socket.ConnectAsync(new UriBuilder(host.BaseAddress) { Scheme = "ws", Path = path, Query = "ticket=" + ticket.Ticket }.Uri, CancellationToken.None);
            Assert.That(socket.State, Is.EqualTo(WebSocketState.Open));
            await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None);
        }
        using (var replay = new ClientWebSocket())
        {
            var refused = await Assert.ThrowsAsync<WebSocketException>(() =>
                replay.ConnectAsync(new UriBuilder(host.BaseAddress) { Scheme = "ws", Path = path, Query = "ticket=" + ticket.Ticket }.Uri, CancellationToken.None));
            Assert.That(refused!.Message, Does.Contain("401"), "a ticket works once");
        }
        var other = (await (await http.PostAsync($"/v1/sessions/{session.Id}/terminals/{terminal.Id}/tickets", null))
            .Content.ReadFromJsonAsync(SandboxJsonContext.Default.WebSocketTicket))!;
        using (var elsewhere = new ClientWebSocket())
        {
            var refused = await Assert.ThrowsAsync<WebSocketException>(() =>
                elsewhere.ConnectAsync(new UriBuilder(host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{session.Id}/commands/ws", Query = "ticket=" + other.Ticket }.Uri, CancellationToken.None));
            Assert.That(refused!.Message, Does.Contain("401"), "a ticket is for its own path only");
        }
        await http.DeleteAsync($"/v1/sessions/{session.Id}");
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }
}
