using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using SandboxKit.Contracts;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Tests;

/// <summary>
/// Egress by allow-list through the gateway, against stand-ins on this machine's loopback: every allowed name resolves
/// through the gateway's static hosts map to the test's own HTTP and HTTPS servers; the gateway's resolver knows only
/// that map, so a name outside it is refused without any DNS query or connection leaving the machine, and IP literals
/// are refused before any dial.
/// </summary>
[TestFixture]
public sealed class NetworkPolicyTests
{
    private const string Secret = "s3cret-index-token";
    private ServerHost _host = null!;
    private Upstream _upstream = null!;
    private string _session = null!;
    private string _upstreamCa = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _upstream = await Upstream.StartAsync();
        _upstreamCa = Path.Combine(Path.GetTempPath(), $"sandboxkit-test-ca-{Guid.NewGuid():N}.pem");
        await File.WriteAllTextAsync(_upstreamCa, _upstream.CaPem);
        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            // The gateway checks upstream certificates; the stand-in's comes from the test's own CA.
            ["Sandbox:Egress:Tls:ExtraTrustedCaPaths:0"] = _upstreamCa,
            ["Sandbox:Egress:Hosts:pypi.test"] = "127.0.0.1",
            ["Sandbox:Egress:Hosts:files.pypi.test"] = "127.0.0.1",
            ["Sandbox:Egress:AllowedRulePatterns:0"] = "*.test:*",
            // The stand-ins listen on loopback, which is otherwise always denied.
            ["Sandbox:Egress:AllowedPrivateRanges:0"] = "127.0.0.1/32",
        });
        var created = await _host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest
        {
            Egress = new EgressPolicyRequest
            {
                Allow = [$"pypi.test:{_upstream.HttpPort}", $"pypi.test:{_upstream.HttpsPort}"],
                Headers = [new EgressHeaderRule { Match = $"pypi.test:{_upstream.HttpPort}", Headers = new Dictionary<string, string> { ["Authorization"] = "Bearer " + Secret } }],
            },
        }, SandboxJsonContext.Default.CreateSessionRequest);
        await ServerHost.EnsureAsync(created, HttpStatusCode.Created);
        _session = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
        await _host.ExecuteAsync(_session, $"cat > /tmp/ca.pem <<'EOF'\n{_upstream.CaPem}\nEOF");
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        foreach (var s in (await _host.Http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions)
        {
            await _host.DeleteSessionAsync(s.Id);
        }
        await _host.DisposeAsync();
        await _upstream.DisposeAsync();
        File.Delete(_upstreamCa);
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.Zero);
    }

    private Task<ExecuteResult> Run(string command) => _host.ExecuteAsync(_session, command, 60);

    [Test]
    public async Task An_allowed_name_works_over_http_with_the_secret_added_outside_the_sandbox()
    {
        var http = await Run($"curl -sS -m 10 http://pypi.test:{_upstream.HttpPort}/simple/");
        Assert.That(http.Stdout, Is.EqualTo("upstream ok /simple/"), http.Stderr);
        Assert.That(_upstream.AuthorizationSeen, Does.Contain("Bearer " + Secret), "the gateway added the header");

        var inside = await Run($"env; cat /etc/sandboxkit/* 2>/dev/null; grep -rl {Secret} /tmp /workspace $HOME 2>/dev/null; true");
        Assert.That(inside.Stdout, Does.Not.Contain(Secret), "the secret never enters the sandbox");
        var info = await _host.Http.GetStringAsync($"/v1/sessions/{_session}");
        Assert.That(info, Does.Not.Contain(Secret));
        Assert.That(info, Does.Contain("Authorization"), "the session shows the header's name");
        var labels = (await Engine.Docker.ListVolumesAsync(SessionLabels.Instance, _host.Instance, CancellationToken.None)).SelectMany(v => v.Labels.Values)
            .Concat((await Engine.Docker.ListContainersAsync(SessionLabels.Instance, _host.Instance, CancellationToken.None)).SelectMany(c => c.Labels.Values));
        Assert.That(labels, Has.None.Contains(Secret));
    }

    [Test]
    public async Task An_allowed_name_works_over_https_passing_tls_through()
    {
        var https = await Run($"curl -sS -m 10 --cacert /tmp/ca.pem https://pypi.test:{_upstream.HttpsPort}/tls");
        Assert.That(https.Stdout, Is.EqualTo("upstream ok /tls"), https.Stderr);
    }

    [Test]
    public async Task A_rule_that_terminates_tls_adds_the_secret_to_https_requests_and_the_sandbox_trusts_the_deployments_ca()
    {
        const string TlsSecret = "tls-only-token";
        var created = await _host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest
        {
            Egress = new EgressPolicyRequest
            {
                Allow = [$"pypi.test:{_upstream.HttpsPort}"],
                Headers = [new EgressHeaderRule
                {
                    Match = $"pypi.test:{_upstream.HttpsPort}",
                    Headers = new Dictionary<string, string> { ["Authorization"] = "Bearer " + TlsSecret },
                    TerminateTls = true,
                }],
            },
        }, SandboxJsonContext.Default.CreateSessionRequest);
        await ServerHost.EnsureAsync(created, HttpStatusCode.Created);
        var session = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!;
        try
        {
            Assert.That(session.Egress!.Headers!.Single().TerminateTls, Is.True);
            // No --cacert: the sandbox trusts the deployment's CA through the bundle the supervisor wrote and the variables it set.
            var https = await _host.ExecuteAsync(session.Id, $"curl -sS -m 10 -v https://pypi.test:{_upstream.HttpsPort}/terminated 2>/tmp/curl.log; grep -i 'issuer' /tmp/curl.log", 60);
            Assert.That(https.Stdout, Does.StartWith("upstream ok /terminated"), https.Stderr);
            Assert.That(https.Stdout, Does.Not.Contain("SandboxKit test CA"), "the sandbox saw the gateway's certificate, not the upstream's");
            Assert.That(_upstream.AuthorizationSeen, Does.Contain("Bearer " + TlsSecret), "the gateway added the header inside TLS");
            var inside = await _host.ExecuteAsync(session.Id, $"env; cat /etc/sandboxkit/* 2>/dev/null; true");
            Assert.That(inside.Stdout, Does.Not.Contain(TlsSecret));
            Assert.That(inside.Stdout, Does.Contain("BEGIN CERTIFICATE"), "the deployment's CA is in the sandbox's bundle");
            Assert.That(await _host.Http.GetStringAsync($"/v1/sessions/{session.Id}"), Does.Not.Contain(TlsSecret));
        }
        finally
        {
            await _host.DeleteSessionAsync(session.Id);
        }
    }

    [Test]
    public async Task Names_off_the_list_do_not_resolve_and_ip_literals_private_ranges_and_spoofed_addresses_get_nowhere()
    {
        var denied = await Run($"curl -sS -m 10 http://evil.test:{_upstream.HttpPort}/ ; echo rc=$?");
        Assert.That(denied.Stdout, Does.Contain("rc=6"), "could not resolve: " + denied.Stderr);
        var dns = await Run("getent hosts evil.test || echo no-answer; getent hosts pypi.test");
        Assert.That(dns.Stdout, Does.StartWith("no-answer"));
        Assert.That(dns.Stdout, Does.Match(@"127\.77\.\d+\.\d+\s+pypi\.test"), "an allowed name gets a synthetic address");

        foreach (var command in new[]
        {
            // -f: a refused HTTP request gets the gateway's 403.
            $"curl -sSf -m 10 http://10.9.9.9:{_upstream.HttpPort}/",
            $"curl -sSf -m 10 http://93.184.216.34:{_upstream.HttpPort}/",
            // The sandbox's own idea of where pypi.test is (an /etc/hosts entry would do the same).
            $"curl -sSf -m 10 --resolve pypi.test:{_upstream.HttpPort}:10.9.9.9 http://pypi.test:{_upstream.HttpPort}/",
            // An allowed SNI sent to another address.
            $"curl -sS -m 10 --cacert /tmp/ca.pem --resolve pypi.test:{_upstream.HttpsPort}:10.9.9.9 https://pypi.test:{_upstream.HttpsPort}/",
        })
        {
            var before = _upstream.Requests;
            var result = await Run(command + "; echo rc=$?");
            Assert.That(result.Stdout, Does.Not.Contain("upstream ok"), command);
            Assert.That(result.Stdout, Does.Not.Contain("rc=0"), command);
            Assert.That(_upstream.Requests, Is.EqualTo(before), "nothing reached an upstream: " + command);
        }

        var log = (await _host.Http.GetFromJsonAsync($"/v1/sessions/{_session}/egress/log?limit=200", SandboxJsonContext.Default.EgressLog))!;
        Assert.That(log.Entries.Where(e => !e.Allowed).Select(e => e.DialedAddress), Does.Contain("10.9.9.9").And.Contain("93.184.216.34"));
        Assert.That(log.Entries.Any(e => !e.Allowed && e.Kind == "dns" && e.Name == "evil.test"), Is.True);
        Assert.That(log.Entries.Any(e => e.Allowed && e.Name == "pypi.test"), Is.True);
        Assert.That(log.Denied, Is.GreaterThan(0));
        var usage = await _host.Http.GetFromJsonAsync("/v1/usage", SandboxJsonContext.Default.UsageReport);
        Assert.That(usage!.EgressDenied, Is.GreaterThan(0));
    }

    [Test]
    public async Task A_policy_changed_at_run_time_applies_at_once_and_a_session_without_one_has_no_network()
    {
        var other = await _host.CreateSessionAsync(new CreateSessionRequest
        {
            Egress = new EgressPolicyRequest { Allow = [$"pypi.test:{_upstream.HttpPort}"] },
        });
        Assert.That((await _host.ExecuteAsync(other.Id, $"curl -sS -m 10 http://pypi.test:{_upstream.HttpPort}/a")).Stdout, Is.EqualTo("upstream ok /a"));

        var patched = await _host.Http.PatchAsJsonAsync($"/v1/sessions/{other.Id}/egress",
            new EgressPolicyRequest { Allow = [$"files.pypi.test:{_upstream.HttpPort}"] }, SandboxJsonContext.Default.EgressPolicyRequest);
        await ServerHost.EnsureAsync(patched, HttpStatusCode.OK);
        Assert.That((await patched.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Egress!.Allow, Is.EqualTo(new[] { $"files.pypi.test:{_upstream.HttpPort}" }));
        Assert.That((await _host.ExecuteAsync(other.Id, $"curl -sS -m 10 http://pypi.test:{_upstream.HttpPort}/a; echo rc=$?")).Stdout, Does.Not.Contain("upstream ok"));
        Assert.That((await _host.ExecuteAsync(other.Id, $"curl -sS -m 10 http://files.pypi.test:{_upstream.HttpPort}/b")).Stdout, Is.EqualTo("upstream ok /b"));

        var off = await _host.Http.PatchAsJsonAsync($"/v1/sessions/{other.Id}/egress", new EgressPolicyRequest(), SandboxJsonContext.Default.EgressPolicyRequest);
        await ServerHost.EnsureAsync(off, HttpStatusCode.OK);
        Assert.That((await off.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Egress, Is.Null);
        Assert.That((await _host.ExecuteAsync(other.Id, $"curl -sS -m 5 http://files.pypi.test:{_upstream.HttpPort}/b; echo rc=$?")).Stdout, Does.Contain("rc=6"));
        await _host.DeleteSessionAsync(other.Id);

        var none = await _host.CreateSessionAsync();
        Assert.That((await _host.ExecuteAsync(none.Id, $"curl -sS -m 5 http://pypi.test:{_upstream.HttpPort}/; echo rc=$?")).Stdout, Does.Contain("rc=6"));
        Assert.That((await _host.ExecuteAsync(none.Id, "ip -o link | grep -v ' lo:' | wc -l")).Stdout.Trim(), Is.EqualTo("0"), "only a loopback");
        await _host.DeleteSessionAsync(none.Id);
    }

    [Test]
    public async Task Policies_outside_the_operators_bounds_are_refused()
    {
        foreach (var rule in new[] { "pypi.org", "10.0.0.0/8", "*" })
        {
            var response = await _host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { Egress = new EgressPolicyRequest { Allow = [rule] } },
                SandboxJsonContext.Default.CreateSessionRequest);
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest), rule);
            Assert.That((await ServerHost.ProblemAsync(response)).GetProperty("detail").GetString(), Does.StartWith("egress:"), rule);
        }
        Assert.That(await Engine.Docker.ListContainersAsync(SessionLabels.Instance, _host.Instance, CancellationToken.None), Has.Count.EqualTo(1), "nothing was created");
    }

    /// <summary>HTTP and HTTPS servers on loopback standing in for a package index; HTTPS with a certificate of a test CA.</summary>
    private sealed class Upstream : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly ConcurrentQueue<string> _authorization = new();
        private int _requests;

        private Upstream(WebApplication app, string caPem)
        {
            _app = app;
            CaPem = caPem;
        }

        public int HttpPort { get; private set; }
        public int HttpsPort { get; private set; }
        public string CaPem { get; }
        public int Requests => Volatile.Read(ref _requests);
        public IReadOnlyCollection<string> AuthorizationSeen => _authorization.ToArray();

        public static async Task<Upstream> StartAsync()
        {
            using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var caRequest = new CertificateRequest("CN=SandboxKit test CA", caKey, HashAlgorithmName.SHA256);
            caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
            caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            using var ca = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
            using var leafKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var leafRequest = new CertificateRequest("CN=pypi.test", leafKey, HashAlgorithmName.SHA256);
            var names = new SubjectAlternativeNameBuilder();
            names.AddDnsName("pypi.test");
            names.AddDnsName("files.pypi.test");
            leafRequest.CertificateExtensions.Add(names.Build());
            leafRequest.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
            using var leafPublic = leafRequest.Create(ca, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(6), RandomNumberGenerator.GetBytes(8));
            var leaf = X509CertificateLoader.LoadPkcs12(leafPublic.CopyWithPrivateKey(leafKey).Export(X509ContentType.Pkcs12), null);

            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.SetMinimumLevel(Microsoft.Extensions.Logging.LogLevel.None);
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.Listen(IPAddress.Loopback, 0);
                k.Listen(IPAddress.Loopback, 0, o => o.UseHttps(leaf));
            });
            var app = builder.Build();
            var upstream = new Upstream(app, ca.ExportCertificatePem());
            app.Run(async context =>
            {
                Interlocked.Increment(ref upstream._requests);
                if (context.Request.Headers.Authorization.ToString() is { Length: > 0 } auth)
                {
                    upstream._authorization.Enqueue(auth);
                }
                // Nothing of the request's headers goes back: the sandbox must not learn the secret from the answer.
                await context.Response.WriteAsync("upstream ok " + context.Request.Path);
            });
            await app.StartAsync();
            var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Select(a => new Uri(a)).ToList();
            upstream.HttpPort = addresses.Single(a => a.Scheme == "http").Port;
            upstream.HttpsPort = addresses.Single(a => a.Scheme == "https").Port;
            return upstream;
        }

        public async ValueTask DisposeAsync() => await _app.DisposeAsync();
    }
}

