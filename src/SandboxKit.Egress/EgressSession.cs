using System.Collections.Concurrent;
using System.Net;
using SandboxKit.Egress.Decisions;
using SandboxKit.Egress.Dns;
using SandboxKit.Egress.Policy;
using SandboxKit.Egress.Relay;

namespace SandboxKit.Egress;

/// <summary>
/// One sandbox session's egress state: its policy, synthetic DNS mappings, decision log, counters and open
/// connections. Made by <see cref="EgressGateway.OpenSession"/>; thread-safe.
/// </summary>
/// <remarks>
/// Policy changes (<see cref="ReplacePolicy"/>) apply to every DNS answer and connection from then on. Established
/// connections are checked against the new policy at once: those it no longer allows are closed (and logged);
/// the rest carry on, and the next request on a connection with added headers gets the new policy's headers.
/// </remarks>
internal sealed class EgressSession : IDisposable
{
    private readonly EgressGateway _gateway;
    private readonly DecisionLog _log;
    private readonly ConcurrentDictionary<long, LiveConnection> _live = new();
    private EgressPolicy _policy;
    private long _allowed;
    private long _denied;
    private long _bytesUp;
    private long _bytesDown;
    private int _open;
    private long _nextConnection;
    private int _closed;

    internal EgressSession(EgressGateway gateway, string id, EgressPolicy policy, EgressSettings settings)
    {
        _gateway = gateway;
        Id = id;
        _policy = policy;
        _log = new DecisionLog(settings.DecisionLogSize);
        Synthetic = new SyntheticAddressMap(settings.SyntheticPool, settings.MaxNamesPerSession);
        MaxConnections = settings.MaxConnectionsPerSession;
    }

    /// <summary>The session id.</summary>
    public string Id { get; }

    /// <summary>The policy in force.</summary>
    public EgressPolicy Policy => Volatile.Read(ref _policy);

    /// <summary>Whether the session was closed.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>Totals so far.</summary>
    public EgressCounters Counters => new(
        Interlocked.Read(ref _allowed), Interlocked.Read(ref _denied),
        Interlocked.Read(ref _bytesUp), Interlocked.Read(ref _bytesDown), Volatile.Read(ref _open));

    internal SyntheticAddressMap Synthetic { get; }

    internal int MaxConnections { get; }

    /// <summary>
    /// Puts <paramref name="policy"/> in force. Open connections it no longer allows are closed, each logged as a
    /// <see cref="EgressDecisionKind.PolicyChange"/> denial. Returns how many were closed.
    /// </summary>
    public int ReplacePolicy(EgressPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(policy);
        Volatile.Write(ref _policy, policy);
        int closed = 0;
        foreach (var connection in _live.Values)
        {
            var reason = _gateway.RecheckConnection(policy, connection);
            if (reason is null)
            {
                continue;
            }
            closed++;
            connection.Activity.Cancel("closed by a policy change: " + reason);
            Record(new EgressDecision
            {
                Timestamp = _gateway.Now,
                SessionId = Id,
                Kind = EgressDecisionKind.PolicyChange,
                Allowed = false,
                Reason = "established connection closed: " + reason,
                Name = connection.Name,
                Port = connection.Port,
                DialedAddress = connection.Dialed,
                ResolvedAddress = connection.Address,
                Protocol = connection.Protocol,
            });
        }
        return closed;
    }

    /// <summary>The newest <paramref name="count"/> decisions, newest first (at most the log's size).</summary>
    public IReadOnlyList<EgressDecision> GetRecentDecisions(int count) => _log.Newest(count);

    /// <summary>Every name → synthetic address mapping given so far.</summary>
    public IReadOnlyList<EgressDnsMapping> GetDnsMappings() => Synthetic.Snapshot();

    /// <summary>
    /// Restores mappings the supervisor kept (after a server restart), so names keep their addresses. Invalid or
    /// conflicting entries are skipped. Returns how many are in place.
    /// </summary>
    public int RestoreDnsMappings(IEnumerable<EgressDnsMapping> mappings)
    {
        ArgumentNullException.ThrowIfNull(mappings);
        int restored = 0;
        foreach (var mapping in mappings)
        {
            if (mapping is not null && Synthetic.TryRestore(mapping.Name, mapping.Address))
            {
                restored++;
            }
        }
        return restored;
    }

    /// <summary>Closes the session: every open connection is closed and no new one is accepted.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }
        foreach (var connection in _live.Values)
        {
            connection.Activity.Cancel("the session was closed");
        }
        _gateway.Forget(this);
    }

    internal void Record(EgressDecision decision)
    {
        if (decision.Allowed)
        {
            Interlocked.Increment(ref _allowed);
        }
        else
        {
            Interlocked.Increment(ref _denied);
        }
        _log.Add(decision);
        _gateway.Raise(decision);
    }

    internal void AddBytes(long up, long down)
    {
        if (up != 0)
        {
            Interlocked.Add(ref _bytesUp, up);
        }
        if (down != 0)
        {
            Interlocked.Add(ref _bytesDown, down);
        }
    }

    internal bool TryAcquireConnection()
    {
        if (IsClosed)
        {
            return false;
        }
        if (Interlocked.Increment(ref _open) > MaxConnections)
        {
            Interlocked.Decrement(ref _open);
            return false;
        }
        return true;
    }

    internal void ReleaseConnection() => Interlocked.Decrement(ref _open);

    internal long Register(LiveConnection connection)
    {
        long id = Interlocked.Increment(ref _nextConnection);
        _live[id] = connection;
        if (IsClosed)
        {
            // Closed between the check and the registration: close this one too.
            connection.Activity.Cancel("the session was closed");
        }
        return id;
    }

    internal void Unregister(long id) => _live.TryRemove(id, out _);
}

/// <summary>An established connection, as a policy change re-checks it.</summary>
/// <param name="Name">The name it was allowed for, or null for an IP literal.</param>
/// <param name="Address">The address connected to.</param>
/// <param name="Port">The port.</param>
/// <param name="Dialed">What the sandbox dialed.</param>
/// <param name="Protocol">Traffic kind.</param>
/// <param name="Activity">Cancels it.</param>
internal sealed record LiveConnection(string? Name, IPAddress Address, int Port, IPAddress Dialed, string Protocol, RelayActivity Activity);
