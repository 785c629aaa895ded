using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using SandboxKit.Egress.Decisions;
using SandboxKit.Egress.Dns;
using SandboxKit.Egress.Policy;
using SandboxKit.Egress.Relay;
using SandboxKit.Egress.Resolution;
using SandboxKit.Egress.Tls;

namespace SandboxKit.Egress;

/// <summary>
/// The server side of sandbox egress. The supervisor in each sandbox relays the sandbox's DNS queries
/// (<see cref="HandleDnsQueryAsync"/>) and outbound TCP connections (<see cref="RelayAsync"/>) here; the gateway
/// decides each by the session's policy, resolves names itself, dials upstream, relays, adds configured headers, and
/// records every decision. Nothing the sandbox sends is trusted: names are taken from the traffic and cross-checked
/// against what was dialed, and every address is checked after resolution. One instance serves every session.
/// </summary>
internal sealed partial class EgressGateway : IDisposable
{
    private readonly ConcurrentDictionary<string, EgressSession> _sessions = new(StringComparer.Ordinal);
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly EgressCertificateAuthority? _authority;

    /// <summary>
    /// Creates the gateway from operator options; throws <see cref="InvalidOperationException"/> listing every invalid
    /// setting (and when a configured CA cannot be loaded or created). The other parameters replace the production
    /// dependencies (tests; a host with its own resolver).
    /// </summary>
    public EgressGateway(
        EgressOptions options,
        ILogger<EgressGateway>? logger = null,
        IEgressResolver? resolver = null,
        ISystemNameResolver? systemResolver = null,
        IUpstreamConnector? connector = null,
        TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        Settings = EgressSettings.TryCreate(options, out var errors)
            ?? throw new InvalidOperationException("Invalid egress configuration: " + string.Join("; ", errors));
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _time = time ?? TimeProvider.System;
        Resolver = resolver ?? new EgressResolver(Settings, systemResolver);
        Connector = connector ?? new SocketUpstreamConnector();
        _authority = EgressCertificateAuthority.FromOptions(options.Tls, _time);
        if (_authority is not null)
        {
            Leaves = new LeafCertificateCache(_authority, options.Tls.LeafCacheSize, TimeSpan.FromHours(options.Tls.LeafValidityHours), _time);
        }
        else if (Settings.Secrets.Any(s => s.TerminateTls))
        {
            throw new InvalidOperationException("Invalid egress configuration: Sandbox:Egress:Secrets asks for TLS termination, but no CA is configured (Sandbox:Egress:Tls:CaDirectory or CaCertificatePath).");
        }
        UpstreamValidator = UpstreamCertificateValidator.FromOptions(options.Tls);
    }

    /// <summary>Raised for every decision of every session (after it is in the session's log). Handlers must be quick; exceptions are logged and swallowed.</summary>
    public event EventHandler<EgressDecision>? DecisionRecorded;

    /// <summary>The TLS-termination CA certificate (PEM) the sandbox must trust, or null when no CA is configured.</summary>
    public string? CaCertificatePem => _authority?.CertificatePem;

    /// <summary>Whether policies may ask for <c>terminateTls</c>.</summary>
    public bool TlsTerminationAvailable => _authority is not null;

    internal EgressSettings Settings { get; }

    internal IEgressResolver Resolver { get; }

    internal IUpstreamConnector Connector { get; }

    internal LeafCertificateCache? Leaves { get; }

    internal UpstreamCertificateValidator UpstreamValidator { get; }

    internal ILogger Logger => _logger;

    internal DateTimeOffset Now => _time.GetUtcNow();

    /// <summary>Validates a tenant's policy against the operator's bounds; the errors suit a 400 response.</summary>
    public EgressPolicyResult CreatePolicy(EgressPolicySpec? spec) => EgressPolicy.Create(spec, Settings, TlsTerminationAvailable);

    /// <summary>Starts egress for a session; throws <see cref="InvalidOperationException"/> if one with this id is open.</summary>
    public EgressSession OpenSession(string sessionId, EgressPolicy policy)
    {
        ArgumentException.ThrowIfNullOrEmpty(sessionId);
        ArgumentNullException.ThrowIfNull(policy);
        var session = new EgressSession(this, sessionId, policy, Settings);
        if (!_sessions.TryAdd(sessionId, session))
        {
            throw new InvalidOperationException($"An egress session '{sessionId}' is already open.");
        }
        return session;
    }