/// <summary>Preview URLs: a web server in a sandbox without any network, reached from outside with a signed URL.</summary>
[TestFixture]
public sealed class PreviewUrlTests : SessionFixture
{
    [Test]
    public async Task A_preview_url_serves_http_from_a_sandbox_without_network_and_needs_its_token()
    {
        await Host.ExecuteAsync(SessionId, "mkdir -p /workspace/site && echo '<h1>hello preview</h1>' > /workspace/site/index.html");
        var server = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/processes",
            new StartProcessRequest { Command = "cd /workspace/site && exec python3 -m http.server 8000 --bind 127.0.0.1" }, SandboxJsonContext.Default.StartProcessRequest);
        await ServerHost.EnsureAsync(server, HttpStatusCode.Created);
        await WaitForPortAsync(8000);

        var exposed = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/ports", new ExposePortRequest { Port = 8000 }, SandboxJsonContext.Default.ExposePortRequest);
        await ServerHost.EnsureAsync(exposed, HttpStatusCode.Created);
        var port = (await exposed.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExposedPort))!;
        Assert.That(port.Url, Does.Contain($"/preview/{SessionId}/8000/?sk_token="));

        using var browser = new HttpClient(new HttpClientHandler { UseCookies = true, CookieContainer = new CookieContainer() }) { BaseAddress = Host.BaseAddress };
        var page = await browser.GetAsync(port.Url);
        await ServerHost.EnsureAsync(page, HttpStatusCode.OK);
        Assert.That(await page.Content.ReadAsStringAsync(), Does.Contain("hello preview"));
        // The cookie the first request set carries the page's own relative requests.
        var again = await browser.GetAsync($"/preview/{SessionId}/8000/index.html");
        Assert.That(await again.Content.ReadAsStringAsync(), Does.Contain("hello preview"));

        var withoutToken = await Host.Http.GetAsync($"/preview/{SessionId}/8000/");
        Assert.That(withoutToken.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        var forged = await Host.Http.GetAsync(port.Url[..^4] + "AAAA");
        Assert.That(forged.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        var otherPort = await Host.Http.GetAsync(port.Url.Replace("/8000/", "/8001/", StringComparison.Ordinal));
        Assert.That(otherPort.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), "a token is for its own port");

        Assert.That((await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/ports/8000")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        Assert.That((await Host.Http.GetAsync(port.Url)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), "revoked");
    }

    [Test]
    public async Task A_preview_url_carries_a_websocket_upgrade()
    {
        const string echo = """
            import base64, hashlib, socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8765)); s.listen(4)
            while True:
                c, _ = s.accept(); data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(4096)
                    if not chunk: break
                    data += chunk
                if b"\r\n\r\n" not in data: c.close(); continue  # the test's port probe connects and leaves at once
                key = [l.split(b": ", 1)[1].strip() for l in data.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
                accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                head = c.recv(2); n = head[1] & 0x7f; mask = c.recv(4); payload = bytes(b ^ mask[i % 4] for i, b in enumerate(c.recv(n)))
                c.sendall(bytes([0x81, len(payload)]) + payload.upper()); c.close()
            """;
        await Host.ExecuteAsync(SessionId, $"cat > /workspace/echo.py <<'EOF'\n{echo}\nEOF");
        var server = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/processes", new StartProcessRequest { Command = "exec python3 /workspace/echo.py" },
            SandboxJsonContext.Default.StartProcessRequest);
        await ServerHost.EnsureAsync(server, HttpStatusCode.Created);
        await WaitForPortAsync(8765);
        var exposed = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/ports", new ExposePortRequest { Port = 8765 }, SandboxJsonContext.Default.ExposePortRequest);
        var port = (await exposed.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExposedPort))!;

        using var socket = new ClientWebSocket();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await socket.ConnectAsync(new UriBuilder(port.Url) { Scheme = "ws" }.Uri, timeout.Token);
        await socket.SendAsync("hello through the supervisor"u8.ToArray(), WebSocketMessageType.Text, true, timeout.Token);
        var buffer = new byte[256];
        var received = await socket.ReceiveAsync(buffer, timeout.Token);
        Assert.That(Encoding.UTF8.GetString(buffer, 0, received.Count), Is.EqualTo("HELLO THROUGH THE SUPERVISOR"));
        await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/ports/8765");
    }

    [Test]
    public async Task A_session_exposes_at_most_64_ports_at_once_and_bad_requests_are_problems()
    {
        var ports = Enumerable.Range(20000, SandboxKit.Server.Network.PreviewService.MaxPortsPerSession).ToList();
        try
        {
            foreach (var p in ports)
            {
                await ServerHost.EnsureAsync(await Expose(p), HttpStatusCode.Created);
            }
            Assert.That((await Expose(ports[0])).StatusCode, Is.EqualTo(HttpStatusCode.Created), "exposing a port again renews it");
            var over = await Expose(30000);
            Assert.That(over.StatusCode, Is.EqualTo(HttpStatusCode.Conflict));
            Assert.That((await ServerHost.ProblemAsync(over)).GetProperty("detail").GetString(), Does.Contain("at most 64"));
            Assert.That((await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/ports/{ports[^1]}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
            await ServerHost.EnsureAsync(await Expose(30000), HttpStatusCode.Created);
            ports[^1] = 30000;

            Assert.That((await Expose(0)).StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That((await Expose(70000)).StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That((await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/ports", new ExposePortRequest { Port = 8080, ExpiresInSeconds = 0 },
                SandboxJsonContext.Default.ExposePortRequest)).StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That((await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/ports/31000")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        }
        finally
        {
            foreach (var p in ports)
            {
                await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/ports/{p}");
            }
        }

        Task<HttpResponseMessage> Expose(int port) =>
            Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/ports", new ExposePortRequest { Port = port }, SandboxJsonContext.Default.ExposePortRequest);
    }

    private async Task WaitForPortAsync(int port)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!(await Host.ExecuteAsync(SessionId, $"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo open")).Stdout.Contains("open", StringComparison.Ordinal))
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"port {port} did not open");
            await Task.Delay(200);
        }
    }
}
