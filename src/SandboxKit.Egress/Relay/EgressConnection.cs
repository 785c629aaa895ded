using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using SandboxKit.Egress.Decisions;
using SandboxKit.Egress.Policy;
using SandboxKit.Egress.Resolution;

namespace SandboxKit.Egress.Relay;

/// <summary>
/// One relayed connection, start to end: sniff, find the destination, decide, dial, (CONNECT: answer and sniff the
/// tunnel), (terminate TLS), record, relay, clean up. Every failure ends in a result, never an exception.
/// </summary>
/// <remarks>
/// The destination is, in this order: the request's own authority when the sandbox uses the gateway as a proxy
/// (CONNECT, or an absolute-form request URI); else, for a synthetic address, the name this session gave it, which an
/// SNI or Host must agree with; else the dialed IP literal, checked as such whatever name the traffic claims (a
/// sandbox that points an allowed name at an IP in its own /etc/hosts reaches nothing the IP rules do not allow).
/// A name is only ever dialed at the addresses the gateway itself resolved.
/// </remarks>
internal sealed class EgressConnection
{
    private const int MaxAddressesTried = 3;
    private static readonly byte[] ConnectEstablished = "HTTP/1.1 200 Connection Established\r\n\r\n"u8.ToArray();

    private readonly EgressGateway _gateway;
    private readonly EgressSession _session;
    private readonly Stream _sandbox;
    private readonly EgressTarget _target;
    private readonly CancellationToken _cancellation;
    private readonly EgressSettings _settings;

    // What the decision record says, filled in as it becomes known.
    private readonly IPAddress _dialed;
    private string? _name;
    private int _port;
    private string _protocol = "opaque";
    private IPAddress? _resolved;
    private bool _terminated;
    private IReadOnlyList<string> _headerNames = [];
    private EgressDecision? _decision;

    private Socket? _socket;
    private SslStream? _upstreamTls;
    private SslStream? _sandboxTls;
    private Task<int>? _pendingRead;

    /// <summary>Prepares the connection.</summary>
    public EgressConnection(EgressGateway gateway, EgressSession session, Stream sandbox, EgressTarget target, CancellationToken cancellationToken)
    {
        _gateway = gateway;
        _session = session;
        _sandbox = sandbox;
        _target = target;
        _cancellation = cancellationToken;
        _settings = gateway.Settings;
        _dialed = IpText.Canonical(target.Dialed.Address);
        _port = target.Dialed.Port;
    }

    /// <summary>Runs the connection to its end.</summary>
    public async Task<EgressRelayResult> RunAsync()
    {
        if (!_session.TryAcquireConnection())
        {
            var decision = Record(false, _session.IsClosed
                ? "the session is closed"
                : $"the session already has {_session.MaxConnections} open connections");
            Abort();
            return new EgressRelayResult(decision, 0, 0, "denied");
        }
        try
        {
            return await RunCoreAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // The sandbox closing mid-sniff, a cancelled caller, or a bug: the connection ends, the server goes on.
            var reason = _cancellation.IsCancellationRequested ? "cancelled by the caller" : "failed: " + StreamRelay.Describe(e);
            var decision = _decision ?? Record(false, "the connection ended before a decision: " + reason);
            return new EgressRelayResult(decision, 0, 0, reason);
        }
        finally
        {
            Abort();
            TrafficSniffer.Observe(_pendingRead);
            _session.ReleaseConnection();
        }
    }

