using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using Microsoft.Extensions.Options;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Egress;
using SandboxKit.Egress.Dns;
using SandboxKit.Egress.Policy;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Network;

/// <summary>
/// Egress by allow-list, enforced outside the sandbox. A session with a policy keeps <c>--network none</c>; its
/// supervisor answers the sandbox's DNS on 127.0.0.1 and catches its outbound TCP connections, and relays each one on
/// its channel to this server, where <see cref="EgressGateway"/> decides it (HTTP by Host, TLS by SNI, resolving names
/// itself through its hosts map or resolver and checking every address against the deny ranges), dials upstream and
/// adds configured headers. So the sandbox has no route anywhere, under runc and runsc alike, and what it claims
/// (its own /etc/hosts, an SNI) decides nothing.
/// The policy, header values included, is kept in a root-only file per session (not in engine labels, which anyone
/// with engine access can read, and which cannot change after a PATCH), so it survives a server restart.
/// </summary>
internal sealed class EgressService : IDisposable
{
    private static readonly int[] WebPorts = [80, 443];

    private readonly EgressGateway _gateway;
    private readonly SandboxOptions _options;
    private readonly UsageMeter _usage;
    private readonly ILogger<EgressService> _logger;
    private readonly string _stateDirectory;
    private readonly ConcurrentDictionary<string, SupervisorConnection> _attached = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _tenants = new(StringComparer.Ordinal);

    public EgressService(IConfiguration configuration, IOptions<SandboxOptions> options, UsageMeter usage, ILoggerFactory loggers)
    {
        _options = options.Value;
        _usage = usage;
        _logger = loggers.CreateLogger<EgressService>();
        _stateDirectory = Path.Combine(_options.StateDirectory is { Length: > 0 } d ? d : Path.Combine("/var/lib/sandboxkit/state", _options.InstanceName), "egress");
        var egressOptions = EgressOptions.FromConfiguration(configuration);
        if (egressOptions.AllowedRulePatterns.Count + egressOptions.Secrets.Count > 0
            && string.IsNullOrWhiteSpace(egressOptions.Tls.CaDirectory) && string.IsNullOrWhiteSpace(egressOptions.Tls.CaCertificatePath))
        {
            // A deployment that allows egress at all gets its own CA for the rules that opt into TLS termination, kept
            // root-only beside the policies; a server without egress writes nothing.
            egressOptions.Tls.CaDirectory = _stateDirectory;
        }
        _gateway = new EgressGateway(egressOptions, loggers.CreateLogger<EgressGateway>());
        _gateway.DecisionRecorded += (_, decision) =>
        {
            if (_tenants.TryGetValue(decision.SessionId, out var tenant))
            {
                _usage.EgressDecided(tenant, decision.Allowed);
            }
        };
    }

    /// <summary>True when the operator allows tenants any egress rule at all.</summary>
    public bool Available => _gateway.Settings.AllowedPatterns.Count > 0;

    /// <summary>Checks a requested policy against the operator's bounds; null stays null (no network).</summary>
    /// <exception cref="SandboxError">400 with every problem found.</exception>
    public EgressPolicyRequest? Validate(EgressPolicyRequest? request)
    {
        if (request is null || request.Allow.Count == 0)
        {
            return null;
        }
        var result = _gateway.CreatePolicy(ToSpec(request));
        if (!result.IsValid)
        {
            throw SandboxError.Invalid("egress: " + string.Join("; ", result.Errors));
        }
        return request;
    }

    /// <summary>
    /// Connects a session's supervisor connection to the gateway: takes its relay channels and turns the relay on with
    /// the session's policy. Idempotent per connection; a session without a policy gets nothing.
    /// </summary>
    public async Task AttachAsync(Session session, SupervisorConnection connection, CancellationToken cancellationToken)
    {
        var request = session.Egress;
        if (request is null || (_attached.TryGetValue(session.Id, out var current) && ReferenceEquals(current, connection)))
        {
            return;
        }
        var policy = _gateway.CreatePolicy(ToSpec(request));
        if (!policy.IsValid)
        {
            // The operator's bounds changed since: the session keeps no network rather than a policy it may not have.
            _logger.LogWarning("Egress policy of session {Session} is no longer allowed ({Errors}); its egress stays off", session.Id, string.Join("; ", policy.Errors));
            return;
        }
        _tenants[session.Id] = session.Tenant;
        if (!_gateway.TryGetSession(session.Id, out var egress))
        {
            egress = _gateway.OpenSession(session.Id, policy.Policy);
        }
        else
        {
            egress.ReplacePolicy(policy.Policy);
        }
        connection.HandleIncomingChannels((channel, body) => RelayAsync(egress, connection, channel, body));
        await ConfigureAsync(session, connection, request, egress, cancellationToken).ConfigureAwait(false);
        _attached[session.Id] = connection;
    }

