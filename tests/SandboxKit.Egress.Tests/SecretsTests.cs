using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Tests;

/// <summary>Headers added at egress: plain HTTP, TLS-terminated HTTPS, and where secrets must never show.</summary>
public sealed class SecretsTests
{
    private const string TenantSecret = "Bearer TENANT-SECRET-7f3a";
    private const string OperatorSecret = "OPERATOR-SECRET-91bc";

    private Upstreams _up = null!;
    private string _caDirectory = null!;

    [OneTimeSetUp]
    public async Task StartUpstreams() => _up = await Upstreams.InstanceAsync;

    [SetUp]
    public void CreateCaDirectory() => _caDirectory = Directory.CreateTempSubdirectory("egress-ca-").FullName;

    [TearDown]
    public void RemoveCaDirectory() => Directory.Delete(_caDirectory, recursive: true);

    private static string Unique() => Guid.NewGuid().ToString("N")[..10];

    private RelayHarness Harness(bool trustUpstreamCa = true, Action<EgressOptions>? configure = null) => new(_up, o =>
    {
        o.Tls.CaDirectory = _caDirectory;
        if (trustUpstreamCa)
        {
            o.Tls.ExtraTrustedCertificates.Add(_up.Ca);
        }
        o.Secrets = [new EgressSecretOptions { Match = "api.secret.test", Headers = new() { ["X-Operator-Key"] = OperatorSecret } }];
        configure?.Invoke(o);
    });

    private EgressAllowRuleSpec SecretRule(int port, bool terminate) => new($"api.secret.test:{port}")
    {
        TerminateTls = terminate,
        Headers = new() { ["Authorization"] = TenantSecret, ["X-Operator-Key"] = "tenant cannot override this" },
    };