    private async Task<EgressRelayResult> RunCoreAsync()
    {
        var buffer = new byte[_settings.MaxHeadBytes];
        var sniff = await TrafficSniffer.SniffAsync(_sandbox, buffer, 0, _settings.FirstByteTimeout, _settings.PeekTimeout, _cancellation).ConfigureAwait(false);
        _pendingRead = sniff.PendingRead;
        _protocol = sniff.Protocol;
        _name = sniff.Name;
        if (sniff.Kind == TrafficKind.Malformed)
        {
            return await DenyAsync(sniff.Error ?? "malformed traffic", sniff).ConfigureAwait(false);
        }

        // 1. The destination.
        string? name;
        IPAddress? literal;
        bool proxyForm = sniff.Kind == TrafficKind.Connect || (sniff.Kind == TrafficKind.Http && sniff.Port is not null);
        if (proxyForm)
        {
            name = sniff.Name;
            literal = sniff.Literal;
            _port = sniff.Port!.Value;
        }
        else if (_session.Synthetic.InPool(_dialed))
        {
            var mapped = _session.Synthetic.NameOf(_dialed);
            if (mapped is null && _target.NameHint is { } hint && _session.Synthetic.TryRestore(hint, _dialed))
            {
                mapped = _session.Synthetic.NameOf(_dialed);
            }
            if (mapped is null)
            {
                return await DenyAsync($"{_dialed} is a synthetic address this session never handed out", sniff).ConfigureAwait(false);
            }
            if (sniff.Name is { } claimed && claimed != mapped)
            {
                return await DenyAsync($"the {Source(sniff)} names {claimed}, but the sandbox dialed {_dialed}, the synthetic address of {mapped}", sniff).ConfigureAwait(false);
            }
            if (sniff.Literal is { } claimedAddress)
            {
                return await DenyAsync($"the {Source(sniff)} names {claimedAddress}, but the sandbox dialed {_dialed}, the synthetic address of {mapped}", sniff).ConfigureAwait(false);
            }
            name = mapped;
            literal = null;
        }
        else
        {
            name = null;
            literal = _dialed;
        }
        _name = name ?? sniff.Name;

        // 2. The decision, and the addresses a name really has.
        var policy = _session.Policy;
        IReadOnlyList<IPAddress> addresses;
        string reason;
        if (name is not null)
        {
            var match = policy.CheckName(name, _port);
            if (!match.Allowed)
            {
                return await DenyAsync(match.Reason, sniff).ConfigureAwait(false);
            }
            var resolution = await _gateway.Resolver.ResolveAsync(name, _cancellation).ConfigureAwait(false);
            if (resolution.Status != ResolutionStatus.Resolved)
            {
                return await DenyAsync(resolution.Status == ResolutionStatus.NotFound
                    ? $"{name} does not resolve"
                    : $"resolving {name} failed ({resolution.Source} resolver)", sniff).ConfigureAwait(false);
            }
            foreach (var address in resolution.Addresses)
            {
                if (policy.CheckReachable(address, _port, _settings.Guard) is { } denied)
                {
                    _resolved = address;
                    return await DenyAsync($"{name} resolves to a denied address: {denied}", sniff).ConfigureAwait(false);
                }
            }
            addresses = resolution.Addresses;
            reason = match.Reason;
        }
        else
        {
            var match = policy.CheckLiteral(literal!, _port, _settings.Guard);
            if (!match.Allowed)
            {
                var claim = sniff.Name is { } claimed ? $" (the {Source(sniff)} claims {claimed})" : "";
                return await DenyAsync(match.Reason + claim, sniff).ConfigureAwait(false);
            }
            addresses = [literal!];
            reason = match.Reason;
        }
        var (terminate, headers) = name is null ? (false, (IReadOnlyList<HeaderInjection>)[]) : _gateway.PlanFor(policy, name, _port);

        // A slow client whose first byte came after the first-byte timeout would otherwise be relayed opaquely, without
        // the headers its destination is configured for: where there is something to add, wait for it (bounded).
        if (name is not null && (terminate || headers.Count > 0) && sniff is { Kind: TrafficKind.Opaque, Length: 0, PendingRead: { } pending })
        {
            int first;
            try
            {
                first = await pending.WaitAsync(_settings.PeekTimeout, _cancellation).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                return await DenyAsync("the sandbox sent nothing to a destination whose requests get headers", sniff).ConfigureAwait(false);
            }
            _pendingRead = null;
            if (first > 0)
            {
                sniff = await TrafficSniffer.SniffAsync(_sandbox, buffer, first, _settings.FirstByteTimeout, _settings.PeekTimeout, _cancellation).ConfigureAwait(false);
                _pendingRead = sniff.PendingRead;
                _protocol = sniff.Protocol;
                if (sniff.Kind == TrafficKind.Malformed)
                {
                    return await DenyAsync(sniff.Error ?? "malformed traffic", sniff).ConfigureAwait(false);
                }
                if ((sniff.Name is { } late && late != name) || sniff.Literal is not null || sniff.Port is not null)
                {
                    return await DenyAsync($"the {Source(sniff)} names {(object?)sniff.Name ?? sniff.Literal}, but the sandbox dialed {_dialed}, the synthetic address of {name}", sniff).ConfigureAwait(false);
                }
            }
            else
            {
                sniff = new SniffResult { Kind = TrafficKind.Opaque, Buffer = buffer };
            }
        }

        // 3. Upstream.
        string? connectError = null;
        foreach (var address in addresses.Take(MaxAddressesTried))
        {
            _resolved = address;
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_cancellation);
            timeout.CancelAfter(_settings.ConnectTimeout);
            try
            {
                _socket = await _gateway.Connector.ConnectAsync(new IPEndPoint(address, _port), timeout.Token).ConfigureAwait(false);
                break;
            }
            catch (Exception e) when (!_cancellation.IsCancellationRequested)
            {
                connectError = e is OperationCanceledException ? "timed out" : StreamRelay.Describe(e);
            }
        }
        if (_socket is null)
        {
            var failed = Record(true, reason, $"connecting to {IpText.Format(_resolved!, _port)} failed: {connectError}");
            await RespondAsync(sniff, "502 Bad Gateway", "The egress gateway could not reach the destination.").ConfigureAwait(false);
            return new EgressRelayResult(failed, 0, 0, "upstream unreachable");
        }
        var upstream = new NetworkStream(_socket, ownsSocket: false);