    /// <summary>Changes a live session's policy (null or empty: no network); connections the new policy no longer allows are closed.</summary>
    public async Task<EgressPolicyInfo?> UpdateAsync(Session session, SupervisorConnection connection, EgressPolicyRequest? request, CancellationToken cancellationToken)
    {
        request = Validate(request);
        if (session.NetworkMode != "none")
        {
            throw SandboxError.Invalid($"Session {session.Id} uses the network '{session.NetworkMode}'; egress policies are for sessions without a network.");
        }
        session.Egress = request;
        await SaveAsync(session).ConfigureAwait(false);
        if (request is null)
        {
            _gateway.CloseSession(session.Id);
            _attached.TryRemove(session.Id, out _);
            connection.HandleIncomingChannels(null);
            await SendConfigureAsync(connection, new EgressRelayConfig { Enabled = false }, cancellationToken).ConfigureAwait(false);
            return null;
        }
        _attached.TryRemove(session.Id, out _);
        await AttachAsync(session, connection, cancellationToken).ConfigureAwait(false);
        return Describe(request);
    }

    /// <summary>The session's recent decisions and counters.</summary>
    public EgressLog Log(Session session, int limit)
    {
        if (!_gateway.TryGetSession(session.Id, out var egress))
        {
            return new EgressLog { Entries = [], Allowed = 0, Denied = 0, BytesIn = 0, BytesOut = 0 };
        }
        var counters = egress.Counters;
        return new EgressLog
        {
            Entries = egress.GetRecentDecisions(Math.Clamp(limit, 1, 1000)).Select(d => new EgressLogEntry
            {
                At = d.Timestamp,
                Kind = d.Kind switch { Egress.Decisions.EgressDecisionKind.Dns => "dns", Egress.Decisions.EgressDecisionKind.Tcp => "tcp", _ => "policy-change" },
                Allowed = d.Allowed,
                Reason = d.Reason,
                Name = d.Name,
                Port = d.Port,
                DialedAddress = d.DialedAddress?.ToString(),
                ResolvedAddress = d.ResolvedAddress?.ToString(),
                Protocol = d.Protocol,
                InjectedHeaders = d.InjectedHeaderNames.Count > 0 ? d.InjectedHeaderNames : null,
            }).ToList(),
            Allowed = counters.Allowed,
            Denied = counters.Denied,
            BytesOut = counters.BytesUp,
            BytesIn = counters.BytesDown,
        };
    }

    /// <summary>What the session shows of its policy: rules and header names, never values.</summary>
    public static EgressPolicyInfo? Describe(EgressPolicyRequest? request) => request is null ? null : new EgressPolicyInfo
    {
        Allow = request.Allow,
        Deny = request.Deny ?? [],
        Headers = request.Headers?.Select(h => new EgressHeaderNames { Match = h.Match, Names = h.Headers.Keys.ToList(), TerminateTls = h.TerminateTls }).ToList(),
    };

