using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using SandboxKit.Egress.Decisions;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Tests;

/// <summary>
/// A gateway with one session, driven the way the supervisor would: the test plays the sandbox program on one end of
/// a loopback socket pair and hands the other end to <see cref="EgressGateway.RelayAsync"/>.
/// </summary>
internal sealed class RelayHarness : IAsyncDisposable
{
    /// <summary>What the sandbox "dials" when it uses the gateway as its HTTP proxy (the supervisor's listener).</summary>
    public static readonly IPEndPoint ProxyEndpoint = new(IPAddress.Parse("127.0.0.1"), 3128);

    private readonly List<Task<EgressRelayResult>> _relays = [];
    private readonly List<HttpClient> _clients = [];

    public RelayHarness(Upstreams upstreams, Action<EgressOptions>? configure = null, CountingSystemResolver? system = null)
    {
        Upstreams = upstreams;
        SystemResolver = system ?? new CountingSystemResolver();
        Gateway = new EgressGateway(TestGateways.Options(o =>
        {
            foreach (var name in Upstreams.TlsNames.Concat(["echo.test", "echo2.test", "banner.test"]))
            {
                o.Hosts[name] = "127.0.0.1";
            }
            o.Hosts["private.test"] = "10.1.2.3";
            o.Hosts["metadata.test"] = "169.254.169.254";
            o.Hosts["loop.test"] = "127.0.0.2";
            o.Hosts["mapped.test"] = "::ffff:169.254.169.254";
            configure?.Invoke(o);
        }), connector: Connector, systemResolver: SystemResolver);
        Gateway.DecisionRecorded += (_, d) => { lock (Raised) { Raised.Add(d); } };
    }

    public Upstreams Upstreams { get; }

    public LoopbackOnlyConnector Connector { get; } = new();

    public CountingSystemResolver SystemResolver { get; }

    public EgressGateway Gateway { get; }

    public EgressSession Session { get; private set; } = null!;

    public List<EgressDecision> Raised { get; } = [];

    public EgressSession Open(params EgressAllowRuleSpec[] allow) => Open(allow, []);

    public EgressSession Open(EgressAllowRuleSpec[] allow, string[] deny)
    {
        Session = Gateway.OpenSession("session-" + Guid.NewGuid().ToString("N")[..8], TestGateways.Policy(Gateway, allow, deny));
        return Session;
    }

    public Task<IPAddress> SyntheticAsync(string name) => TestGateways.ResolveAsync(Gateway, Session, name);

    /// <summary>Starts a relay and returns the sandbox program's end.</summary>
    public async Task<(NetworkStream Sandbox, Task<EgressRelayResult> Relay)> DialAsync(EgressTarget target)
    {
        var (gatewaySide, sandboxSide) = await Loopback.PairAsync();
        var relay = Gateway.RelayAsync(gatewaySide, target, Session);
        lock (_relays)
        {
            _relays.Add(relay);
        }
        return (sandboxSide, relay);
    }

    /// <summary>Sends <paramref name="bytes"/>, half-closes, and reads everything that comes back.</summary>
    public async Task<(string Received, EgressRelayResult Result)> RawAsync(EgressTarget target, byte[] bytes, bool halfClose = true)
    {
        var (sandbox, relay) = await DialAsync(target);
        byte[] received;
        using (sandbox)
        {
            try
            {
                await sandbox.WriteAsync(bytes);
                if (halfClose)
                {
                    sandbox.Socket.Shutdown(SocketShutdown.Send);
                }
            }
            catch (IOException)
            {
                // The gateway may close before reading everything (it denied early).
            }
            received = await Loopback.ReadToEndAsync(sandbox, TimeSpan.FromSeconds(10));
        }
        // Closed now: without a half-close the relay waits for the sandbox's side to end too.
        var result = await relay.WaitAsync(TimeSpan.FromSeconds(10));
        return (Encoding.Latin1.GetString(received), result);
    }

    /// <summary>A TLS client with <paramref name="sni"/>; returns the response to a GET, or the exception.</summary>
    public async Task<(string? Response, Exception? Error, EgressRelayResult Result, X509Certificate2? Certificate)> TlsAsync(EgressTarget target, string sni, X509Certificate2 trust, string path = "/")
    {
        var (sandbox, relay) = await DialAsync(target);
        string? response = null;
        Exception? error = null;
        X509Certificate2? seen = null;
        using (var tls = new SslStream(sandbox, leaveInnerStreamOpen: false))
        {
            try
            {
                await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = sni,
                    RemoteCertificateValidationCallback = TestPki.TrustOnly(trust),
                    ApplicationProtocols = [SslApplicationProtocol.Http11],
                }).WaitAsync(TimeSpan.FromSeconds(10));
                seen = tls.RemoteCertificate is { } remote ? X509CertificateLoader.LoadCertificate(remote.GetRawCertData()) : null;
                await tls.WriteAsync(Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"));
                response = Encoding.UTF8.GetString(await Loopback.ReadToEndAsync(tls, TimeSpan.FromSeconds(10)));
            }
            catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException or TimeoutException)
            {
                error = e;
            }
        }
        return (response, error, await relay.WaitAsync(TimeSpan.FromSeconds(10)), seen);
    }

    /// <summary>
    /// An HttpClient whose connections go through the gateway like the sandbox's would: the host is looked up with the
    /// gateway's DNS and the synthetic address dialed; or, with <paramref name="proxy"/>, everything goes to the
    /// gateway as an HTTP proxy (CONNECT for https, absolute-form for http).
    /// </summary>
    public HttpClient Client(X509Certificate2? trust = null, bool proxy = false)
    {
        var handler = new SocketsHttpHandler
        {
            UseProxy = proxy,
            Proxy = proxy ? new WebProxy($"http://proxy.sandbox:{ProxyEndpoint.Port}") : null,
            ConnectCallback = async (context, cancellationToken) =>
            {
                var target = proxy
                    ? new EgressTarget(ProxyEndpoint)
                    : new EgressTarget(new IPEndPoint(await SyntheticAsync(context.DnsEndPoint.Host), context.DnsEndPoint.Port));
                var (sandbox, _) = await DialAsync(target);
                return sandbox;
            },
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        };
        if (trust is not null)
        {
            handler.SslOptions.RemoteCertificateValidationCallback = TestPki.TrustOnly(trust);
        }
        var client = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(15) };
        _clients.Add(client);
        return client;
    }

    /// <summary>Closes the clients and waits for every relay to end.</summary>
    public async Task<IReadOnlyList<EgressRelayResult>> FinishAsync()
    {
        foreach (var client in _clients)
        {
            client.Dispose();
        }
        _clients.Clear();
        Task<EgressRelayResult>[] relays;
        lock (_relays)
        {
            relays = [.. _relays];
        }
        return await Task.WhenAll(relays).WaitAsync(TimeSpan.FromSeconds(15));
    }

    public async ValueTask DisposeAsync()
    {
        await FinishAsync();
        Session?.Dispose();
        Gateway.Dispose();
        Assert.That(Connector.Refused, Is.Empty, "the gateway tried to dial a non-loopback address");
    }
}
