using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>
/// The server's side of the egress relay, played by the test: answers every <c>q</c> with a hand-made DNS response
/// (names in <see cref="Names"/> get their address and a mapping; anything else NXDOMAIN) and hands each <c>n</c> to the
/// test. Nothing leaves the machine: the sandbox has only its loopback, and the "gateway" is this object. Its thread
/// ends with the client's connection.
/// </summary>
public sealed class FakeGateway
{
    private readonly AgentClient _client;
    private readonly Thread _thread;

    public FakeGateway(AgentClient client)
    {
        _client = client;
        _thread = new Thread(Run) { IsBackground = true, Name = "fake-gateway" };
        _thread.Start();
    }

    public ConcurrentDictionary<string, IPAddress> Names { get; } = new(StringComparer.OrdinalIgnoreCase);

    public ConcurrentQueue<(uint Channel, DnsQueryMessage Query, string Name, int Type)> Queries { get; } = new();

    public BlockingCollection<(uint Channel, OutboundConnection Connection)> Connections { get; } = [];

    /// <summary>Answer DNS at all (false: queries are left unanswered, as a server that went away would).</summary>
    public volatile bool Answering = true;

    private void Run()
    {
        try
        {
            foreach (var frame in _client.Opened.GetConsumingEnumerable())
            {
                Assert.That(frame.Channel & FrameType.SupervisorChannelBit, Is.Not.Zero);
                if (frame.Type == FrameType.DnsQuery)
                {
                    var query = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.DnsQueryMessage)!;
                    var packet = Convert.FromBase64String(query.Packet);
                    var tcp = query.Transport == "tcp";
                    var message = tcp ? packet[2..] : packet;
                    var (name, type, response) = Respond(message);
                    Queries.Enqueue((frame.Channel, query, name, type));
                    if (!Answering)
                    {
                        continue;
                    }
                    if (tcp)
                    {
                        var framed = new byte[response.Length + 2];
                        BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)response.Length);
                        response.CopyTo(framed, 2);
                        response = framed;
                    }
                    var mapping = Names.TryGetValue(name, out var address) ? new DnsMapping { Name = name, Address = address.ToString() } : null;
                    _client.SendJson(FrameType.DnsAnswer, frame.Channel, new DnsAnswerMessage { Packet = Convert.ToBase64String(response), Mapping = mapping });
                }
                else
                {
                    Connections.Add((frame.Channel, JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.OutboundConnection)!));
                }
            }
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or ObjectDisposedException)
        {
            // the connection ended
        }
    }

    /// <summary>A DNS response to one query: the question copied, one A record for a known name (IN, TTL 30).</summary>
    public (string Name, int Type, byte[] Response) Respond(byte[] query)
    {
        var labels = new List<string>();
        var at = 12;
        while (query[at] != 0)
        {
            labels.Add(Encoding.ASCII.GetString(query, at + 1, query[at]));
            at += 1 + query[at];
        }
        at++;
        var type = BinaryPrimitives.ReadUInt16BigEndian(query.AsSpan(at));
        var questionEnd = at + 4;
        var name = string.Join('.', labels);
        var known = Names.TryGetValue(name, out var address);
        var answer = known && type == 1;
        var response = new List<byte>();
        response.AddRange(query.AsSpan(0, 2).ToArray());
        response.AddRange(new byte[] { 0x81, known ? (byte)0x80 : (byte)0x83 }); // response, RD, RA; NXDOMAIN for unknown names
        response.AddRange(new byte[] { 0, 1, 0, answer ? (byte)1 : (byte)0, 0, 0, 0, 0 });
        response.AddRange(query.AsSpan(12, questionEnd - 12).ToArray());
        if (answer)
        {
            response.AddRange(new byte[] { 0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4 });
            response.AddRange(address!.GetAddressBytes());
        }
        return (name, type, response.ToArray());
    }

    /// <summary>The next relayed connection.</summary>
    public (uint Channel, OutboundConnection Connection) Next(double seconds = 20)
    {
        Assert.That(Connections.TryTake(out var next, TimeSpan.FromSeconds(seconds)), Is.True, "no relayed connection (n)");
        return next;
    }
}