    [Test]
    public async Task PlainHttpRequestsGetTheHeadersOnEveryRequestOfAKeptAliveConnection()
    {
        await using var h = Harness();
        h.Open(SecretRule(_up.HttpPort, terminate: false));
        var client = h.Client();
        var marker = Unique();
        var url = $"http://api.secret.test:{_up.HttpPort}/{marker}";

        using var first = new HttpRequestMessage(HttpMethod.Get, url + "/1");
        first.Headers.Authorization = new AuthenticationHeaderValue("Basic", "c2FuZGJveDpwYXNz"); // the sandbox's own
        (await client.SendAsync(first)).EnsureSuccessStatusCode();

        var chunkedBody = string.Concat(Enumerable.Repeat("0123456789", 5000));
        using var chunked = new HttpRequestMessage(HttpMethod.Post, url + "/2") { Content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(chunkedBody))) };
        chunked.Headers.TransferEncodingChunked = true;
        Assert.That(await (await client.SendAsync(chunked)).Content.ReadAsStringAsync(), Is.EqualTo("echo:" + chunkedBody));

        var fixedResponse = await client.PostAsync(url + "/3", new StringContent("fixed length body"));
        Assert.That(await fixedResponse.Content.ReadAsStringAsync(), Is.EqualTo("echo:fixed length body"));

        var seen = _up.For(marker);
        Assert.That(seen, Has.Count.EqualTo(3));
        foreach (var request in seen)
        {
            Assert.That(request.Headers["Authorization"], Is.EqualTo(new[] { TenantSecret }), "replaced, not duplicated");
            Assert.That(request.Headers["X-Operator-Key"], Is.EqualTo(new[] { OperatorSecret }), "the operator's header wins");
            Assert.That(request.Https, Is.False);
        }
        Assert.That(seen.Select(r => r.ConnectionId).Distinct().Count(), Is.EqualTo(1), "all three went over one kept-alive connection");
        Assert.That(seen[1].Headers["Transfer-Encoding"], Is.EqualTo(new[] { "chunked" }));

        var result = (await h.FinishAsync()).Single();
        Assert.That(result.Decision.InjectedHeaderNames, Is.EquivalentTo(new[] { "Authorization", "X-Operator-Key" }));
        AssertNoSecretIn(h);
    }

    [Test]
    public async Task TlsTerminatedHttpsGetsTheHeadersAndTheSandboxSeesTheGatewaysCertificate()
    {
        await using var h = Harness();
        h.Open(SecretRule(_up.HttpsPort, terminate: true));
        Assert.That(h.Gateway.CaCertificatePem, Does.StartWith("-----BEGIN CERTIFICATE-----"));
        using var gatewayCa = X509Certificate2.CreateFromPem(h.Gateway.CaCertificatePem);

        // The sandbox trusts the gateway's CA only (as the integrator installs it in the image).
        var marker = Unique();
        var client = h.Client(trust: gatewayCa);
        using var request = new HttpRequestMessage(HttpMethod.Get, $"https://api.secret.test:{_up.HttpsPort}/{marker}");
        request.Headers.TryAddWithoutValidation("authorization", "token from-the-sandbox");
        Assert.That(await (await client.SendAsync(request)).Content.ReadAsStringAsync(), Is.EqualTo($"hello api.secret.test/{marker}"));
        Assert.That(await (await client.PostAsync($"https://api.secret.test:{_up.HttpsPort}/{marker}/post", new StringContent("over tls"))).Content.ReadAsStringAsync(), Is.EqualTo("echo:over tls"));

        var seen = _up.For(marker);
        Assert.That(seen, Has.Count.EqualTo(2));
        Assert.That(seen.All(r => r.Https), Is.True, "re-originated over TLS to the upstream");
        Assert.That(seen.Select(r => r.Headers["Authorization"].Single()), Is.All.EqualTo(TenantSecret));
        Assert.That(seen.Select(r => r.Headers["X-Operator-Key"].Single()), Is.All.EqualTo(OperatorSecret));

        var (_, _, raw, certificate) = await h.TlsAsync(new EgressTarget(new IPEndPoint(await h.SyntheticAsync("api.secret.test"), _up.HttpsPort)), "api.secret.test", gatewayCa, $"/{marker}/raw");
        Assert.That(certificate!.Issuer, Is.EqualTo(gatewayCa.Subject));
        Assert.That(certificate.GetNameInfo(X509NameType.DnsName, false), Is.EqualTo("api.secret.test"));
        Assert.That(raw.Decision.TlsTerminated, Is.True);

        var results = await h.FinishAsync();
        Assert.That(results.All(r => r.Decision is { Allowed: true, TlsTerminated: true, Protocol: "tls" }), Is.True);
        Assert.That(h.Gateway.Leaves!.Issued, Is.EqualTo(1), "one leaf per name, cached");
        AssertNoSecretIn(h);
    }

    [Test]
    public async Task AClientSlowerThanTheFirstByteTimeoutStillGetsTheHeaders()
    {
        await using var h = Harness(configure: o => o.Tcp.FirstByteTimeoutMilliseconds = 50);
        h.Open(SecretRule(_up.HttpPort, terminate: false));
        var marker = Unique();
        var (sandbox, relay) = await h.DialAsync(new EgressTarget(new IPEndPoint(await h.SyntheticAsync("api.secret.test"), _up.HttpPort)));
        using (sandbox)
        {
            await Task.Delay(300);
            await sandbox.WriteAsync(Encoding.ASCII.GetBytes($"GET /{marker} HTTP/1.1\r\nHost: api.secret.test\r\nConnection: close\r\n\r\n"));
            Assert.That(Encoding.ASCII.GetString(await Loopback.ReadToEndAsync(sandbox, TimeSpan.FromSeconds(10))), Does.StartWith("HTTP/1.1 200"));
        }
        var result = await relay.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(result.Decision.Protocol, Is.EqualTo("http"));
        Assert.That(_up.For(marker).Single().Headers["Authorization"], Is.EqualTo(new[] { TenantSecret }));
    }

    [Test]
    public async Task TerminationRefusesAnUpstreamItCannotValidate()
    {
        await using var h = Harness(trustUpstreamCa: false);
        h.Open(SecretRule(_up.HttpsPort, terminate: true));
        using var gatewayCa = X509Certificate2.CreateFromPem(h.Gateway.CaCertificatePem);
        var marker = Unique();
        var (response, error, result, _) = await h.TlsAsync(new EgressTarget(new IPEndPoint(await h.SyntheticAsync("api.secret.test"), _up.HttpsPort)), "api.secret.test", gatewayCa, $"/{marker}");
        Assert.That(response, Is.Null);
        Assert.That(error, Is.Not.Null);
        Assert.That(result.Decision.Allowed, Is.True);
        Assert.That(result.Decision.Error, Does.StartWith("TLS to api.secret.test (upstream) failed"));
        Assert.That(_up.For(marker), Is.Empty, "no request, and so no secret, reached the untrusted server");
    }

    [Test]
    public async Task ARequestForAnotherHostOnAnInjectingConnectionClosesIt()
    {
        await using var h = Harness();
        h.Open(SecretRule(_up.HttpPort, terminate: false), $"other.test:{_up.HttpPort}");
        var marker = Unique();
        var target = new EgressTarget(new IPEndPoint(await h.SyntheticAsync("api.secret.test"), _up.HttpPort));
        var (sandbox, relay) = await h.DialAsync(target);
        using (sandbox)
        {
            await sandbox.WriteAsync(Encoding.ASCII.GetBytes($"GET /{marker}/a HTTP/1.1\r\nHost: api.secret.test\r\n\r\n"));
            var response = new StringBuilder();
            var buffer = new byte[4096];
            // Kestrel answers chunked: read up to the last chunk so nothing of this response is left in flight.
            while (!response.ToString().EndsWith("\r\n0\r\n\r\n", StringComparison.Ordinal))
            {
                int read = await sandbox.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
                Assert.That(read, Is.GreaterThan(0));
                response.Append(Encoding.ASCII.GetString(buffer, 0, read));
            }
            Assert.That(response.ToString(), Does.StartWith("HTTP/1.1 200").And.Contain($"hello api.secret.test/{marker}/a"));
            // Same kept-alive connection, another host: it would get api.secret.test's credentials.
            await sandbox.WriteAsync(Encoding.ASCII.GetBytes($"GET /{marker}/b HTTP/1.1\r\nHost: other.test\r\n\r\n"));
            Assert.That(await Loopback.ReadToEndAsync(sandbox, TimeSpan.FromSeconds(5)), Is.Empty);
        }
        var result = await relay.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.That(_up.For(marker).Select(r => r.Path), Is.EqualTo(new[] { $"/{marker}/a" }));
        Assert.That(result.CloseReason, Does.Contain("is for other.test, not api.secret.test"));
        Assert.That(h.Session.GetRecentDecisions(1).Single().Reason, Does.StartWith("closed mid-connection: request 2 on the connection is for other.test"));
    }

    [Test]
    public void SecretsAreAbsentFromPolicyOptionsAndSpecText()
    {
        var options = new EgressOptions { AllowedRulePatterns = ["*:*"], Secrets = [new EgressSecretOptions { Match = "api.test", Headers = new() { ["Authorization"] = OperatorSecret } }] };
        var spec = new EgressPolicySpec { Allow = [SecretRule(443, terminate: false)] };
        using var gateway = new EgressGateway(options);
        var policy = gateway.CreatePolicy(spec).Policy!;
        var text = string.Join("\n", options, options.Secrets[0], spec, spec.Allow[0], policy, policy.Allow[0], policy.Allow[0].Headers[0], gateway.Settings.Secrets[0]);
        Assert.That(text, Does.Contain("Authorization"));
        Assert.That(text, Does.Not.Contain("SECRET"));
    }

    private static void AssertNoSecretIn(RelayHarness h)
    {
        var decisions = h.Session.GetRecentDecisions(1000).Concat(h.Raised).ToList();
        Assert.That(decisions, Is.Not.Empty);
        var text = string.Join("\n", decisions.Select(d => d.ToString() + JsonSerializer.Serialize(d with { ResolvedAddress = null, DialedAddress = null })));
        Assert.That(text, Does.Not.Contain("SECRET"));
        Assert.That(text, Does.Contain("Authorization"), "header names are logged, values are not");
        Assert.That(h.Session.Policy.ToString(), Does.Not.Contain("SECRET"));
    }
}

