using System.Net;
using System.Net.Sockets;
using System.Text;
using SandboxKit.Egress.Decisions;

namespace SandboxKit.Egress.Tests;

public sealed class RelayTests
{
    private Upstreams _up = null!;

    [OneTimeSetUp]
    public async Task StartUpstreams() => _up = await Upstreams.InstanceAsync;

    private static string Unique() => Guid.NewGuid().ToString("N")[..10];

    [Test]
    public async Task PlainHttpToAnAllowedNameGoesThroughItsSyntheticAddress()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"www.allowed.test:{_up.HttpPort}");
        var marker = Unique();
        var body = await h.Client().GetStringAsync($"http://www.allowed.test:{_up.HttpPort}/{marker}");
        Assert.That(body, Is.EqualTo($"hello www.allowed.test/{marker}"));

        var result = (await h.FinishAsync()).Single();
        Assert.That(result.Decision.Allowed, Is.True);
        Assert.That(result.Decision.Name, Is.EqualTo("www.allowed.test"));
        Assert.That(result.Decision.Protocol, Is.EqualTo("http"));
        Assert.That(result.Decision.ResolvedAddress, Is.EqualTo(IPAddress.Loopback));
        Assert.That(IPNetwork.Parse("127.77.0.0/16").Contains(result.Decision.DialedAddress!), Is.True);
        Assert.That(result.BytesUp, Is.GreaterThan(0));
        Assert.That(result.BytesDown, Is.GreaterThan(0));
        Assert.That(h.Session.Counters.BytesDown, Is.EqualTo(result.BytesDown));
        Assert.That(h.Connector.Dialed.Single(), Is.EqualTo(new IPEndPoint(IPAddress.Loopback, _up.HttpPort)));
    }

    [Test]
    public async Task HttpsToAnAllowedNamePassesTlsThroughUntouched()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"secure.test:{_up.HttpsPort}");
        var marker = Unique();
        // The client trusts only the upstream's CA: it can only succeed if it talks to the upstream end to end.
        var body = await h.Client(trust: _up.Ca).GetStringAsync($"https://secure.test:{_up.HttpsPort}/{marker}");
        Assert.That(body, Is.EqualTo($"hello secure.test/{marker}"));
        var result = (await h.FinishAsync()).Single();
        Assert.That(result.Decision.Protocol, Is.EqualTo("tls"));
        Assert.That(result.Decision.TlsTerminated, Is.False);
        Assert.That(_up.For(marker).Single().Https, Is.True);
    }

    [Test]
    public async Task ANameOffTheListIsDeniedAndNeverDialed()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"www.allowed.test:{_up.HttpPort}");
        var dns = await h.Gateway.HandleDnsQueryAsync(h.Session, DnsPackets.Query(1, "other.test", Dns.DnsType.A), Dns.DnsTransport.Udp);
        Assert.That(DnsPackets.Parse(dns.Response!).Rcode, Is.EqualTo(3));

        var response = await h.Client(proxy: true).GetAsync($"http://other.test:{_up.HttpPort}/x");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.Forbidden));
        Assert.That(await response.Content.ReadAsStringAsync(), Does.Contain("not allowed by this sandbox's policy"));
        // Same name, allowed port, but another port: still off the list.
        var (received, result) = await h.RawAsync(new EgressTarget(RelayHarness.ProxyEndpoint), Encoding.ASCII.GetBytes($"CONNECT www.allowed.test:{_up.HttpsPort} HTTP/1.1\r\nHost: www.allowed.test\r\n\r\n"));
        Assert.That(received, Does.StartWith("HTTP/1.1 403"));
        Assert.That(result.Decision.Reason, Is.EqualTo($"www.allowed.test:{_up.HttpsPort} is not on the allow list"));
        await h.FinishAsync();
        Assert.That(h.Connector.Dialed, Is.Empty);
        Assert.That(h.Session.Counters.Denied, Is.EqualTo(3));
    }

    [Test]
    public async Task AnIpLiteralIsDeniedUnlessARangeRuleAllowsIt()
    {
        var request = Encoding.ASCII.GetBytes("GET /literal HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n");
        var target = new EgressTarget(new IPEndPoint(IPAddress.Loopback, _up.HttpPort));
        await using (var h = new RelayHarness(_up))
        {
            h.Open($"www.allowed.test:{_up.HttpPort}");
            var (received, result) = await h.RawAsync(target, request);
            Assert.That(received, Does.StartWith("HTTP/1.1 403"));
            Assert.That(result.Decision.Allowed, Is.False);
            Assert.That(result.Decision.Reason, Is.EqualTo($"127.0.0.1:{_up.HttpPort} is an IP literal no allow rule covers (the Host header claims www.allowed.test)"));
            Assert.That(h.Connector.Dialed, Is.Empty);
        }
        await using (var h = new RelayHarness(_up, o => { o.AllowCidrRules = true; o.AllowedRulePatterns.Add("127.0.0.1/32:*"); }))
        {
            h.Open($"127.0.0.1/32:{_up.HttpPort}");
            // No half-close: Kestrel may drop a request whose client half-closed; "Connection: close" ends it instead.
            var (received, result) = await h.RawAsync(target, request, halfClose: false);
            Assert.That(received, Does.StartWith("HTTP/1.1 200"));
            Assert.That(result.Decision.Reason, Is.EqualTo($"allowed by 127.0.0.1/32:{_up.HttpPort}"));
        }
    }

    [Test]
    public async Task ASandboxThatLiesInItsEtcHostsReachesNothing()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"secure.test:{_up.HttpsPort}", "secure.test");
        // /etc/hosts says secure.test is 203.0.113.10: the sandbox dials that, with the right SNI.
        var (response, error, result, _) = await h.TlsAsync(new EgressTarget(new IPEndPoint(IPAddress.Parse("203.0.113.10"), 443)), "secure.test", _up.Ca);
        Assert.That(response, Is.Null);
        Assert.That(error, Is.Not.Null);
        Assert.That(result.Decision.Allowed, Is.False);
        Assert.That(result.Decision.Reason, Is.EqualTo("203.0.113.10:443 is an IP literal no allow rule covers (the SNI claims secure.test)"));
        // And pointing it at loopback (another local service) is no better.
        var (_, _, local, _) = await h.TlsAsync(new EgressTarget(new IPEndPoint(IPAddress.Parse("127.0.0.2"), _up.HttpsPort)), "secure.test", _up.Ca);
        Assert.That(local.Decision.Reason, Does.Contain("loopback, which is always denied"));
        Assert.That(h.Connector.Dialed, Is.Empty);
    }

    [Test]
    public async Task AnSniForAnAllowedNameSentToAnotherNamesSyntheticAddressIsDenied()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"secure.test:{_up.HttpsPort}", $"other.test:{_up.HttpsPort}");
        var otherAddress = await h.SyntheticAsync("other.test");
        var (_, error, result, _) = await h.TlsAsync(new EgressTarget(new IPEndPoint(otherAddress, _up.HttpsPort)), "secure.test", _up.Ca);
        Assert.That(error, Is.Not.Null);
        Assert.That(result.Decision.Allowed, Is.False);
        Assert.That(result.Decision.Reason, Is.EqualTo($"the SNI names secure.test, but the sandbox dialed {otherAddress}, the synthetic address of other.test"));

        var (received, http) = await h.RawAsync(new EgressTarget(new IPEndPoint(otherAddress, _up.HttpsPort)), Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
        Assert.That(received, Does.StartWith("HTTP/1.1 403"));
        Assert.That(http.Decision.Reason, Does.StartWith("the Host header names 127.0.0.1"));
        Assert.That(h.Connector.Dialed, Is.Empty);
    }

    [Test]
    public async Task AnUnallocatedSyntheticAddressIsDeniedUnlessTheSupervisorsHintRestoresIt()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"www.allowed.test:{_up.HttpPort}");
        var request = Encoding.ASCII.GetBytes("GET /hint HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n");
        var synthetic = new IPEndPoint(IPAddress.Parse("127.77.3.3"), _up.HttpPort);
        var (_, unknown) = await h.RawAsync(new EgressTarget(synthetic), request);
        Assert.That(unknown.Decision.Reason, Is.EqualTo("127.77.3.3 is a synthetic address this session never handed out"));

        // After a server restart the supervisor still knows the name it got for that address.
        var (received, hinted) = await h.RawAsync(new EgressTarget(synthetic, NameHint: "www.allowed.test"), request, halfClose: false);
        Assert.That(received, Does.StartWith("HTTP/1.1 200"));
        Assert.That(hinted.Decision.Allowed, Is.True);
        Assert.That(await h.SyntheticAsync("www.allowed.test"), Is.EqualTo(synthetic.Address));
    }

    [TestCase("private.test", "10.1.2.3 is private (RFC 1918)")]
    [TestCase("metadata.test", "169.254.169.254 is link-local")]
    [TestCase("mapped.test", "169.254.169.254 is link-local")]
    [TestCase("loop.test", "127.0.0.2 is loopback")]
    public async Task NamesResolvingToSpecialRangesAreAlwaysDenied(string name, string reason)
    {
        await using var h = new RelayHarness(_up);
        h.Open($"{name}:80");
        var (received, result) = await h.RawAsync(new EgressTarget(RelayHarness.ProxyEndpoint), Encoding.ASCII.GetBytes($"GET http://{name}/ HTTP/1.1\r\nHost: {name}\r\n\r\n"));
        Assert.That(received, Does.StartWith("HTTP/1.1 403"));
        Assert.That(result.Decision.Reason, Does.StartWith($"{name} resolves to a denied address: {reason}"));
        Assert.That(h.Connector.Dialed, Is.Empty);
    }

    [TestCase("169.254.169.254", 80)]
    [TestCase("127.0.0.2", 80)]
    [TestCase("10.0.0.1", 5432)]
    [TestCase("::ffff:169.254.169.254", 80)]
    public async Task SpecialRangesAreDeniedEvenWhenATenantRuleCoversThem(string address, int port)
    {
        await using var h = new RelayHarness(_up, o => { o.AllowCidrRules = true; o.AllowedRulePatterns = ["0.0.0.0/0:*", "[::/0]:*"]; });
        h.Open("0.0.0.0/0:*");
        var (_, result) = await h.RawAsync(new EgressTarget(new IPEndPoint(IPAddress.Parse(address), port)), "hello"u8.ToArray());
        Assert.That(result.Decision.Allowed, Is.False);
        Assert.That(result.Decision.Reason, Does.Contain("always denied"));
        Assert.That(h.Connector.Dialed, Is.Empty);
        // And asking for them outright is refused when the policy is made.
        var refused = h.Gateway.CreatePolicy(new Policy.EgressPolicySpec { Allow = ["169.254.169.254/32:80", "127.0.0.2/32:*"] });
        Assert.That(refused.Errors, Has.Count.EqualTo(2));
    }

    [Test]
    public async Task AnOperatorAllowedPrivateRangeIsReachable()
    {
        var marker = Unique();
        await using (var denied = new RelayHarness(_up, o => o.AllowedPrivateRanges = []))
        {
            denied.Open($"mirror.test:{_up.HttpPort}");
            var response = await denied.Client(proxy: true).GetAsync($"http://mirror.test:{_up.HttpPort}/{marker}");
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.Forbidden));
            var result = (await denied.FinishAsync()).Single();
            Assert.That(result.Decision.Reason, Does.Contain("127.0.0.1 is loopback, which is always denied"));
        }
        await using (var allowed = new RelayHarness(_up, o => o.AllowedPrivateRanges = ["127.0.0.1/32"]))
        {
            allowed.Open($"mirror.test:{_up.HttpPort}");
            Assert.That(await allowed.Client(proxy: true).GetStringAsync($"http://mirror.test:{_up.HttpPort}/{marker}"), Is.EqualTo($"hello mirror.test/{marker}"));
        }
    }

    [Test]
    public async Task HttpConnectTunnelsToAnAllowedName()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"secure.test:{_up.HttpsPort}", $"www.allowed.test:{_up.HttpPort}");
        var client = h.Client(trust: _up.Ca, proxy: true);
        var marker = Unique();
        Assert.That(await client.GetStringAsync($"https://secure.test:{_up.HttpsPort}/{marker}"), Is.EqualTo($"hello secure.test/{marker}"));
        Assert.That(await client.GetStringAsync($"http://www.allowed.test:{_up.HttpPort}/{marker}"), Is.EqualTo($"hello www.allowed.test/{marker}"));
        var denied = await Assert.ThrowsAsync<HttpRequestException>(() => client.GetStringAsync($"https://other.test:{_up.HttpsPort}/"));
        Assert.That(denied!.Message, Does.Contain("403"));
        var results = await h.FinishAsync();
        Assert.That(results.Select(r => r.Decision.Protocol), Is.EquivalentTo(new[] { "connect/tls", "http", "connect" }));
        Assert.That(results.Single(r => !r.Decision.Allowed).Decision.Name, Is.EqualTo("other.test"));
    }

    [Test]
    public async Task AProxyClientReusingAConnectionForAnotherHostGetsAFreshDecision()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"www.allowed.test:{_up.HttpPort}", $"other.test:{_up.HttpPort}");
        var client = h.Client(proxy: true);
        var marker = Unique();
        Assert.That(await client.GetStringAsync($"http://www.allowed.test:{_up.HttpPort}/{marker}"), Is.EqualTo($"hello www.allowed.test/{marker}"));
        // HttpClient reuses its proxy connection for the second origin; the gateway closes it rather than deliver
        // other.test's request to www.allowed.test's server, and the client retries on a new connection.
        Assert.That(await client.GetStringAsync($"http://other.test:{_up.HttpPort}/{marker}"), Is.EqualTo($"hello other.test/{marker}"));
        Assert.That(_up.For(marker).Select(r => r.Host), Is.EqualTo(new[] { "www.allowed.test", "other.test" }));
        var results = await h.FinishAsync();
        Assert.That(results.Where(r => r.Decision.Allowed).Select(r => r.Decision.Name), Is.EquivalentTo(new[] { "www.allowed.test", "other.test" }));
    }

    [Test]
    public async Task AConnectTunnelMustCarryTheNameItWasOpenedFor()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"secure.test:{_up.HttpsPort}", $"other.test:{_up.HttpsPort}");
        var (sandbox, relay) = await h.DialAsync(new EgressTarget(RelayHarness.ProxyEndpoint));
        using (sandbox)
        {
            await sandbox.WriteAsync(Encoding.ASCII.GetBytes($"CONNECT secure.test:{_up.HttpsPort} HTTP/1.1\r\nHost: secure.test\r\n\r\n"));
            var established = new byte[39];
            await sandbox.ReadExactlyAsync(established);
            Assert.That(Encoding.ASCII.GetString(established), Is.EqualTo("HTTP/1.1 200 Connection Established\r\n\r\n"));
            await sandbox.WriteAsync(await ClientHelloTests.CaptureClientHelloAsync("other.test"));
            Assert.That(await Loopback.ReadToEndAsync(sandbox, TimeSpan.FromSeconds(10)), Is.Empty);
        }
        var result = await relay.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(result.Decision.Allowed, Is.False);
        Assert.That(result.Decision.Reason, Is.EqualTo("the CONNECT was for secure.test, but the SNI inside names other.test"));
    }

    [Test]
    public async Task AServerThatSpeaksFirstAndHalfClosesWorksBothWays()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"banner.test:{_up.BannerPort}");
        var address = await h.SyntheticAsync("banner.test");
        var (sandbox, relay) = await h.DialAsync(new EgressTarget(new IPEndPoint(address, _up.BannerPort)));
        using (sandbox)
        {
            var banner = new byte[23];
            await sandbox.ReadExactlyAsync(banner).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
            Assert.That(Encoding.ASCII.GetString(banner), Is.EqualTo("220 banner.test ready\r\n"));
            await sandbox.WriteAsync(new byte[100_000]);
            sandbox.Socket.Shutdown(SocketShutdown.Send);
            var rest = Encoding.ASCII.GetString(await Loopback.ReadToEndAsync(sandbox, TimeSpan.FromSeconds(10)));
            Assert.That(rest, Is.EqualTo("got 100000 bytes\r\n"), "upstream saw the sandbox's half-close and could still answer");
        }
        var result = await relay.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(result.Decision.Protocol, Is.EqualTo("opaque"));
        Assert.That(result.BytesUp, Is.EqualTo(100_000));
        Assert.That(result.CloseReason, Is.EqualTo("closed"));
    }

    [Test]
    public async Task AQuietConnectionIsClosedAfterTheIdleTimeout()
    {
        await using var h = new RelayHarness(_up, o => o.Tcp.IdleTimeoutSeconds = 1);
        h.Open($"echo.test:{_up.EchoPort}");
        var (sandbox, relay) = await h.DialAsync(new EgressTarget(new IPEndPoint(await h.SyntheticAsync("echo.test"), _up.EchoPort)));
        using (sandbox)
        {
            await sandbox.WriteAsync("ping"u8.ToArray());
            var pong = new byte[4];
            await sandbox.ReadExactlyAsync(pong);
            Assert.That(await Loopback.ReadToEndAsync(sandbox, TimeSpan.FromSeconds(5)), Is.Empty);
        }
        var result = await relay.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.That(result.CloseReason, Is.EqualTo("idle timeout"));
    }

    [Test]
    public async Task APolicyChangeClosesTheConnectionsItNoLongerAllows()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"echo.test:{_up.EchoPort}", $"echo2.test:{_up.EchoPort}");
        var (dropped, droppedRelay) = await h.DialAsync(new EgressTarget(new IPEndPoint(await h.SyntheticAsync("echo.test"), _up.EchoPort)));
        var (kept, keptRelay) = await h.DialAsync(new EgressTarget(new IPEndPoint(await h.SyntheticAsync("echo2.test"), _up.EchoPort)));
        using (dropped)
        using (kept)
        {
            foreach (var stream in new[] { dropped, kept })
            {
                await stream.WriteAsync("ping"u8.ToArray());
                await stream.ReadExactlyAsync(new byte[4]);
            }
            int closed = h.Session.ReplacePolicy(TestGateways.Policy(h.Gateway, $"echo2.test:{_up.EchoPort}"));
            Assert.That(closed, Is.EqualTo(1));
            Assert.That(await Loopback.ReadToEndAsync(dropped, TimeSpan.FromSeconds(5)), Is.Empty);

            await kept.WriteAsync("still"u8.ToArray());
            var echoed = new byte[5];
            await kept.ReadExactlyAsync(echoed);
            Assert.That(Encoding.ASCII.GetString(echoed), Is.EqualTo("still"));
            kept.Socket.Shutdown(SocketShutdown.Send);
            await Loopback.ReadToEndAsync(kept, TimeSpan.FromSeconds(5));
        }
        var droppedResult = await droppedRelay.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.That(droppedResult.CloseReason, Does.StartWith("closed by a policy change: echo.test:"));
        Assert.That((await keptRelay.WaitAsync(TimeSpan.FromSeconds(5))).CloseReason, Is.EqualTo("closed"));
        var change = h.Session.GetRecentDecisions(10).First(d => d.Kind == EgressDecisionKind.PolicyChange);
        Assert.That(change.Allowed, Is.False);
        Assert.That(change.Name, Is.EqualTo("echo.test"));

        // New connections follow the new policy too.
        var (_, after) = await h.RawAsync(new EgressTarget(new IPEndPoint(IPAddress.Parse("127.77.0.1"), _up.EchoPort)), "ping"u8.ToArray());
        Assert.That(after.Decision.Reason, Does.Contain("not on the allow list"));
    }

    [Test]
    public async Task ASessionHasABoundedNumberOfConnections()
    {
        await using var h = new RelayHarness(_up, o => o.Tcp.MaxConnectionsPerSession = 1);
        h.Open($"echo.test:{_up.EchoPort}");
        var target = new EgressTarget(new IPEndPoint(await h.SyntheticAsync("echo.test"), _up.EchoPort));
        var (first, firstRelay) = await h.DialAsync(target);
        using (first)
        {
            await first.WriteAsync("ping"u8.ToArray());
            await first.ReadExactlyAsync(new byte[4]);
            var (_, second) = await h.RawAsync(target, "ping"u8.ToArray());
            Assert.That(second.Decision.Reason, Is.EqualTo("the session already has 1 open connections"));
            Assert.That(h.Session.Counters.OpenConnections, Is.EqualTo(1));
            first.Socket.Shutdown(SocketShutdown.Send);
            await Loopback.ReadToEndAsync(first, TimeSpan.FromSeconds(5));
        }
        await firstRelay.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.That(h.Session.Counters.OpenConnections, Is.Zero);
    }

    [Test]
    public async Task ANameOutsideTheHostsMapIsRefusedWithoutAnyLookup()
    {
        await using var h = new RelayHarness(_up);
        h.Open("unknown.test:443");
        var (received, result) = await h.RawAsync(new EgressTarget(RelayHarness.ProxyEndpoint), "CONNECT unknown.test:443 HTTP/1.1\r\nHost: unknown.test\r\n\r\n"u8.ToArray());
        Assert.That(received, Does.StartWith("HTTP/1.1 403"));
        Assert.That(result.Decision.Reason, Is.EqualTo("unknown.test does not resolve"));
        Assert.That(h.SystemResolver.Lookups, Is.Empty);
        Assert.That(h.Connector.Dialed, Is.Empty);
    }

    [Test]
    public async Task MalformedTrafficIsDeniedAndClosed()
    {
        await using var h = new RelayHarness(_up);
        h.Open($"www.allowed.test:{_up.HttpPort}", $"secure.test:{_up.HttpsPort}");
        var web = new EgressTarget(new IPEndPoint(await h.SyntheticAsync("www.allowed.test"), _up.HttpPort));
        var tls = new EgressTarget(new IPEndPoint(await h.SyntheticAsync("secure.test"), _up.HttpsPort));
        var hello = await ClientHelloTests.CaptureClientHelloAsync("secure.test");

        var cases = new (EgressTarget Target, byte[] Bytes, string Reason)[]
        {
            (tls, hello[..40], "closed inside the ClientHello"),
            (tls, [0x16, 3, 3, 0xFF, 0xFF, 1, 2, 3], "invalid TLS record length"),
            (tls, [0x16, 3, 1, 0, 10, 2, 0, 0, 6, 1, 2, 3, 4, 5, 6], "not a ClientHello"),
            (web, Encoding.ASCII.GetBytes("POST / HTTP/1.1\r\nHost: www.allowed.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), "both Transfer-Encoding and Content-Length"),
            (web, Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: www.allowed.test\r\nX: " + new string('a', 40_000)), "larger than"),
            (web, Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: www.allowed.test\r\n"), "closed inside the request head"),
        };
        foreach (var (target, bytes, reason) in cases)
        {
            var (received, result) = await h.RawAsync(target, bytes);
            Assert.That(result.Decision.Allowed, Is.False, reason);
            Assert.That(result.Decision.Reason, Does.Contain(reason));
            Assert.That(received, Is.Empty.Or.StartsWith("HTTP/1.1 403"));
        }
        Assert.That(h.Connector.Dialed, Is.Empty);
    }

    [Test]
    public async Task RandomTrafficNeverThrows()
    {
        await using var h = new RelayHarness(_up, o => o.Tcp.FirstByteTimeoutMilliseconds = 100);
        h.Open($"www.allowed.test:{_up.HttpPort}");
        var allowed = new EgressTarget(new IPEndPoint(await h.SyntheticAsync("www.allowed.test"), _up.HttpPort));
        var random = new Random(77);
        var targets = new[] { allowed, new EgressTarget(new IPEndPoint(IPAddress.Parse("198.51.100.9"), 443)), new EgressTarget(RelayHarness.ProxyEndpoint) };
        var prefixes = new[] { ""u8.ToArray(), [0x16, 3, 1], "GET "u8.ToArray(), "CONNECT "u8.ToArray() };
        var runs = Enumerable.Range(0, 40).Select(async i =>
        {
            var noise = new byte[random.Next(0, 3000)];
            random.NextBytes(noise);
            var (_, result) = await h.RawAsync(targets[i % targets.Length], [.. prefixes[i % prefixes.Length], .. noise]);
            return result;
        });
        var results = await Task.WhenAll(runs);
        Assert.That(results, Has.Length.EqualTo(40));
        Assert.That(results.Where(r => r.Decision.Allowed).All(r => r.Decision.Name == "www.allowed.test"), Is.True);
        Assert.That(results.Count(r => !r.Decision.Allowed), Is.GreaterThan(20));
        Assert.That(h.Connector.Dialed.All(e => e.Port == _up.HttpPort), Is.True);
    }
}