/// <summary>Session settings (S): the state environment, and the egress relay (supervisor-opened channels).</summary>
public sealed class EgressTests : AgentTest
{
    /// <summary>The flags the server gives sessions with egress (docs: "The egress relay").</summary>
    internal static readonly string[] RelayFlags =
        ["--cap-add", "NET_BIND_SERVICE", "--cap-add", "NET_ADMIN", "--dns", "127.0.0.1", "--tmpfs", "/etc/sandboxkit:mode=0755"];

    protected override SandboxOptions Options => new() { ExtraArgs = RelayFlags };

    internal static ConfigureResult Configure(AgentClient client, ConfigureRequest request)
    {
        var channel = client.NewChannel();
        client.SendJson(FrameType.Configure, channel, request);
        var result = client.Collect(channel);
        Assert.That(result.Error, Is.Null, result.ToString());
        return result.As<ConfigureResult>();
    }

    private static string Python(string code) => $"python3 -c {Quote(code)}";

    private static string Quote(string text) => "'" + text.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    [Test]
    public void SetEnvAndUnsetEnvChangeTheStateAndOutliveCommandsThatWereRunning()
    {
        AssertRan(A.Run("export TO_REMOVE=1"));
        var running = A.Start("sleep 1; export FROM_COMMAND=yes; export FOO=stale");
        Assert.That((char)A.Next(running).Type, Is.EqualTo('s'));
        var result = Configure(A, new ConfigureRequest { SetEnv = new Dictionary<string, string> { ["FOO"] = "bar baz", ["EMPTY"] = "" }, UnsetEnv = ["TO_REMOVE"] });
        Assert.That((result.EgressEnabled, result.Warnings), Is.EqualTo((false, (IReadOnlyList<string>?)null)));
        Assert.That(A.Run("echo \"$FOO|${TO_REMOVE-unset}|${EMPTY-unset}\"").Out, Is.EqualTo("bar baz|unset|\n"));
        AssertRan(A.Collect(running));
        // The command that was running exported its own things (kept) but could not have seen FOO (the setting wins).
        Assert.That(A.Run("echo \"$FOO|$FROM_COMMAND|${TO_REMOVE-unset}\"").Out, Is.EqualTo("bar baz|yes|unset\n"));
        Assert.That(A.Run("export FOO=later").Error, Is.Null);
        Assert.That(A.Run("echo $FOO").Out, Is.EqualTo("later\n"), "commands after the setting change it as usual");
        ContextTests.Create(A, "py");
        Assert.That(ContextTests.Ok(A, "py", "import os; print(os.environ['FOO'], 'TO_REMOVE' in os.environ)").Out, Is.EqualTo("later False\n"));
        foreach (var bad in new[]
        {
            """{"setEnv":{"A=B":"x"}}""", """{"setEnv":{"":"x"}}""", """{"unsetEnv":["X=1"]}""", """{"setEnv":{"A":5}}""",
            """{"egress":{"enabled":true,"tcpPorts":[0]}}""", """{"egress":{"enabled":true,"tcpPorts":[80,80]}}""",
            """{"egress":{"enabled":true,"caPem":"not a certificate"}}""", """{"egress":{"enabled":true,"mappings":[{"name":"a","address":"nope"}]}}""",
        })
        {
            var channel = A.NewChannel();
            A.SendText(FrameType.Configure, channel, bad);
            Assert.That(A.Collect(channel).Error?.Code, Is.EqualTo(ErrorCodes.Invalid), bad);
        }
    }