        // 4. A CONNECT tunnel: answer, then look at what goes through it.
        var traffic = sniff;
        if (sniff.Kind == TrafficKind.Connect)
        {
            await _sandbox.WriteAsync(ConnectEstablished, _cancellation).ConfigureAwait(false);
            int leftover = sniff.Length - sniff.Head!.Length;
            Buffer.BlockCopy(buffer, sniff.Head.Length, buffer, 0, leftover);
            traffic = await TrafficSniffer.SniffAsync(_sandbox, buffer, leftover, _settings.FirstByteTimeout, _settings.PeekTimeout, _cancellation).ConfigureAwait(false);
            _pendingRead = traffic.PendingRead;
            _protocol = "connect/" + traffic.Protocol;
            if (traffic.Kind == TrafficKind.Malformed)
            {
                return await DenyAsync("inside the CONNECT tunnel: " + traffic.Error, traffic).ConfigureAwait(false);
            }
            if (name is not null && ((traffic.Name is { } inner && inner != name) || traffic.Literal is not null))
            {
                return await DenyAsync($"the CONNECT was for {name}, but the {Source(traffic)} inside names {(object?)traffic.Name ?? traffic.Literal}", traffic).ConfigureAwait(false);
            }
        }

        // 5. TLS termination: upstream first, so a bad upstream never gets a handshake with the sandbox.
        _terminated = terminate && traffic.Kind == TrafficKind.Tls && name is not null && _gateway.Leaves is not null;
        _headerNames = headers.Select(h => h.Name).ToList();
        if (_terminated)
        {
            _upstreamTls = new SslStream(upstream, leaveInnerStreamOpen: true, _gateway.UpstreamValidator.Validate);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_cancellation);
            timeout.CancelAfter(_settings.HandshakeTimeout);
            try
            {
                await _upstreamTls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = name,
                    ApplicationProtocols = [SslApplicationProtocol.Http11],
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                }, timeout.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (!_cancellation.IsCancellationRequested)
            {
                var detail = e is AuthenticationException ? e.Message : e is OperationCanceledException ? "timed out" : StreamRelay.Describe(e);
                var failed = Record(true, reason, $"TLS to {name} (upstream) failed: {detail}");
                return new EgressRelayResult(failed, 0, 0, "upstream TLS failed");
            }
        }

        _decision = Record(true, reason);

        // 6. Relay until done.
        using var activity = new RelayActivity(_settings.IdleTimeout, _session.AddBytes, _cancellation);
        long id = _session.Register(new LiveConnection(name, _resolved!, _port, _dialed, _protocol, activity));
        try
        {
            string closeReason;
            var upstreamEnd = RelayEnd.ForSocket(_socket, upstream);
            var sandboxEnd = RelayEnd.ForSandbox(_sandbox, _sandbox);
            var planName = name;
            Func<IReadOnlyList<HeaderInjection>> currentHeaders = () => _gateway.PlanFor(_session.Policy, planName!, _port).Headers;
            if (_terminated)
            {
                var replay = traffic.Replay(_sandbox);
                _pendingRead = null;
                _sandboxTls = new SslStream(replay, leaveInnerStreamOpen: true);
                using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(activity.Token))
                {
                    timeout.CancelAfter(_settings.HandshakeTimeout);
                    try
                    {
                        await _sandboxTls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                        {
                            ServerCertificateContext = _gateway.Leaves!.Get(name!),
                            ApplicationProtocols = [SslApplicationProtocol.Http11],
                            ClientCertificateRequired = false,
                        }, timeout.Token).ConfigureAwait(false);
                    }
                    catch (Exception e) when (!_cancellation.IsCancellationRequested)
                    {
                        var detail = e is OperationCanceledException ? "timed out" : StreamRelay.Describe(e);
                        return new EgressRelayResult(_decision, 0, 0, $"the sandbox's TLS handshake failed ({detail}; does it trust the gateway CA?)");
                    }
                }
                var forwarder = new HttpRequestForwarder(name!, currentHeaders, _settings.MaxHeadBytes, new byte[_settings.MaxHeadBytes], 0);
                var tlsUp = RelayEnd.ForTls(_upstreamTls!, upstreamEnd);
                var tlsDown = RelayEnd.ForTls(_sandboxTls, sandboxEnd);
                closeReason = await StreamRelay.RunAsync(
                    token => forwarder.ForwardAsync(_sandboxTls, tlsUp, activity, token),
                    token => StreamRelay.CopyAsync(_upstreamTls!, tlsDown, _settings.BufferSize, activity.Down, token),
                    activity, Abort, _cancellation).ConfigureAwait(false);
            }
            else if (traffic.Kind == TrafficKind.Http && name is not null)
            {
                // Every request is parsed, not only the first: each must be for this name (a kept-alive connection
                // or a proxy client must not slip a second host onto an allowed upstream), and each gets the headers.
                var forwarder = new HttpRequestForwarder(name, currentHeaders, _settings.MaxHeadBytes, traffic.Buffer, traffic.Length);
                closeReason = await StreamRelay.RunAsync(
                    token => forwarder.ForwardAsync(_sandbox, upstreamEnd, activity, token),
                    token => StreamRelay.CopyAsync(upstream, sandboxEnd, _settings.BufferSize, activity.Down, token),
                    activity, Abort, _cancellation).ConfigureAwait(false);
            }
            else
            {
                var replay = traffic.Replay(_sandbox);
                _pendingRead = null;
                closeReason = await StreamRelay.RunAsync(
                    token => StreamRelay.CopyAsync(replay, upstreamEnd, _settings.BufferSize, activity.Up, token),
                    token => StreamRelay.CopyAsync(upstream, sandboxEnd, _settings.BufferSize, activity.Down, token),
                    activity, Abort, _cancellation).ConfigureAwait(false);
            }

            if (activity.Violation is { } violation)
            {
                Record(false, "closed mid-connection: " + violation);
            }
            return new EgressRelayResult(_decision, activity.BytesUp, activity.BytesDown, closeReason);
        }
        finally
        {
            _session.Unregister(id);
        }
    }

    private async Task<EgressRelayResult> DenyAsync(string reason, SniffResult sniff)
    {
        var decision = Record(false, reason);
        await RespondAsync(sniff, "403 Forbidden", $"Egress to {Display()} is not allowed by this sandbox's policy.").ConfigureAwait(false);
        return new EgressRelayResult(decision, 0, 0, "denied");
    }

    // An HTTP client gets an HTTP answer it can show its user; anything else is just closed.
    private async Task RespondAsync(SniffResult sniff, string status, string message)
    {
        if (sniff.Kind is not (TrafficKind.Http or TrafficKind.Connect))
        {
            return;
        }
        var body = message + "\n";
        var response = Encoding.ASCII.GetBytes($"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_cancellation);
        timeout.CancelAfter(TimeSpan.FromSeconds(2));
        try
        {
            await _sandbox.WriteAsync(response, timeout.Token).ConfigureAwait(false);
            await _sandbox.FlushAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or SocketException or NotSupportedException)
        {
            // The sandbox is gone; the decision is recorded either way.
        }
    }

    private EgressDecision Record(bool allowed, string reason, string? error = null)
    {
        var decision = new EgressDecision
        {
            Timestamp = _gateway.Now,
            SessionId = _session.Id,
            Kind = EgressDecisionKind.Tcp,
            Allowed = allowed,
            Reason = reason,
            Name = _name,
            Port = _port,
            DialedAddress = _dialed,
            ResolvedAddress = _resolved,
            Protocol = _protocol,
            TlsTerminated = _terminated,
            InjectedHeaderNames = allowed ? _headerNames : [],
            Error = error,
        };
        _session.Record(decision);
        return decision;
    }

    private string Display() => _name is not null ? $"{_name}:{_port}" : IpText.Format(_dialed, _port);

    private static string Source(SniffResult sniff) => sniff.Kind switch
    {
        TrafficKind.Tls => "SNI",
        TrafficKind.Connect => "CONNECT target",
        _ => "Host header",
    };

    // Tears everything down; safe to call more than once and concurrently with pending operations (that is its job).
    private void Abort()
    {
        DisposeQuietly(_sandboxTls);
        DisposeQuietly(_upstreamTls);
        DisposeQuietly(_sandbox);
        DisposeQuietly(_socket);
    }

    private static void DisposeQuietly(IDisposable? disposable)
    {
        try
        {
            disposable?.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException or InvalidOperationException)
        {
            // Already broken: disposal is best effort.
        }
    }
}
