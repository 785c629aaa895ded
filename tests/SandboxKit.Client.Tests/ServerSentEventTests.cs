using System.Text;
using SandboxKit.Client.Internal;
using SandboxKit.Contracts;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;

namespace SandboxKit.Client.Tests;

public class ServerSentEventTests : WireMockTestBase
{
    // Multi-byte UTF-8 (2, 3 and 4 bytes), CRLF and LF and lone CR line ends, comments, a keepalive, a multi-line
    // data field, a field without a space after the colon, an unknown field and a retry field, and a leading BOM.
    private const string Frames =
        "\uFEFF: connected\n" +
        "\n" +
        "event: started\r\ndata: {\"type\":\"started\",\"pid\":41}\r\n\r\n" +
        ": keepalive comment\n" +
        "event: stdout\ndata:{\"type\":\"stdout\",\"data\":\"héllo wörld — 世界 🎉\\n\"}\n\n" +
        "event: keepalive\rdata: {\"type\":\"keepalive\"}\r\r" +
        "retry: 1000\nfoo: bar\nid: 7\nevent: stderr\ndata: {\"type\":\"stderr\",\n" +
        "data: \"data\":\"oops ✗\"}\n\n" +
        "event: exited\ndata: {\"type\":\"exited\",\"result\":{\"exitCode\":3,\"stdout\":\"héllo\",\"stderr\":\"oops\",\"timedOut\":false,\"oomKilled\":false,\"truncated\":false,\"stdoutBytes\":6,\"stderrBytes\":4,\"durationMs\":5}}\n\n";

    private static async Task<List<ServerSentEvent>> ParseAsync(Stream stream)
    {
        var events = new List<ServerSentEvent>();
        await foreach (var e in ServerSentEventReader.ReadAsync(stream))
        {
            events.Add(e);
        }

        return events;
    }

    [Test]
    public async Task Parser_HandlesEventsSplitAtArbitraryByteBoundaries([Range(1, 12)] int seed)
    {
        var bytes = Encoding.UTF8.GetBytes(Frames);
        var stream = new TricklingStream(bytes, seed);

        var events = await ParseAsync(stream);

        Assert.That(stream.Reads, Is.GreaterThan(bytes.Length / 3), "the stream really trickled");
        Assert.That(events.Select(e => e.EventType), Is.EqualTo(new[] { "started", "stdout", "keepalive", "stderr", "exited" }));
        Assert.Multiple(() =>
        {
            Assert.That(events[0].Data, Is.EqualTo("{\"type\":\"started\",\"pid\":41}"));
            Assert.That(events[1].Data, Is.EqualTo("{\"type\":\"stdout\",\"data\":\"héllo wörld — 世界 🎉\\n\"}"));
            Assert.That(events[3].Data, Is.EqualTo("{\"type\":\"stderr\",\n\"data\":\"oops ✗\"}"), "data lines join with \\n");
            Assert.That(events[3].Id, Is.EqualTo("7"));
        });

        var stdout = System.Text.Json.JsonSerializer.Deserialize(events[1].Data, SandboxJsonContext.Default.CommandEvent);
        Assert.That(stdout!.Data, Is.EqualTo("héllo wörld — 世界 🎉\n"));
    }

    [Test]
    public async Task Parser_DispatchesAPendingEventAtEndOfStream_AndIgnoresCommentsOnly()
    {
        Assert.That(await ParseAsync(new MemoryStream(": only a comment\n\n: another\n"u8.ToArray())), Is.Empty);

        var events = await ParseAsync(new MemoryStream("data: last"u8.ToArray()));

        Assert.That(events, Has.Count.EqualTo(1));
        Assert.That(events[0].EventType, Is.EqualTo("message"));
        Assert.That(events[0].Data, Is.EqualTo("last"));
    }

    [Test]
    public async Task StreamAsync_YieldsEventsUpToExited_AndSkipsKeepalives()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/commands/stream").UsingPost())
            .RespondWith(Response.Create().WithStatusCode(200).WithHeader("Content-Type", "text/event-stream").WithBody(Frames));

        var events = new List<CommandEvent>();
        await foreach (var e in session.StreamAsync("echo hi", new ExecuteOptions { MergeStderr = true }))
        {
            events.Add(e);
        }

        Assert.That(events.Select(e => e.Type), Is.EqualTo(new[] { "started", "stdout", "stderr", "exited" }));
        Assert.That(events[0].Pid, Is.EqualTo(41));
        Assert.That(events[1].Data, Is.EqualTo("héllo wörld — 世界 🎉\n"));
        var result = new CommandResult(events[3].Result!);
        Assert.That(result.ExitCode, Is.EqualTo(3));
        Assert.That(result.Duration, Is.EqualTo(TimeSpan.FromMilliseconds(5)));

