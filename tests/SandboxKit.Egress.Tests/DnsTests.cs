using System.Buffers.Binary;
using System.Net;
using SandboxKit.Egress.Dns;

namespace SandboxKit.Egress.Tests;

public sealed class DnsTests
{
    private EgressGateway _gateway = null!;
    private EgressSession _session = null!;
    private CountingSystemResolver _system = null!;

    [SetUp]
    public void SetUp()
    {
        _system = new CountingSystemResolver();
        _gateway = new EgressGateway(TestGateways.Options(o =>
        {
            o.Hosts = new()
            {
                ["pypi.org"] = "127.0.0.1",
                ["files.pythonhosted.org"] = "127.0.0.1",
                ["a.b.files.pythonhosted.org"] = "127.0.0.1",
                ["metadata.test"] = "169.254.169.254",
                ["private.test"] = "10.1.2.3",
                ["denied.test"] = "127.0.0.1",
            };
            o.Dns.TtlSeconds = 17;
            o.DecisionLogSize = 50;
        }), systemResolver: _system);
        _session = _gateway.OpenSession("s1", TestGateways.Policy(_gateway, ["pypi.org", "*.pythonhosted.org", "unknown.test", "metadata.test", "private.test", "denied.test"], ["denied.test"]));
    }

    [TearDown]
    public void TearDown()
    {
        _session.Dispose();
        _gateway.Dispose();
        Assert.That(_system.Lookups, Is.Empty, "no test here may reach the system resolver");
    }

    private async Task<(EgressDnsResult Result, DnsPackets.Response Response)> AskAsync(string name, ushort type = DnsType.A, ushort id = 0x1234)
    {
        var result = await _gateway.HandleDnsQueryAsync(_session, DnsPackets.Query(id, name, type), DnsTransport.Udp);
        Assert.That(result.Response, Is.Not.Null);
        return (result, DnsPackets.Parse(result.Response!));
    }

    [Test]
    public async Task AnAllowedNameGetsAStableSyntheticLoopbackAddress()
    {
        var (result, response) = await AskAsync("pypi.org");
        Assert.That(response.Id, Is.EqualTo(0x1234));
        Assert.That(response.IsResponse, Is.True);
        Assert.That(response.Authoritative, Is.True);
        Assert.That(response.Flags & 0x0180, Is.EqualTo(0x0180), "RD echoed, RA set");
        Assert.That(response.Rcode, Is.EqualTo(0));
        Assert.That(response.QuestionName, Is.EqualTo("pypi.org"));
        Assert.That(response.QuestionType, Is.EqualTo(DnsType.A));
        var answer = response.Answers.Single();
        Assert.That(answer.Type, Is.EqualTo(DnsType.A));
        Assert.That(answer.Ttl, Is.EqualTo(17));
        var address = new IPAddress(answer.Data);
        Assert.That(IPNetwork.Parse("127.77.0.0/16").Contains(address), Is.True);
        Assert.That(result.Mapping, Is.EqualTo(new EgressDnsMapping("pypi.org", address)));
        Assert.That(result.Decision.Allowed, Is.True);
        Assert.That(result.Decision.ResolvedAddress, Is.EqualTo(IPAddress.Loopback));

        var (_, again) = await AskAsync("PYPI.org.", id: 7);
        Assert.That(new IPAddress(again.Answers.Single().Data), Is.EqualTo(address), "same name, same address, whatever the case");
        var (_, other) = await AskAsync("a.b.files.pythonhosted.org");
        Assert.That(new IPAddress(other.Answers.Single().Data), Is.Not.EqualTo(address));
        Assert.That(_session.GetDnsMappings().Select(m => m.Name), Is.EqualTo(new[] { "pypi.org", "a.b.files.pythonhosted.org" }));
    }

