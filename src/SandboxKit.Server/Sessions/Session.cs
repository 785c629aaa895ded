using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// A live session: its container, who owns it, its deadlines, and the connection to its supervisor.
/// Everything except activity times and the connection is also written to engine labels (see <see cref="SessionLabels"/>);
/// what runs inside (jobs, keyed results, channel ids) the supervisor keeps. Nothing here matters only in memory.
/// </summary>
internal sealed class Session
{
    private readonly SemaphoreSlim _connectLock = new(1, 1);
    private SupervisorConnection? _connection;
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

    /// <summary><c>key:fingerprint</c> of the keyed request that created it, if it was keyed.</summary>
    public string? Idempotency { get; init; }

    /// <summary>The bounded disk volume at /workspace (null when disks are unbounded: an anonymous volume).</summary>
    public string? WorkspaceVolume { get; init; }

    /// <summary>The size of that disk.</summary>
    public long? DiskBytes { get; init; }

    /// <summary>The egress policy (header values included: never shown or logged); null: no network.</summary>
    public EgressPolicyRequest? Egress { get; set; }

    /// <summary>Set once the session is being deleted or found gone; no new work starts on it.</summary>
    public bool Closed { get; private set; }

    /// <summary>Why the supervisor is not answering (its last connection timed out or a reconnect failed); null while it answers.</summary>
    public string? Fault { get; private set; }

    /// <summary>
    /// <c>running</c>; <c>unresponsive</c> while the supervisor does not answer (requests fail with 503
    /// <c>supervisor_unavailable</c> and each retry tries again); <c>gone</c> once deleted.
    /// </summary>
    public string Status => Closed ? "gone" : Fault is not null || _connection is { Unresponsive: true } ? "unresponsive" : "running";

    /// <summary>What the image offers, as the supervisor last reported it (null until the first connection).</summary>
    public ImageCapabilities? Capabilities => _connection?.Capabilities ?? _lastCapabilities;

    /// <summary>The supervisor's version, from its hello.</summary>
    public string? SupervisorVersion { get; private set; }

    private ImageCapabilities? _lastCapabilities;

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

    /// <summary>The supervisor connection, (re)connecting when there is none or the last one closed.</summary>
    public async Task<SupervisorConnection> GetConnectionAsync(SupervisorDialer dialer, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var connection = _connection;
        if (connection is { IsClosed: false })
        {
            return connection;
        }
        await _connectLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_connection is { IsClosed: false })
            {
                return _connection;
            }
            if (_connection is not null)
            {
                if (_connection.Unresponsive)
                {
                    Fault = _connection.CloseReason;
                }
                await _connection.DisposeAsync().ConfigureAwait(false);
            }
            try
            {
                UseConnection(await dialer.ConnectAsync(ContainerId, Runtime, Id, timeout, cancellationToken).ConfigureAwait(false));
            }
            catch (SupervisorUnavailableException e)
            {
                Fault = e.Message;
                throw;
            }
            Fault = null;
            return _connection!;
        }
        finally
        {
            _connectLock.Release();
        }
    }

    /// <summary>Takes over a connection made earlier (a warm pool container's).</summary>
    public void UseConnection(SupervisorConnection connection)
    {
        _connection = connection;
        _lastCapabilities = connection.Capabilities;
        SupervisorVersion = connection.Hello.Version;
    }

    public async ValueTask DisconnectAsync()
    {
        var connection = Interlocked.Exchange(ref _connection, null);
        if (connection is not null)
        {
            _lastCapabilities = connection.Capabilities;
            await connection.DisposeAsync().ConfigureAwait(false);
        }
    }

    public SessionInfo ToInfo() => new()
    {
        Id = Id,
        Status = Status,
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
        Offers = Capabilities is { } c ? ToOffers(c) : null,
        DiskBytes = DiskBytes,
        SupervisorVersion = SupervisorVersion,
        Egress = Network.EgressService.Describe(Egress),
    };

    internal static ImageOffers ToOffers(ImageCapabilities c) => new()
    {
        Probed = c.Probed,
        Bash = c.Bash.Version,
        ImageBash = c.ImageBash?.Version ?? (c.ImageBash is null ? null : ""),
        Python3 = c.Python3?.Version ?? (c.Python3 is null ? null : ""),
        IPython = c.IPython,
        Node = c.Node?.Version ?? (c.Node is null ? null : ""),
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