public sealed class CertificateAuthorityTests
{
    private string _directory = null!;

    [SetUp]
    public void CreateDirectory() => _directory = Directory.CreateTempSubdirectory("egress-ca-").FullName;

    [TearDown]
    public void RemoveDirectory() => Directory.Delete(_directory, recursive: true);

    [Test]
    public void AGeneratedCaIsPersistedPrivatelyAndReloaded()
    {
        var options = TestGateways.Options(o => o.Tls.CaDirectory = Path.Combine(_directory, "ca"));
        string pem;
        using (var first = new EgressGateway(options))
        {
            pem = first.CaCertificatePem!;
            Assert.That(first.TlsTerminationAvailable, Is.True);
        }
        var file = Path.Combine(_directory, "ca", Tls.EgressCertificateAuthority.FileName);
        Assert.That(File.ReadAllText(file), Does.Contain("PRIVATE KEY"));
        if (!OperatingSystem.IsWindows())
        {
            Assert.That(File.GetUnixFileMode(file), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));
        }
        Assert.That(File.ReadAllText(Path.Combine(_directory, "ca", Tls.EgressCertificateAuthority.PublicFileName)), Is.EqualTo(pem));
        using var second = new EgressGateway(options);
        Assert.That(second.CaCertificatePem, Is.EqualTo(pem), "the same CA after a restart");
        using var certificate = X509Certificate2.CreateFromPem(pem);
        Assert.That(certificate.Extensions.OfType<X509BasicConstraintsExtension>().Single().CertificateAuthority, Is.True);
    }

    [Test]
    public void AGeneratedCaCanBeRsa()
    {
        using var gateway = new EgressGateway(TestGateways.Options(o =>
        {
            o.Tls.CaDirectory = _directory;
            o.Tls.CaKeyAlgorithm = "Rsa";
        }));
        using var ca = X509Certificate2.CreateFromPem(gateway.CaCertificatePem);
        Assert.That(ca.GetRSAPublicKey()!.KeySize, Is.EqualTo(3072));
        Assert.That(gateway.Leaves!.Get("rsa.test").TargetCertificate.Issuer, Is.EqualTo(ca.Subject));

        var e = Assert.Throws<InvalidOperationException>(() => new EgressGateway(TestGateways.Options(o =>
        {
            o.Tls.CaDirectory = Path.Combine(_directory, "other");
            o.Tls.CaKeyAlgorithm = "Dsa";
        })));
        Assert.That(e!.Message, Does.Contain("must be ECDsa or Rsa"));
    }

    [Test]
    public void AnOperatorRsaCaIsLoadedFromPemFilesAndIssuesLeaves()
    {
        using var ca = TestPki.CreateCa("Operator RSA CA", rsa: true);
        var certificatePath = Path.Combine(_directory, "ca.crt");
        var keyPath = Path.Combine(_directory, "ca.key");
        File.WriteAllText(certificatePath, ca.ExportCertificatePem());
        File.WriteAllText(keyPath, ca.GetRSAPrivateKey()!.ExportPkcs8PrivateKeyPem());
        using var gateway = new EgressGateway(TestGateways.Options(o =>
        {
            o.Tls.CaCertificatePath = certificatePath;
            o.Tls.CaKeyPath = keyPath;
            o.Tls.LeafCacheSize = 2;
        }));
        Assert.That(gateway.CaCertificatePem, Is.EqualTo(ca.ExportCertificatePem()));
        var leaf = gateway.Leaves!.Get("a.test").TargetCertificate;
        Assert.That(leaf.Issuer, Is.EqualTo(ca.Subject));
        using (var chain = new X509Chain())
        {
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.Add(ca);
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            Assert.That(chain.Build(leaf), Is.True);
        }
        gateway.Leaves.Get("b.test");
        gateway.Leaves.Get("c.test");
        gateway.Leaves.Get("a.test");
        Assert.That(gateway.Leaves.Count, Is.EqualTo(2), "the cache is bounded");
        Assert.That(gateway.Leaves.Issued, Is.EqualTo(4), "a.test was evicted and issued again");
    }

    [Test]
    public void ABadCaFailsAtStartupAndTerminationNeedsACa()
    {
        var path = Path.Combine(_directory, "not-a-ca.pem");
        using var leaf = TestPki.IssueServer(TestPki.CreateCa("x"), "leaf.test");
        File.WriteAllText(path, leaf.ExportCertificatePem() + "\n" + leaf.GetECDsaPrivateKey()!.ExportPkcs8PrivateKeyPem());
        var e = Assert.Throws<InvalidOperationException>(() => new EgressGateway(TestGateways.Options(o => o.Tls.CaCertificatePath = path)));
        Assert.That(e!.Message, Does.Contain("is not a CA certificate"));

        var noCa = Assert.Throws<InvalidOperationException>(() => new EgressGateway(TestGateways.Options(o =>
            o.Secrets = [new EgressSecretOptions { Match = "api.test", TerminateTls = true, Headers = new() { ["X-Key"] = "v" } }])));
        Assert.That(noCa!.Message, Does.Contain("no CA is configured"));
    }
}