    /// <summary>Persists a session's policy (root-only file); null removes it.</summary>
    public async Task SaveAsync(Session session)
    {
        var file = StateFile(session.Id);
        if (session.Egress is null)
        {
            File.Delete(file);
            return;
        }
        Directory.CreateDirectory(_stateDirectory);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(_stateDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        var temporary = file + ".tmp";
        var streamOptions = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            streamOptions.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        await using (var stream = new FileStream(temporary, streamOptions))
        {
            await JsonSerializer.SerializeAsync(stream, session.Egress, SandboxJsonContext.Default.EgressPolicyRequest).ConfigureAwait(false);
        }
        File.Move(temporary, file, overwrite: true);
    }

    /// <summary>The persisted policy of an adopted session, or null.</summary>
    public EgressPolicyRequest? Load(string sessionId)
    {
        try
        {
            using var stream = File.OpenRead(StateFile(sessionId));
            return JsonSerializer.Deserialize(stream, SandboxJsonContext.Default.EgressPolicyRequest);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
        catch (JsonException e)
        {
            _logger.LogWarning("Egress policy of session {Session} is unreadable ({Message}); its egress stays off", sessionId, e.Message);
            return null;
        }
    }

    /// <summary>Forgets a session: its gateway state and its policy file.</summary>
    public void Forget(string sessionId)
    {
        _gateway.CloseSession(sessionId);
        _attached.TryRemove(sessionId, out _);
        _tenants.TryRemove(sessionId, out _);
        try
        {
            File.Delete(StateFile(sessionId));
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Removes policy files of sessions that no longer exist (a crash between steps, an earlier server).</summary>
    public int SweepOrphans(IReadOnlySet<string> liveSessions)
    {
        if (!Directory.Exists(_stateDirectory))
        {
            return 0;
        }
        var removed = 0;
        foreach (var file in Directory.EnumerateFiles(_stateDirectory, "*.json"))
        {
            if (!liveSessions.Contains(Path.GetFileNameWithoutExtension(file)))
            {
                File.Delete(file);
                removed++;
            }
        }
        return removed;
    }

    public void Dispose() => _gateway.Dispose();

    private string StateFile(string sessionId) => Path.Combine(_stateDirectory, sessionId + ".json");

    private async Task ConfigureAsync(Session session, SupervisorConnection connection, EgressPolicyRequest request, EgressSession egress, CancellationToken cancellationToken)
    {
        var ports = new SortedSet<int>(WebPorts);
        foreach (var rule in request.Allow)
        {
            // An explicit port (pypi.org:8443, 10.1.2.0/24:5432) needs its own listener; ':*' relays the listed ones.
            var colon = rule.LastIndexOf(':');
            if (colon > 0 && int.TryParse(rule[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port)
                && port is > 0 and < 65536 && !rule.EndsWith(']'))
            {
                ports.Add(port);
            }
        }
        var terminates = request.Headers?.Any(h => h.TerminateTls) == true || _gateway.Settings.Secrets.Any(s => s.TerminateTls);
        var config = new EgressRelayConfig
        {
            Enabled = true,
            Dns = true,
            TcpPorts = ports.Take(64).ToList(),
            // Connections to IP literals are caught too (a local default route); gVisor cannot, and there only names work.
            CatchAllDestinations = session.Runtime != "runsc",
            CaPem = terminates ? _gateway.CaCertificatePem : null,
            Mappings = egress.GetDnsMappings().Select(m => new DnsMapping { Name = m.Name, Address = m.Address.ToString() }).ToList(),
        };
        await SendConfigureAsync(connection, config, cancellationToken).ConfigureAwait(false);
    }

    private async Task SendConfigureAsync(SupervisorConnection connection, EgressRelayConfig config, CancellationToken cancellationToken)
    {
        await using var channel = await connection.OpenAsync(FrameType.Configure, new ConfigureRequest { Egress = config }, ProtocolJsonContext.Default.ConfigureRequest, cancellationToken)
            .ConfigureAwait(false);
        while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
        {
            if (message.Body is ConfigureResult result)
            {
                foreach (var warning in result.Warnings ?? [])
                {
                    _logger.LogWarning("Egress relay: {Warning}", SupervisorConnection.Sanitize(warning, 300));
                }
                return;
            }
            if (message.IsFinal)
            {
                throw Exec.SupervisorErrors.Unexpected(message, "the relay's configuration answer");
            }
        }
        throw SandboxError.SupervisorUnavailable("The supervisor closed the configuration request without an answer.");
    }

    private async Task RelayAsync(EgressSession egress, SupervisorConnection connection, SupervisorChannel channel, object body)
    {
        switch (body)
        {
            case DnsQueryMessage query:
                byte[] packet;
                try
                {
                    packet = Convert.FromBase64String(query.Packet);
                }
                catch (FormatException)
                {
                    await connection.AnswerDnsAsync(channel, new DnsAnswerMessage()).ConfigureAwait(false);
                    return;
                }
                var transport = query.Transport == "tcp" ? DnsTransport.Tcp : DnsTransport.Udp;
                var answer = await _gateway.HandleDnsQueryAsync(egress, packet, transport).ConfigureAwait(false);
                await connection.AnswerDnsAsync(channel, new DnsAnswerMessage
                {
                    Packet = answer.Response is { } response ? Convert.ToBase64String(response) : null,
                    Mapping = answer.Mapping is { } m ? new DnsMapping { Name = m.Name, Address = m.Address.ToString() } : null,
                }).ConfigureAwait(false);
                return;
            case OutboundConnection outbound when IPAddress.TryParse(outbound.Address, out var address) && outbound.Port is > 0 and < 65536:
                var stream = new SupervisorStream(channel);
                var result = await _gateway.RelayAsync(stream, new EgressTarget(new IPEndPoint(address, outbound.Port), outbound.Name), egress).ConfigureAwait(false);
                if (_tenants.TryGetValue(egress.Id, out var tenant))
                {
                    _usage.EgressRelayed(tenant, result.BytesUp + result.BytesDown);
                }
                return;
            default:
                await channel.SendAsync(FrameType.Kill, ReadOnlyMemory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
                return;
        }
    }

    private static EgressPolicySpec ToSpec(EgressPolicyRequest request)
    {
        var headers = (request.Headers ?? []).ToDictionary(h => h.Match, StringComparer.OrdinalIgnoreCase);
        var unmatched = headers.Keys.Where(k => !request.Allow.Contains(k, StringComparer.OrdinalIgnoreCase)).ToList();
        if (unmatched.Count > 0)
        {
            throw SandboxError.Invalid($"egress: headers for {string.Join(", ", unmatched)}, which is not an allow rule.");
        }
        return new EgressPolicySpec
        {
            Allow = request.Allow.Select(rule => headers.TryGetValue(rule, out var h)
                ? new EgressAllowRuleSpec(rule) { Headers = h.Headers.ToDictionary(), TerminateTls = h.TerminateTls }
                : new EgressAllowRuleSpec(rule)).ToList(),
            Deny = request.Deny?.ToList() ?? [],
        };
    }
}