    /// <summary>The open session with this id.</summary>
    public bool TryGetSession(string sessionId, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out EgressSession? session) =>
        _sessions.TryGetValue(sessionId, out session);

    /// <summary>Closes a session (and its connections); false when none is open with this id.</summary>
    public bool CloseSession(string sessionId)
    {
        if (!_sessions.TryGetValue(sessionId, out var session))
        {
            return false;
        }
        session.Dispose();
        return true;
    }

    /// <summary>
    /// Answers one DNS query from the sandbox (see the library README for the answer rules). Never throws for any
    /// input; a cancelled <paramref name="cancellationToken"/> throws <see cref="OperationCanceledException"/>.
    /// </summary>
    public ValueTask<EgressDnsResult> HandleDnsQueryAsync(EgressSession session, ReadOnlyMemory<byte> packet, DnsTransport transport, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(session);
        return new DnsResponder(this, session).AnswerAsync(packet, transport, cancellationToken);
    }

    /// <summary>
    /// Relays one outbound TCP connection of the sandbox: inspects its first bytes, decides, dials, relays both ways
    /// until both sides are done (or idle, a policy change, the session's end or <paramref name="cancellationToken"/>
    /// closes it). The gateway owns <paramref name="sandboxSide"/> from here on and disposes it. Never throws for
    /// anything the sandbox or upstream does; the result says what happened.
    /// </summary>
    public Task<EgressRelayResult> RelayAsync(Stream sandboxSide, EgressTarget target, EgressSession session, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sandboxSide);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(session);
        return new EgressConnection(this, session, sandboxSide, target, cancellationToken).RunAsync();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var session in _sessions.Values)
        {
            session.Dispose();
        }
        _authority?.Dispose();
    }

    /// <summary>Why <paramref name="policy"/> no longer allows an established connection, or null if it does.</summary>
    internal string? RecheckConnection(EgressPolicy policy, LiveConnection connection)
    {
        if (connection.Name is { } name)
        {
            var match = policy.CheckName(name, connection.Port);
            return match.Allowed ? policy.CheckReachable(connection.Address, connection.Port, Settings.Guard) : match.Reason;
        }
        var literal = policy.CheckLiteral(connection.Address, connection.Port, Settings.Guard);
        return literal.Allowed ? null : literal.Reason;
    }

    /// <summary>
    /// TLS termination and headers for a connection to <paramref name="name"/>:<paramref name="port"/>: the tenant's
    /// most specific matching allow rule, merged with the operator's most specific matching secret (whose headers win
    /// over the tenant's of the same name; either side may ask for termination).
    /// </summary>
    internal (bool TerminateTls, IReadOnlyList<HeaderInjection> Headers) PlanFor(EgressPolicy policy, string name, int port)
    {
        var tenant = policy.CheckName(name, port).Rule;
        EgressRule? secret = null;
        foreach (var rule in Settings.Secrets)
        {
            if (rule.MatchesName(name) && rule.Ports.Contains(port) && (secret is null || rule.Specificity > secret.Specificity))
            {
                secret = rule;
            }
        }
        if (tenant is null)
        {
            return (false, []);
        }
        if (secret is null)
        {
            return (tenant.TerminateTls, tenant.Headers);
        }
        var headers = new List<HeaderInjection>(secret.Headers);
        headers.AddRange(tenant.Headers.Where(t => !secret.Headers.Any(s => string.Equals(s.Name, t.Name, StringComparison.OrdinalIgnoreCase))));
        return (tenant.TerminateTls || secret.TerminateTls, headers);
    }

    internal void Forget(EgressSession session) =>
        ((ICollection<KeyValuePair<string, EgressSession>>)_sessions).Remove(new KeyValuePair<string, EgressSession>(session.Id, session));

    internal void Raise(EgressDecision decision)
    {
        if (decision.Allowed)
        {
            LogAllowed(_logger, decision);
        }
        else
        {
            LogDenied(_logger, decision);
        }
        var handler = DecisionRecorded;
        if (handler is null)
        {
            return;
        }
        try
        {
            handler(this, decision);
        }
        catch (Exception e)
        {
            LogHandlerFailed(_logger, e);
        }
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Debug, Message = "Egress {Decision}")]
    private static partial void LogAllowed(ILogger logger, EgressDecision decision);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Egress {Decision}")]
    private static partial void LogDenied(ILogger logger, EgressDecision decision);

    [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "An egress DecisionRecorded handler failed")]
    private static partial void LogHandlerFailed(ILogger logger, Exception exception);
}
