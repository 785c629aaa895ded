using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// A live session: its container, who owns it, its deadlines, and the connection to its agent.
/// Everything except activity times and the connection is also written to engine labels (see <see cref="SessionLabels"/>).
/// </summary>
internal sealed class Session
{
    private readonly SemaphoreSlim _connectLock = new(1, 1);
    private AgentConnection? _agent;
    private long _lastActivityTicks;
    private int _activeOperations;

    public required string Id { get; init; }
    public required string ContainerId { get; init; }
    public required string ClaimVolume { get; init; }
    public required string Tenant { get; init; }
    public string? UserId { get; init; }
    public required string Image { get; init; }
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }
    public required IReadOnlyDictionary<string, string> Environment { get; init; }
    public required DateTimeOffset CreatedAt { get; init; }
    public required DateTimeOffset MaxExpiresAt { get; init; }
    public required TimeSpan IdleTimeout { get; init; }
    public required long MemoryBytes { get; init; }
    public required double Cpus { get; init; }
    public required int PidsLimit { get; init; }
    public required string NetworkMode { get; init; }
    public required string Runtime { get; init; }
    public string? PersistentStoragePath { get; init; }

    /// <summary>Background processes started in this session, by id.</summary>
    public System.Collections.Concurrent.ConcurrentDictionary<string, Exec.BackgroundProcess> Processes { get; } = new(StringComparer.Ordinal);

    /// <summary>Set once the session is being deleted or found gone; no new work starts on it.</summary>
    public bool Closed { get; private set; }

    public DateTimeOffset LastActivityAt => new(Interlocked.Read(ref _lastActivityTicks), TimeSpan.Zero);

    public DateTimeOffset ExpiresAt
    {
        get
        {
            var idle = LastActivityAt + IdleTimeout;
            return idle < MaxExpiresAt ? idle : MaxExpiresAt;
        }
    }

    public void Touch(DateTimeOffset now) => Interlocked.Exchange(ref _lastActivityTicks, now.UtcTicks);

    /// <summary>Marks work in progress (a command, an open stream, a file transfer): a session is not idle while any runs.</summary>
    public ActivityScope BeginActivity(TimeProvider time)
    {
        Interlocked.Increment(ref _activeOperations);
        Touch(time.GetUtcNow());
        return new ActivityScope(this, time);
    }

    public bool IsExpired(DateTimeOffset now) =>
        now >= MaxExpiresAt || (Volatile.Read(ref _activeOperations) == 0 && now >= LastActivityAt + IdleTimeout);

    public string? ExpiryReason(DateTimeOffset now) =>
        now >= MaxExpiresAt ? "maximum lifetime reached" : IsExpired(now) ? "idle timeout" : null;

    public void MarkClosed() => Closed = true;

    /// <summary>The agent connection, (re)attaching when there is none or the last one closed.</summary>
    public async Task<AgentConnection> GetAgentAsync(IContainerEngine engine, ILogger logger, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var agent = _agent;
        if (agent is { IsClosed: false })
        {
            return agent;
        }
        await _connectLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_agent is { IsClosed: false })
            {
                return _agent;
            }
            if (_agent is not null)
            {
                await _agent.DisposeAsync().ConfigureAwait(false);
            }
            _agent = await AgentConnection.ConnectAsync(engine, ContainerId, logger, timeout, cancellationToken).ConfigureAwait(false);
            return _agent;
        }
        finally
        {
            _connectLock.Release();
        }
    }

    /// <summary>Takes over a connection made earlier (a warm pool container's).</summary>
    public void UseConnection(AgentConnection agent) => _agent = agent;

    public async ValueTask DisconnectAsync()
    {
        var agent = Interlocked.Exchange(ref _agent, null);
        if (agent is not null)
        {
            await agent.DisposeAsync().ConfigureAwait(false);
        }
    }

    public SessionInfo ToInfo() => new()
    {
        Id = Id,
        Status = Closed ? "gone" : "running",
        Image = Image,
        UserId = UserId,
        Metadata = Metadata,
        CreatedAt = CreatedAt,
        LastActivityAt = LastActivityAt,
        ExpiresAt = ExpiresAt,
        MaxExpiresAt = MaxExpiresAt,
        MemoryBytes = MemoryBytes,
        Cpus = Cpus,
        PidsLimit = PidsLimit,
        NetworkMode = NetworkMode,
        Runtime = Runtime,
        PersistentStoragePath = PersistentStoragePath,
    };

    internal readonly struct ActivityScope(Session session, TimeProvider time) : IDisposable
    {
        public void Dispose()
        {
            session.Touch(time.GetUtcNow());
            Interlocked.Decrement(ref session._activeOperations);
        }
    }
}
