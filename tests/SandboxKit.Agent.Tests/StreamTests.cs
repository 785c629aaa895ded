using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>What a byte stream channel (N or n) delivered, up to its final frame.</summary>
public sealed class StreamOutcome
{
    public MemoryStream Bytes { get; } = new();
    public bool HalfClosed { get; set; }
    public int HalfCloseAt { get; set; } = -1;
    public StreamResult? Result { get; set; }
    public ErrorReply? Error { get; set; }
    public string Text => Encoding.UTF8.GetString(Bytes.ToArray());
}

/// <summary>Connections into the sandbox (N): a TCP stream to its own loopback, both ways within credit.</summary>
public sealed class StreamTests : AgentTest
{
    internal const string EchoServer =
        "import socket\n" +
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 9000)); s.listen()\n" +
        "print('listening', flush=True)\n" +
        "while True:\n" +
        "    c, _ = s.accept()\n" +
        "    while True:\n" +
        "        try:\n" +
        "            d = c.recv(65536)\n" +
        "        except ConnectionResetError:\n" +
        "            print('reset', flush=True); break\n" +
        "        if not d: break\n" +
        "        c.sendall(d)\n" +
        "    try:\n" +
        "        c.sendall(b'bye\\n'); c.close()\n" +
        "    except OSError:\n" +
        "        pass\n";

    /// <summary>Starts a job and waits for a line it prints (a server that listens).</summary>
    internal static void StartServer(AgentClient client, string id, string code, string ready = "listening")
    {
        var started = client.Run(new RunRequest { Code = code, Language = "python", Detach = true, JobId = id });
        Assert.That(started.Error, Is.Null, started.ToString());
        Assert.That(Sandbox.WaitUntil(() => client.Job(new JobRequest { Op = "read", Id = id }).Out.Contains(ready, StringComparison.Ordinal), 20), Is.True,
            client.Job(new JobRequest { Op = "read", Id = id }).ToString());
    }

    internal static uint Open(AgentClient client, int port, string? host = null)
    {
        var channel = client.NewChannel();
        client.SendJson(FrameType.Connect, channel, new ConnectRequest { Host = host, Port = port });
        var first = client.Next(channel);
        Assert.That((char)first.Type, Is.EqualTo('s'), Encoding.UTF8.GetString(first.Payload.Span));
        Assert.That(JsonSerializer.Deserialize(first.Payload.Span, ProtocolJsonContext.Default.StartedEvent)!.Pid, Is.Zero);
        return channel;
    }

    /// <summary>Reads a stream's frames until <paramref name="until"/> holds (or its final frame).</summary>
    internal static StreamOutcome Read(AgentClient client, uint channel, StreamOutcome? into = null, Func<StreamOutcome, bool>? until = null)
    {
        var outcome = into ?? new StreamOutcome();
        while (outcome.Result is null && outcome.Error is null && !(until?.Invoke(outcome) ?? false))
        {
            var frame = client.Next(channel);
            switch (frame.Type)
            {
                case FrameType.Stdout:
                    outcome.Bytes.Write(frame.Payload.Span);
                    break;
                case FrameType.HalfClose:
                    Assert.That(outcome.HalfClosed, Is.False, "a second z");
                    outcome.HalfClosed = true;
                    outcome.HalfCloseAt = (int)outcome.Bytes.Length;
                    break;
                case FrameType.Result:
                    outcome.Result = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.StreamResult);
                    break;
                case FrameType.Error:
                    outcome.Error = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.ErrorReply);
                    break;
                default:
                    Assert.Fail($"unexpected {(char)frame.Type} on a stream");
                    break;
            }
        }
        return outcome;
    }

    [Test]
    public void AnHttpGetReachesAServerInTheSandbox()
    {
        AssertRan(A.Run("mkdir -p site && echo 'hello from the sandbox' > site/index.html"));
        StartServer(A, "http", "import http.server, functools, sys\n" +
            "handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory='site')\n" +
            "server = http.server.ThreadingHTTPServer(('127.0.0.1', 8000), handler)\n" +
            "print('listening', flush=True)\nserver.serve_forever()");
        var channel = Open(A, 8000);
        var request = "GET /index.html HTTP/1.0\r\nHost: preview\r\n\r\n"u8.ToArray();
        A.SendData(channel, request);
        A.Send(FrameType.Close, channel);
        var response = Read(A, channel);
        Assert.That(response.Text, Does.StartWith("HTTP/1.0 200").And.EndWith("\r\n\r\nhello from the sandbox\n"));
        Assert.That(response.HalfClosed, Is.True);
        Assert.That(response.HalfCloseAt, Is.EqualTo(response.Bytes.Length), "z after the last byte");
        Assert.That(response.Result!.BytesIn, Is.EqualTo(request.Length));
        Assert.That(response.Result.BytesOut, Is.EqualTo(response.Bytes.Length));
    }

    [Test]
    public void BothWaysWithHalfCloseResetAndRefusal()
    {
        StartServer(A, "echo", EchoServer);
        // Interactive: each message comes back before the next is sent, like a WebSocket.
        var channel = Open(A, 9000);
        var received = new StreamOutcome();
        foreach (var message in new[] { "ping\n", "second message\n" })
        {
            A.SendData(channel, Encoding.UTF8.GetBytes(message));
            var target = received.Bytes.Length + message.Length;
            Read(A, channel, received, o => o.Bytes.Length >= target);
        }
        Assert.That(received.Text, Is.EqualTo("ping\nsecond message\n"));
        // Our half-close: the server reads EOF, still writes, then closes its side.
        A.Send(FrameType.Close, channel);
        Read(A, channel, received);
        Assert.That(received.Text, Is.EqualTo("ping\nsecond message\nbye\n"));
        Assert.That((received.HalfClosed, received.Result!.BytesIn, received.Result.BytesOut), Is.EqualTo((true, 20L, 24L)));

        // K resets: the server sees ECONNRESET.
        var reset = Open(A, 9000);
        A.SendData(reset, "x"u8);
        Read(A, reset, new StreamOutcome(), o => o.Bytes.Length >= 1);
        A.Send(FrameType.Kill, reset);
        Assert.That(Read(A, reset).Result, Is.Not.Null);
        Assert.That(Sandbox.WaitUntil(() => A.Job(new JobRequest { Op = "read", Id = "echo" }).Out.Contains("reset", StringComparison.Ordinal), 10), Is.True);

        foreach (var (host, port) in new[] { ((string?)null, 1), ("::1", 9000) })
        {
            var refused = A.NewChannel();
            A.SendJson(FrameType.Connect, refused, new ConnectRequest { Host = host, Port = port });
            Assert.That(Read(A, refused).Error?.Code, Is.EqualTo(ErrorCodes.Refused), $"{host}:{port}");
        }
        foreach (var json in new[] { """{"port":0}""", """{"port":80,"host":"10.0.0.1"}""", """{"host":"127.0.0.1"}""" })
        {
            var bad = A.NewChannel();
            A.SendText(FrameType.Connect, bad, json);
            Assert.That(Read(A, bad).Error?.Code, Is.EqualTo(ErrorCodes.Invalid), json);
        }
    }

    [Test]
    public void LargeTransfersBothWaysStayWithinCredit()
    {
        StartServer(A, "echo", EchoServer);
        // A small window: 4 MB each way in many credit rounds (the client checks every frame against its grants).
        var client = Track(Box.Connect(window: 64 * 1024));
        var channel = Open(client, 9000);
        var payload = RandomNumberGenerator.GetBytes(4 << 20);
        var sender = Task.Run(() =>
        {
            client.SendData(channel, payload, chunk: 32 * 1024);
            client.Send(FrameType.Close, channel);
        });
        var echoed = Read(client, channel);
        sender.Wait();
        Assert.That(echoed.Result, Is.Not.Null);
        Assert.That(echoed.Bytes.Length, Is.EqualTo(payload.Length + 4));
        Assert.That(SHA256.HashData(echoed.Bytes.ToArray().AsSpan(0, payload.Length)), Is.EqualTo(SHA256.HashData(payload)));
        Assert.That((echoed.Result!.BytesIn, echoed.Result.BytesOut), Is.EqualTo(((long)payload.Length, (long)payload.Length + 4)));

        // Without credit nothing beyond the window comes; the sandbox's writer waits.
        StartServer(client, "flood", "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 9001)); s.listen()\nprint('listening', flush=True)\n" +
            "c, _ = s.accept()\nc.sendall(b'z' * 1000000)\nc.close()");
        var flood = client.NewChannel();
        client.ManualCredit(flood);
        client.SendJson(FrameType.Connect, flood, new ConnectRequest { Port = 9001 });
        Assert.That((char)client.Next(flood).Type, Is.EqualTo('s'));
        var first = Read(client, flood, until: o => o.Bytes.Length >= client.Window);
        Assert.That(client.TryNext(flood, TimeSpan.FromMilliseconds(500), out var extra), Is.False, $"a {(char)extra.Type} beyond the credit");
        Assert.That(first.Bytes.Length, Is.EqualTo(client.Window));
        client.Grant(flood, 2 << 20);
        var rest = Read(client, flood, first, o => o.HalfClosed);
        Assert.That((rest.Bytes.Length, rest.HalfClosed), Is.EqualTo((1_000_000L, true)));
        client.Send(FrameType.Close, flood);
        Assert.That(Read(client, flood, rest).Result!.BytesOut, Is.EqualTo(1_000_000));
    }
}