    [Test]
    public async Task AaaaAndOtherTypesOfAnAllowedNameAreEmptyNoError()
    {
        foreach (var type in new ushort[] { DnsType.AAAA, 15, 16, 65, 255 })
        {
            var (result, response) = await AskAsync("pypi.org", type);
            Assert.That(response.Rcode, Is.EqualTo(0));
            Assert.That(response.Answers, Is.Empty);
            Assert.That(response.QuestionType, Is.EqualTo(type));
            Assert.That(result.Mapping, Is.Null);
        }
        Assert.That(_session.GetDnsMappings(), Is.Empty, "only A answers allocate addresses");
    }

    [TestCase("example.com", "not on the allow list")]
    [TestCase("pythonhosted.org", "not on the allow list")]
    [TestCase("denied.test", "deny rule")]
    [TestCase("unknown.test", "does not resolve")]
    [TestCase("metadata.test", "link-local")]
    [TestCase("private.test", "private")]
    public async Task DeniedUnknownAndUnreachableNamesAreNxDomain(string name, string reason)
    {
        var (result, response) = await AskAsync(name);
        Assert.That(response.Rcode, Is.EqualTo(3));
        Assert.That(response.Answers, Is.Empty);
        Assert.That(response.QuestionName, Is.EqualTo(name));
        Assert.That(result.Decision.Allowed, Is.False);
        Assert.That(result.Decision.Reason, Does.Contain(reason));
        Assert.That(_session.GetRecentDecisions(1).Single(), Is.SameAs(result.Decision));
    }

    [Test]
    public async Task TcpFramedQueriesGetTcpFramedAnswers()
    {
        var query = DnsPackets.TcpFramed(DnsPackets.Query(99, "pypi.org", DnsType.A));
        var result = await _gateway.HandleDnsQueryAsync(_session, query, DnsTransport.Tcp);
        var framed = result.Response!;
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(framed), Is.EqualTo(framed.Length - 2));
        var response = DnsPackets.Parse(framed[2..]);
        Assert.That(response.Id, Is.EqualTo(99));
        Assert.That(response.Answers, Has.Count.EqualTo(1));

