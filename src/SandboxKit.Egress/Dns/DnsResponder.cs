using SandboxKit.Egress.Decisions;
using SandboxKit.Egress.Resolution;

namespace SandboxKit.Egress.Dns;

/// <summary>
/// Answers one sandbox DNS query. Rules: an allowed name that resolves to reachable addresses gets, for A, its
/// session-stable synthetic address; for AAAA and every other type, an empty NOERROR (so clients fall back to the
/// A answer). A denied, invalid or unresolvable name gets NXDOMAIN without SOA, so nothing caches the negative
/// answer past a policy change. A resolver failure is SERVFAIL; malformed queries get FORMERR, or nothing at all when
/// not even a header can be read.
/// </summary>
internal sealed class DnsResponder
{
    private readonly EgressGateway _gateway;
    private readonly EgressSession _session;

    /// <summary>Creates a responder for one query.</summary>
    public DnsResponder(EgressGateway gateway, EgressSession session)
    {
        _gateway = gateway;
        _session = session;
    }

    /// <summary>Answers <paramref name="packet"/>.</summary>
    public async ValueTask<EgressDnsResult> AnswerAsync(ReadOnlyMemory<byte> packet, DnsTransport transport, CancellationToken cancellationToken)
    {
        DnsQuery? query = null;
        try
        {
            if (!DnsWire.TryUnframe(packet.Span, transport, out var message))
            {
                return Drop("dropped: the TCP length prefix does not match the message");
            }
            if (message.Length > DnsWire.MaxMessageBytes + 1024)
            {
                // Far beyond any real query: not even worth a header parse.
                return Drop($"dropped: {message.Length} bytes is more than a query can be");
            }
            query = DnsWire.Parse(message, out var problem, out var reason);
            if (query is null)
            {
                return Drop("dropped: " + reason);
            }
            if (problem != DnsResponseCode.NoError)
            {
                return Answer(query, problem, "malformed or unsupported query: " + reason, transport);
            }
            if (_session.IsClosed)
            {
                return Answer(query, DnsResponseCode.Refused, "the session is closed", transport);
            }
            if (query.Name is not { } name)
            {
                return Answer(query, DnsResponseCode.NameError, $"'{query.DisplayName}' is not a valid host name", transport);
            }

            var policy = _session.Policy;
            var match = policy.CheckNameForDns(name);
            if (!match.Allowed)
            {
                return Answer(query, DnsResponseCode.NameError, match.Reason, transport);
            }

            var resolution = await _gateway.Resolver.ResolveAsync(name, cancellationToken).ConfigureAwait(false);
            if (resolution.Status == ResolutionStatus.Failed)
            {
                return Answer(query, DnsResponseCode.ServerFailure, $"resolving {name} failed ({resolution.Source} resolver)", transport);
            }
            if (resolution.Status == ResolutionStatus.NotFound)
            {
                return Answer(query, DnsResponseCode.NameError, $"{name} does not resolve", transport);
            }
            foreach (var address in resolution.Addresses)
            {
                if (policy.CheckReachable(address, null, _gateway.Settings.Guard) is { } denied)
                {
                    return Answer(query, DnsResponseCode.NameError, $"{name} resolves to a denied address: {denied}", transport, resolved: address);
                }
            }

            if (query.Type != DnsType.A)
            {
                return Answer(query, DnsResponseCode.NoError, $"{match.Reason}; no {DnsType.Name(query.Type)} data (synthetic answers are IPv4 only)", transport, allowed: true, resolved: resolution.Addresses[0]);
            }
            var synthetic = _session.Synthetic.GetOrAllocate(name);
            if (synthetic is null)
            {
                return Answer(query, DnsResponseCode.ServerFailure, $"the session's synthetic address pool is full ({_session.Synthetic.Count} names)", transport);
            }
            var decision = Decide(query, true, match.Reason, synthetic, resolution.Addresses[0]);
            var response = DnsWire.Frame(DnsWire.BuildResponse(query, DnsResponseCode.NoError, synthetic, _gateway.Settings.DnsTtlSeconds), transport);
            return new EgressDnsResult(response, decision, new EgressDnsMapping(name, synthetic));
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            // Nothing the sandbox sends may surface as an exception; a bug here costs one SERVFAIL, not the channel.
            var reason = "internal error: " + e.GetType().Name;
            return query is null
                ? Drop(reason)
                : Answer(query, DnsResponseCode.ServerFailure, reason, transport);
        }
    }

    private EgressDnsResult Answer(DnsQuery query, DnsResponseCode code, string reason, DnsTransport transport, bool allowed = false, System.Net.IPAddress? resolved = null)
    {
        var decision = Decide(query, allowed, reason, null, resolved);
        var response = DnsWire.Frame(DnsWire.BuildResponse(query, code, null, _gateway.Settings.DnsTtlSeconds), transport);
        return new EgressDnsResult(response, decision, null);
    }

    private EgressDnsResult Drop(string reason) => new(null, Decide(null, false, reason, null, null), null);

    private EgressDecision Decide(DnsQuery? query, bool allowed, string reason, System.Net.IPAddress? synthetic, System.Net.IPAddress? resolved)
    {
        var decision = new EgressDecision
        {
            Timestamp = _gateway.Now,
            SessionId = _session.Id,
            Kind = EgressDecisionKind.Dns,
            Allowed = allowed,
            Reason = reason,
            Name = query?.Name ?? (query is { DisplayName.Length: > 0 } ? query.DisplayName : null),
            Protocol = query is { Question.Length: > 0 } ? DnsType.Name(query.Type) : null,
            DialedAddress = synthetic,
            ResolvedAddress = resolved,
        };
        _session.Record(decision);
        return decision;
    }
}
