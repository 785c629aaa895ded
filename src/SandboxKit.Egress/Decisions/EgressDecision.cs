using System.Net;
using System.Text;

namespace SandboxKit.Egress.Decisions;

/// <summary>What a decision was about.</summary>
internal enum EgressDecisionKind
{
    /// <summary>A DNS question.</summary>
    Dns,

    /// <summary>An outbound TCP connection.</summary>
    Tcp,

    /// <summary>An established connection closed because a new policy no longer allows it.</summary>
    PolicyChange,
}

/// <summary>
/// One egress decision, as kept in the session's log and raised by <see cref="EgressGateway.DecisionRecorded"/>.
/// It carries names, addresses, ports and reasons only; no header value is ever put in one.
/// </summary>
internal sealed record EgressDecision
{
    /// <summary>When the decision was made.</summary>
    public required DateTimeOffset Timestamp { get; init; }

    /// <summary>The session.</summary>
    public required string SessionId { get; init; }

    /// <summary>What was decided.</summary>
    public required EgressDecisionKind Kind { get; init; }

    /// <summary>Whether the policy allowed it.</summary>
    public required bool Allowed { get; init; }

    /// <summary>Why, in words (the matching rule, or what denied it).</summary>
    public required string Reason { get; init; }

    /// <summary>The host name the decision was about, if any (normalised; from DNS, SNI, Host, CONNECT or the synthetic mapping).</summary>
    public string? Name { get; init; }

    /// <summary>The destination port (TCP).</summary>
    public int? Port { get; init; }

    /// <summary>The address the sandbox dialed (TCP), or the synthetic address answered (DNS).</summary>
    public IPAddress? DialedAddress { get; init; }

    /// <summary>The real address connected to, or that the name resolved to.</summary>
    public IPAddress? ResolvedAddress { get; init; }

    /// <summary>What the traffic was: "http", "tls", "connect", "opaque"; for DNS the question type ("A", "AAAA", "TYPE15").</summary>
    public string? Protocol { get; init; }

    /// <summary>Whether the gateway terminated TLS to add headers.</summary>
    public bool TlsTerminated { get; init; }

    /// <summary>Names (only) of the headers the gateway adds to this connection's requests.</summary>
    public IReadOnlyList<string> InjectedHeaderNames { get; init; } = [];

    /// <summary>What went wrong after the policy allowed the connection (connect timeout, upstream certificate rejected...).</summary>
    public string? Error { get; init; }

    /// <summary>A single log line.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append(Kind.ToString().ToLowerInvariant()).Append(' ').Append(Allowed ? "allowed" : "denied");
        text.Append(" session=").Append(SessionId);
        if (Name is not null)
        {
            text.Append(" name=").Append(Name);
        }
        if (Port is not null)
        {
            text.Append(" port=").Append(Port.Value);
        }
        if (DialedAddress is not null)
        {
            text.Append(" dialed=").Append(DialedAddress);
        }
        if (ResolvedAddress is not null)
        {
            text.Append(" resolved=").Append(ResolvedAddress);
        }
        if (Protocol is not null)
        {
            text.Append(" protocol=").Append(Protocol);
        }
        if (TlsTerminated)
        {
            text.Append(" tls=terminated");
        }
        if (InjectedHeaderNames.Count > 0)
        {
            text.Append(" headers=").Append(string.Join(',', InjectedHeaderNames));
        }
        text.Append(" reason=\"").Append(Reason).Append('"');
        if (Error is not null)
        {
            text.Append(" error=\"").Append(Error).Append('"');
        }
        return text.ToString();
    }
}

/// <summary>A session's egress totals.</summary>
/// <param name="Allowed">Decisions that allowed.</param>
/// <param name="Denied">Decisions that denied.</param>
/// <param name="BytesUp">Bytes relayed from the sandbox to upstream (after header rewriting; plaintext where TLS was terminated).</param>
/// <param name="BytesDown">Bytes relayed from upstream to the sandbox.</param>
/// <param name="OpenConnections">Relayed connections open now.</param>
internal readonly record struct EgressCounters(long Allowed, long Denied, long BytesUp, long BytesDown, int OpenConnections);

/// <summary>A bounded ring of the newest decisions; thread-safe.</summary>
internal sealed class DecisionLog
{
    private readonly EgressDecision?[] _ring;
    private readonly Lock _lock = new();
    private long _count;

    /// <summary>Creates a log keeping <paramref name="capacity"/> decisions.</summary>
    public DecisionLog(int capacity) => _ring = new EgressDecision?[Math.Max(1, capacity)];

    /// <summary>Adds a decision, dropping the oldest when full.</summary>
    public void Add(EgressDecision decision)
    {
        lock (_lock)
        {
            _ring[_count % _ring.Length] = decision;
            _count++;
        }
    }

    /// <summary>The newest <paramref name="count"/> decisions, newest first.</summary>
    public IReadOnlyList<EgressDecision> Newest(int count)
    {
        lock (_lock)
        {
            int n = (int)Math.Min(Math.Min(Math.Max(count, 0), _ring.Length), _count);
            var result = new EgressDecision[n];
            for (int i = 0; i < n; i++)
            {
                result[i] = _ring[(_count - 1 - i) % _ring.Length]!;
            }
            return result;
        }
    }
}