        var lying = (byte[])query.Clone();
        lying[1]++;
        var dropped = await _gateway.HandleDnsQueryAsync(_session, lying, DnsTransport.Tcp);
        Assert.That(dropped.Response, Is.Null);
        Assert.That(dropped.Decision.Reason, Does.Contain("length prefix"));
    }

    [Test]
    public async Task MalformedQueriesGetFormErrOrNothing()
    {
        var good = DnsPackets.Query(5, "pypi.org", DnsType.A);

        Assert.That((await _gateway.HandleDnsQueryAsync(_session, good[..11], DnsTransport.Udp)).Response, Is.Null, "shorter than a header");
        var response = (byte[])good.Clone();
        response[2] |= 0x80;
        Assert.That((await _gateway.HandleDnsQueryAsync(_session, response, DnsTransport.Udp)).Response, Is.Null, "a response is never answered");

        await ExpectAsync(good[..20], 1, "truncated");
        var twoQuestions = (byte[])good.Clone();
        twoQuestions[5] = 2;
        await ExpectAsync(twoQuestions, 1, "question count");
        var pointer = (byte[])good.Clone();
        pointer[12] = 0xC0;
        pointer[13] = 0x0C;
        await ExpectAsync(pointer, 1, "compression");
        var notify = (byte[])good.Clone();
        notify[2] = 0x20; // opcode 4
        await ExpectAsync(notify, 4, "opcode");
        await ExpectAsync(DnsPackets.Query(5, "pypi.org", DnsType.A, @class: 3), 5, "class");
        var longLabel = (byte[])good.Clone();
        longLabel[12] = 64;
        await ExpectAsync(longLabel, 1, "63 octets");
        var oversized = new byte[4097];
        good.CopyTo(oversized, 0);
        await ExpectAsync(oversized, 1, "4096");
        var longName = DnsPackets.Query(5, string.Join('.', Enumerable.Repeat(new string('a', 63), 4)), DnsType.A);
        await ExpectAsync(longName, 1, "255 octets");

        var binaryLabel = DnsPackets.Query(5, "pypi.org", DnsType.A);
        binaryLabel[14] = 0x01;
        var binary = await _gateway.HandleDnsQueryAsync(_session, binaryLabel, DnsTransport.Udp);
        Assert.That(DnsPackets.Parse(binary.Response!).Rcode, Is.EqualTo(3), "a label that is no host name is NXDOMAIN");
        Assert.That(binary.Decision.Reason, Does.Contain("not a valid host name"));
    }

    private async Task ExpectAsync(byte[] query, int rcode, string reason)
    {
        var result = await _gateway.HandleDnsQueryAsync(_session, query, DnsTransport.Udp);
        Assert.That(result.Response, Is.Not.Null, reason);
        var response = DnsPackets.Parse(result.Response!);
        Assert.That(response.Id, Is.EqualTo(5));
        Assert.That(response.Rcode, Is.EqualTo(rcode), reason);
        Assert.That(response.Answers, Is.Empty);
        Assert.That(result.Decision.Allowed, Is.False);
        Assert.That(result.Decision.Reason, Does.Contain(reason));
    }

    [Test]
    public async Task RandomPacketsNeverThrowAndAlwaysKeepTheId()
    {
        var random = new Random(4242);
        var seed = DnsPackets.Query(0xBEEF, "files.pythonhosted.org", DnsType.A);
        for (int i = 0; i < 2000; i++)
        {
            byte[] packet;
            if (i % 3 == 0)
            {
                packet = new byte[random.Next(0, 600)];
                random.NextBytes(packet);
            }
            else
            {
                packet = (byte[])seed.Clone();
                for (int flips = random.Next(1, 5); flips > 0; flips--)
                {
                    packet[random.Next(packet.Length)] = (byte)random.Next(256);
                }
            }
            var result = await _gateway.HandleDnsQueryAsync(_session, packet, i % 5 == 0 ? DnsTransport.Tcp : DnsTransport.Udp);
            Assert.That(result.Decision, Is.Not.Null);
            if (result.Response is { } bytes && i % 5 != 0)
            {
                Assert.That(BinaryPrimitives.ReadUInt16BigEndian(bytes), Is.EqualTo(BinaryPrimitives.ReadUInt16BigEndian(packet)));
                Assert.That(bytes[2] & 0x80, Is.EqualTo(0x80));
                Assert.That(bytes, Has.Length.LessThanOrEqualTo(512));
            }
        }
    }

    [Test]
    public async Task APolicyChangeAppliesToTheNextAnswerAndKeepsTheAddress()
    {
        var first = await TestGateways.ResolveAsync(_gateway, _session, "pypi.org");
        _session.ReplacePolicy(TestGateways.Policy(_gateway, "files.pythonhosted.org"));
        var (denied, response) = await AskAsync("pypi.org");
        Assert.That(response.Rcode, Is.EqualTo(3));
        Assert.That(denied.Decision.Reason, Does.Contain("not on the allow list"));
        _session.ReplacePolicy(TestGateways.Policy(_gateway, "pypi.org"));
        Assert.That(await TestGateways.ResolveAsync(_gateway, _session, "pypi.org"), Is.EqualTo(first));
    }

    [Test]
    public async Task ThePoolIsBoundedPerSession()
    {
        using var gateway = new EgressGateway(TestGateways.Options(o =>
        {
            o.Hosts = new() { ["a.test"] = "127.0.0.1", ["b.test"] = "127.0.0.1", ["c.test"] = "127.0.0.1" };
            o.Dns.MaxNamesPerSession = 2;
        }));
        var session = gateway.OpenSession("small", TestGateways.Policy(gateway, "*.test"));
        await TestGateways.ResolveAsync(gateway, session, "a.test");
        await TestGateways.ResolveAsync(gateway, session, "b.test");
        var full = await gateway.HandleDnsQueryAsync(session, DnsPackets.Query(1, "c.test", DnsType.A), DnsTransport.Udp);
        Assert.That(DnsPackets.Parse(full.Response!).Rcode, Is.EqualTo(2));
        Assert.That(full.Decision.Reason, Does.Contain("pool is full"));
        // Names already mapped keep working.
        await TestGateways.ResolveAsync(gateway, session, "a.test");
    }

    [Test]
    public async Task MappingsKeptBySupervisorAreRestoredAfterARestart()
    {
        var address = await TestGateways.ResolveAsync(_gateway, _session, "pypi.org");
        var kept = _session.GetDnsMappings();

        using var restarted = new EgressGateway(TestGateways.Options(o => o.Hosts = new() { ["pypi.org"] = "127.0.0.1", ["other.test"] = "127.0.0.1" }));
        var session = restarted.OpenSession("s1", TestGateways.Policy(restarted, "pypi.org", "other.test"));
        int restored = session.RestoreDnsMappings([.. kept, new EgressDnsMapping("other.test", address), new EgressDnsMapping("x.test", IPAddress.Parse("10.0.0.1")), new EgressDnsMapping("bad name", IPAddress.Parse("127.77.9.9"))]);
        Assert.That(restored, Is.EqualTo(1), "conflicting, off-pool and invalid entries are skipped");
        Assert.That(await TestGateways.ResolveAsync(restarted, session, "pypi.org"), Is.EqualTo(address));
        Assert.That(await TestGateways.ResolveAsync(restarted, session, "other.test"), Is.Not.EqualTo(address));
    }

    [Test]
    public async Task TheDecisionLogIsABoundedRingWithCounters()
    {
        var raised = new List<string>();
        _gateway.DecisionRecorded += (_, d) => raised.Add(d.Name ?? "");
        for (int i = 0; i < 60; i++)
        {
            await AskAsync(i % 2 == 0 ? "pypi.org" : $"n{i}.example");
        }
        var newest = _session.GetRecentDecisions(1000);
        Assert.That(newest, Has.Count.EqualTo(50));
        Assert.That(newest[0].Name, Is.EqualTo("n59.example"));
        Assert.That(newest[1].Name, Is.EqualTo("pypi.org"));
        Assert.That(_session.GetRecentDecisions(3), Has.Count.EqualTo(3));
        Assert.That(_session.Counters.Allowed, Is.EqualTo(30));
        Assert.That(_session.Counters.Denied, Is.EqualTo(30));
        Assert.That(raised, Has.Count.EqualTo(60));
    }

    [Test]
    public async Task ANameOutsideTheHostsMapIsRefusedWithoutASystemLookup()
    {
        var (result, response) = await AskAsync("unknown.test");
        Assert.That(response.Rcode, Is.EqualTo(3));
        Assert.That(result.Decision.Reason, Is.EqualTo("unknown.test does not resolve"));
        Assert.That(_system.Lookups, Is.Empty);
    }

    [Test]
    public async Task TheSystemResolverIsAskedOnlyWhenTheOperatorEnablesIt()
    {
        var system = new CountingSystemResolver(new() { ["unknown.test"] = [IPAddress.Parse("::ffff:127.0.0.1")] });
        using var gateway = new EgressGateway(TestGateways.Options(o => o.UseSystemResolver = true), systemResolver: system);
        var session = gateway.OpenSession("sys", TestGateways.Policy(gateway, "unknown.test", "other.test"));
        await TestGateways.ResolveAsync(gateway, session, "unknown.test");
        var missing = await gateway.HandleDnsQueryAsync(session, DnsPackets.Query(1, "other.test", DnsType.A), DnsTransport.Udp);
        Assert.That(DnsPackets.Parse(missing.Response!).Rcode, Is.EqualTo(3));
        var notAllowed = await gateway.HandleDnsQueryAsync(session, DnsPackets.Query(1, "exfiltrate-data.attacker.example", DnsType.A), DnsTransport.Udp);
        Assert.That(DnsPackets.Parse(notAllowed.Response!).Rcode, Is.EqualTo(3));
        Assert.That(system.Lookups, Is.EqualTo(new[] { "unknown.test", "other.test" }), "names off the allow list are never looked up");
    }
}