        var request = Requests("POST", "/v1/sessions/s1/commands/stream").Single().RequestMessage;
        Assert.That(Header(request, "Accept"), Is.EqualTo("text/event-stream"));
        Assert.That(Header(request, "Idempotency-Key"), Is.Not.Null.And.Not.Empty);
        Assert.That(request.Body, Does.Contain("\"command\":\"echo hi\"").And.Contain("\"mergeStderr\":true"));
    }

    [Test]
    public async Task StreamAsync_ErrorEvent_Throws()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/commands/stream").UsingPost())
            .RespondWith(Response.Create().WithStatusCode(200).WithHeader("Content-Type", "text/event-stream").WithBody(
                "event: started\ndata: {\"type\":\"started\",\"pid\":1}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":\"engine lost\"}\n\n"));

        var seen = new List<string>();
        var ex = await Assert.ThrowsAsync<SandboxException>(async () =>
        {
            await foreach (var e in session.StreamAsync("sleep 1"))
            {
                seen.Add(e.Type);
            }
        });

        Assert.That(seen, Is.EqualTo(new[] { "started" }));
        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.StreamError));
        Assert.That(ex.Detail, Is.EqualTo("engine lost"));
    }

    [Test]
    public async Task StreamAsync_EndingBeforeExited_Throws()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/commands/stream").UsingPost())
            .RespondWith(Response.Create().WithStatusCode(200).WithHeader("Content-Type", "text/event-stream").WithBody(
                "event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"partial\"}\n\n"));

        var ex = await Assert.ThrowsAsync<SandboxException>(async () =>
        {
            await foreach (var unused in session.StreamAsync("yes"))
            {
            }
        });

        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.StreamError));
    }

    [Test]
    public async Task StreamAsync_FailedStart_MapsProblemDetails()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/commands/stream").UsingPost())
            .RespondWith(Problem(404, "session_not_found"));

        await Assert.ThrowsAsync<SessionNotFoundException>(async () =>
        {
            await foreach (var unused in session.StreamAsync("ls"))
            {
            }
        });
    }
}

/// <summary>A real slow stream (HttpListener, chunked), which WireMock cannot produce.</summary>
public class SlowStreamTests
{
    [Test]
    public async Task StreamAsync_OutlivesTheAttemptAndTotalTimeouts_OnceEventsFlow()
    {
        var port = GetFreePort();
        using var listener = new System.Net.HttpListener();
        listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        listener.Start();
        var serve = Task.Run(async () =>
        {
            var context = await listener.GetContextAsync();
            context.Response.StatusCode = 200;
            context.Response.ContentType = "text/event-stream";
            context.Response.SendChunked = true;
            var output = context.Response.OutputStream;
            async Task Send(string frame, int delayMs)
            {
                await Task.Delay(delayMs);
                var bytes = Encoding.UTF8.GetBytes(frame);
                await output.WriteAsync(bytes);
                await output.FlushAsync();
            }

            await Send("event: started\ndata: {\"type\":\"started\",\"pid\":1}\n\n", 0);
            for (var i = 0; i < 4; i++)
            {
                await Send(": keepalive\n\n", 300);
                await Send($"event: stdout\ndata: {{\"type\":\"stdout\",\"data\":\"tick {i}\\n\"}}\n\n", 0);
            }

            await Send("event: exited\ndata: {\"type\":\"exited\",\"result\":{\"exitCode\":0,\"stdout\":\"\",\"stderr\":\"\",\"timedOut\":false,\"oomKilled\":false,\"truncated\":false,\"stdoutBytes\":28,\"stderrBytes\":0,\"durationMs\":1200}}\n\n", 300);
            context.Response.Close();
        });

        var options = new SandboxClientOptions
        {
            BaseAddress = new Uri($"http://127.0.0.1:{port}"),
            AttemptTimeout = TimeSpan.FromMilliseconds(400),
            TotalTimeout = TimeSpan.FromMilliseconds(500),
        };
        using var connection = new SandboxConnection(options, loggerFactory: null);
        var session = new SandboxSession(connection, WireMockTestBase.Session("s1"));
        session.Detach();
        var watch = System.Diagnostics.Stopwatch.StartNew();

        var types = new List<string>();
        await foreach (var e in session.StreamAsync("for i in 0 1 2 3; do sleep 0.3; echo tick $i; done"))
        {
            types.Add(e.Type == "stdout" ? e.Data!.Trim() : e.Type);
        }

        await serve;
        Assert.That(types, Is.EqualTo(new[] { "started", "tick 0", "tick 1", "tick 2", "tick 3", "exited" }));
        Assert.That(watch.Elapsed, Is.GreaterThan(TimeSpan.FromMilliseconds(1200)), "the stream really outlived the 500 ms total timeout");
    }

    private static int GetFreePort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        var port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }
}