    [Test]
    public void DnsAndTcpGoThroughTheServerIncludingIpLiteralsWithTheCatchAllRoute()
    {
        var gateway = new FakeGateway(A);
        gateway.Names["api.example.test"] = IPAddress.Parse("127.77.0.9");
        var configured = Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true, TcpPorts = [80, 443], CatchAllDestinations = true } });
        Assert.That((configured.EgressEnabled, configured.CatchingAllDestinations, configured.Warnings), Is.EqualTo((true, true, (IReadOnlyList<string>?)null)));

        // DNS over UDP (the C library's resolver, through resolv.conf)
        Assert.That(A.Run("getent ahostsv4 api.example.test | head -n 1").Out, Does.StartWith("127.77.0.9"));
        Assert.That(gateway.Queries.Any(q => q.Query.Transport == "udp" && q.Name == "api.example.test" && q.Type == 1), Is.True);
        Assert.That(A.Run("getent ahostsv4 unknown.example.test").Code, Is.Not.Zero, "NXDOMAIN");

        // An HTTP request to the name: relayed with the dialed address, the port and the name the DNS gave it.
        var client = A.Start(Python(
            "import socket\ns = socket.create_connection(('api.example.test', 80), timeout=20)\n" +
            "s.sendall(b'GET /x HTTP/1.0\\r\\nHost: api.example.test\\r\\n\\r\\n')\nbody = b''\n" +
            "while True:\n    d = s.recv(65536)\n    if not d: break\n    body += d\nprint(body.decode())"));
        var (channel, connection) = gateway.Next();
        Assert.That((connection.Address, connection.Port, connection.Name), Is.EqualTo(("127.77.0.9", 80, "api.example.test")));
        var request = StreamTests.Read(A, channel, until: o => o.Text.Contains("\r\n\r\n", StringComparison.Ordinal));
        Assert.That(request.Text, Does.StartWith("GET /x HTTP/1.0\r\nHost: api.example.test"));
        A.SendData(channel, "HTTP/1.0 200 OK\r\n\r\nrelayed body"u8);
        A.Send(FrameType.Close, channel);
        var end = StreamTests.Read(A, channel, request);
        Assert.That((end.HalfClosed, end.Result!.BytesIn), Is.EqualTo((true, 31L)));
        Assert.That(A.Collect(client).Out, Is.EqualTo("HTTP/1.0 200 OK\r\n\r\nrelayed body\n"));

        // An IP literal: caught by the local default route; the gateway refuses it (K), the sandbox sees a reset.
        var literal = A.Start(Python(
            "import socket\ntry:\n    s = socket.create_connection(('198.51.100.7', 443), timeout=20)\n    print(repr(s.recv(10)))\n" +
            "except ConnectionResetError:\n    print('reset')"));
        var (refused, target) = gateway.Next();
        Assert.That((target.Address, target.Port, target.Name), Is.EqualTo(("198.51.100.7", 443, (string?)null)));
        A.Send(FrameType.Kill, refused);
        Assert.That(StreamTests.Read(A, refused).Result, Is.Not.Null);
        Assert.That(A.Collect(literal).Out, Is.EqualTo("reset\n").Or.EqualTo("b''\n"));
        // A port the relay does not listen on is refused locally.
        Assert.That(A.Run(Python("import socket\ntry:\n    socket.create_connection(('198.51.100.7', 8080), timeout=5)\nexcept ConnectionRefusedError:\n    print('refused')")).Out,
            Is.EqualTo("refused\n"));

        // DNS over TCP: the query goes with its length prefix, the answer comes back framed.
        var tcp = A.Run(Python(
            "import socket, struct\nq = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x03api\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01'\n" +
            "s = socket.create_connection(('127.0.0.1', 53), timeout=10)\ns.sendall(struct.pack('>H', len(q)) + q)\n" +
            "n = struct.unpack('>H', s.recv(2))[0]\nr = b''\nwhile len(r) < n: r += s.recv(n - len(r))\nprint(r[:2].hex(), socket.inet_ntoa(r[-4:]))"));
        Assert.That(tcp.Out, Is.EqualTo("1234 127.77.0.9\n"), tcp.ToString());
        Assert.That(gateway.Queries.Any(q => q.Query.Transport == "tcp"), Is.True);

        // Mappings handed over by the server (after its restart) name connections to their addresses.
        Configure(A, new ConfigureRequest
        {
            Egress = new EgressRelayConfig { Enabled = true, TcpPorts = [80, 443], CatchAllDestinations = true, Mappings = [new DnsMapping { Name = "restored.test", Address = "127.77.0.50" }] },
        });
        var restored = A.Start(Python("import socket\ns = socket.create_connection(('127.77.0.50', 443), timeout=20)\ns.close()"));
        var (closedChannel, named) = gateway.Next();
        Assert.That(named.Name, Is.EqualTo("restored.test"));
        AssertRan(A.Collect(restored));
        Assert.That(StreamTests.Read(A, closedChannel, until: o => o.HalfClosed).HalfClosed, Is.True);
        A.Send(FrameType.Close, closedChannel);
        Assert.That(StreamTests.Read(A, closedChannel).Result, Is.Not.Null);
    }

    [Test]
    public void TheCaBundleAndItsVariablesComeAndGoWithTheConfiguration()
    {
        const string Pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTESTTESTTESTTESTTESTTESTTEST\n-----END CERTIFICATE-----\n";
        var configured = Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true, CaPem = Pem } });
        Assert.That((configured.EgressEnabled, configured.CatchingAllDestinations), Is.EqualTo((true, false)));
        var check = A.Run("stat -c '%U %a' /etc/sandboxkit/ca-bundle.pem; grep -c 'BEGIN CERTIFICATE' /etc/sandboxkit/ca-bundle.pem; tail -n 3 /etc/sandboxkit/ca-bundle.pem;" +
            " echo \"$SSL_CERT_FILE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS $CURL_CA_BUNDLE $PIP_CERT\"");
        var lines = check.Out.Split('\n');
        Assert.That(lines[0], Is.EqualTo("root 644"));
        var system = int.Parse(A.Run("grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt").Out.Trim(), System.Globalization.CultureInfo.InvariantCulture);
        Assert.That(int.Parse(lines[1], System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(system + 1), "the image's bundle and the CA");
        Assert.That(string.Join('\n', lines[2..5]) + "\n", Is.EqualTo(Pem));
        Assert.That(lines[5], Is.EqualTo(string.Join(' ', Enumerable.Repeat("/etc/sandboxkit/ca-bundle.pem", 5))));
        Assert.That(A.Run("echo x > /etc/sandboxkit/ca-bundle.pem").Code, Is.Not.Zero, "the user cannot change the bundle");

        // A configuration without the CA: the bundle and the variables go.
        Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true } });
        Assert.That(A.Run("ls /etc/sandboxkit; echo \"${SSL_CERT_FILE-none} ${NODE_EXTRA_CA_CERTS-none}\"").Out, Is.EqualTo("none none\n"));
    }

    [Test]
    public void TurningTheRelayOffResetsConnectionsClosesListenersAndRemovesTheRoute()
    {
        var gateway = new FakeGateway(A);
        gateway.Names["held.test"] = IPAddress.Parse("127.77.0.3");
        Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true, CatchAllDestinations = true } });
        Assert.That(A.Run("ip route show table main").Out, Does.Contain("local default dev lo"));
        var held = A.Start(Python(
            "import socket\ns = socket.create_connection(('held.test', 80), timeout=20)\ns.sendall(b'hi')\n" +
            "try:\n    print(repr(s.recv(10)))\nexcept ConnectionResetError:\n    print('reset')"));
        var (channel, _) = gateway.Next();
        StreamTests.Read(A, channel, until: o => o.Bytes.Length >= 2);
        var off = Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = false } });
        Assert.That((off.EgressEnabled, off.CatchingAllDestinations), Is.EqualTo((false, false)));
        Assert.That(StreamTests.Read(A, channel).Result, Is.Not.Null, "the relayed connection ended with f");
        Assert.That(A.Collect(held).Out, Is.EqualTo("reset\n"));
        Assert.That(A.Run("ip route show table main").Out, Does.Not.Contain("local default"));
        Assert.That(A.Run(Python("import socket\ntry:\n    socket.create_connection(('127.77.0.3', 80), timeout=5)\nexcept ConnectionRefusedError:\n    print('refused')")).Out,
            Is.EqualTo("refused\n"));
        var before = gateway.Queries.Count;
        Assert.That(A.Run("getent ahostsv4 held.test").Code, Is.Not.Zero);
        Assert.That(gateway.Queries.Count, Is.EqualTo(before), "no DNS is relayed any more");
        // On again: the listeners come back on the same ports.
        Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true } });
        Assert.That(A.Run("getent ahostsv4 held.test").Out, Does.StartWith("127.77.0.3"));
    }

    [Test]
    public void RelayedConnectionsAreBoundedAndUnansweredQueriesAreDropped()
    {
        var gateway = new FakeGateway(A);
        Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true } });
        // 300 connections at once: 256 are relayed, the rest reset at accept.
        // (The relayed ones never become readable: the test sends nothing on them.)
        var flood = A.Start(Python(
            "import select, socket, time\nsockets = [socket.create_connection(('127.77.0.1', 80), timeout=20) for _ in range(300)]\n" +
            "reset = set()\ndeadline = time.monotonic() + 20\n" +
            "while len(reset) < 44 and time.monotonic() < deadline:\n" +
            "    readable, _, _ = select.select([s for s in sockets if s not in reset], [], [], 0.5)\n" +
            "    for s in readable:\n        try:\n            s.recv(1)\n        except ConnectionResetError:\n            pass\n        reset.add(s)\n" +
            "time.sleep(0.3)\nreadable, _, _ = select.select([s for s in sockets if s not in reset], [], [], 0)\nprint(len(reset) + len(readable))"));
        var relayed = new List<uint>();
        while (relayed.Count < EgressRelayLimit && gateway.Connections.TryTake(out var next, TimeSpan.FromSeconds(20)))
        {
            relayed.Add(next.Channel);
        }
        var result = A.Collect(flood);
        Assert.That(relayed, Has.Count.EqualTo(EgressRelayLimit));
        Assert.That(gateway.Connections.TryTake(out _, TimeSpan.FromMilliseconds(300)), Is.False, "more than 256 relayed");
        Assert.That(int.Parse(result.Out.Trim(), System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(300 - EgressRelayLimit), result.ToString());
        foreach (var channel in relayed)
        {
            A.Send(FrameType.Kill, channel);
        }

        // No answer within 5 s: the query is dropped, and an answer after that goes nowhere (the asker still waits).
        gateway.Answering = false;
        var before = gateway.Queries.Count;
        var asker = A.Start(Python("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(7)\n" +
            "s.sendto(b'\\xab\\xcd\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x01x\\x00\\x00\\x01\\x00\\x01', ('127.0.0.1', 53))\n" +
            "try:\n    print(s.recv(512).hex())\nexcept socket.timeout:\n    print('timeout')"));
        Assert.That(Sandbox.WaitUntil(() => gateway.Queries.Count > before, 10), Is.True);
        var late = gateway.Queries.Last();
        Thread.Sleep(TimeSpan.FromMilliseconds(EgressDnsTimeoutMs + 500));
        var (_, _, response) = gateway.Respond(Convert.FromBase64String(late.Query.Packet));
        A.SendJson(FrameType.DnsAnswer, late.Channel, new DnsAnswerMessage { Packet = Convert.ToBase64String(response) });
        Assert.That(A.Collect(asker).Out, Is.EqualTo("timeout\n"));
        A.Ping(); // a late Q races with the drop: ignored, not a violation
    }

    private const double EgressDnsTimeoutMs = 5000;

    private const int EgressRelayLimit = 256;

    [Test]
    public void HostileFramesOnSupervisorChannelsCloseTheConnection()
    {
        Configure(A, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true } });
        var cases = new (string Name, Func<AgentClient, uint, byte[]> Frame)[]
        {
            ("a request with the high bit", (_, _) => FrameEncoder.Encode(FrameType.Run, 0x8000_0100, """{"command":"true"}"""u8)),
            ("data for a supervisor channel never opened", (_, _) => FrameEncoder.Encode(FrameType.Data, 0xFFFF_0000, "x"u8)),
            ("Q for a server channel", (c, _) => FrameEncoder.Encode(FrameType.DnsAnswer, 1, "{}"u8)),
            ("Q that is not base64", (_, q) => FrameEncoder.Encode(FrameType.DnsAnswer, q, """{"packet":"***"}"""u8)),
        };
        foreach (var (name, frame) in cases)
        {
            var client = Box.Connect();
            var fake = new FakeGateway(client) { Answering = false };
            AssertRan(client.Run("getent ahostsv4 pending.test & sleep 0.5"));
            Assert.That(Sandbox.WaitUntil(() => !fake.Queries.IsEmpty, 10), Is.True);
            client.SendRaw(frame(client, fake.Queries.First().Channel));
            Assert.That(client.WaitClosed(), Is.True, $"{name}: the connection stayed open");
            client.Dispose();
        }
        var last = Track(Box.Connect());
        AssertRan(last.Run("echo still here"));
    }

    [Test]
    public void WithoutNetAdminTheCatchAllRouteIsAWarning()
    {
        var (_, client) = Another(new SandboxOptions { ExtraArgs = ["--dns", "127.0.0.1"] });
        var result = Configure(client, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true, CatchAllDestinations = true } });
        Assert.That((result.EgressEnabled, result.CatchingAllDestinations), Is.EqualTo((true, false)));
        Assert.That(result.Warnings, Has.Some.Contains("NET_ADMIN"));
    }
}
