using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Api;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Owns every session: creation (hardened container, claim labels), lookup by tenant, deletion, expiry,
/// adoption after a restart and detection of containers that disappeared behind the server's back.
/// </summary>
internal sealed class SessionManager(
    IContainerEngine engine,
    IOptions<SandboxOptions> options,
    SandboxImage images,
    ContainerSpecFactory specs,
    WarmPool pool,
    UsageMeter usage,
    TimeProvider time,
    ILogger<SessionManager> logger)
{
    private static readonly TimeSpan AgentConnectTimeout = TimeSpan.FromSeconds(20);
    private readonly ConcurrentDictionary<string, Session> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _tenantCounts = new(StringComparer.Ordinal);
    private readonly SandboxOptions _options = options.Value;

    public ILogger Logger => logger;

    public IContainerEngine Engine => engine;

    public int Count => _sessions.Count;

    public async Task<Session> CreateAsync(Tenant tenant, CreateSessionRequest request, CancellationToken cancellationToken)
    {
        var shape = ResolveShape(request);
        var idle = Bound(request.IdleTimeoutSeconds, _options.DefaultIdleTimeoutSeconds, _options.MaxIdleTimeoutSeconds, "idleTimeoutSeconds");
        var lifetime = Bound(request.MaxLifetimeSeconds, _options.DefaultMaxLifetimeSeconds, _options.MaxLifetimeSeconds, "maxLifetimeSeconds");
        var environment = ValidateEnvironment(request.Environment);
        var metadata = ValidateMetadata(request.Metadata);
        var userId = request.UserId is null ? null : ValidateUserId(request.UserId);

        ReserveSlot(tenant);
        string? containerId = null;
        try
        {
            var sessionId = NewId();
            string? userVolume = null;
            if (userId is not null)
            {
                userVolume = UserVolumeName(tenant.Name, userId);
                await engine.CreateVolumeAsync(userVolume, new Dictionary<string, string>
                {
                    [SessionLabels.Instance] = _options.InstanceName,
                    [SessionLabels.Kind] = SessionLabels.KindUserStorage,
                    [SessionLabels.Tenant] = tenant.Name,
                    [SessionLabels.User] = userId,
                }, cancellationToken).ConfigureAwait(false);
            }

            // A pooled container only fits sessions of the pool's shape without per-user mounts or their own environment.
            var warm = userVolume is null && environment.Count == 0 ? pool.TryTake(shape) : null;
            containerId = warm?.ContainerId;
            var fromPool = warm is not null;
            containerId ??= await engine.RunContainerAsync(specs.Build(shape, $"sk-{_options.InstanceName}-{sessionId}", userVolume, environment), cancellationToken).ConfigureAwait(false);

            var now = time.GetUtcNow();
            var session = new Session
            {
                Id = sessionId,
                ContainerId = containerId,
                ClaimVolume = $"sk-claim-{_options.InstanceName}-{sessionId}",
                Tenant = tenant.Name,
                UserId = userId,
                Image = shape.Image,
                Metadata = metadata,
                Environment = environment,
                CreatedAt = now,
                MaxExpiresAt = now + lifetime,
                IdleTimeout = idle,
                MemoryBytes = shape.MemoryBytes,
                Cpus = shape.Cpus,
                PidsLimit = shape.PidsLimit,
                NetworkMode = shape.NetworkMode,
                Runtime = shape.Runtime,
                PersistentStoragePath = userVolume is null ? null : _options.PersistentStoragePath,
            };
            session.Touch(now);
            if (warm is not null)
            {
                session.UseConnection(warm.Agent);
            }
            // The claim volume's labels are the durable record of the session; written before the session is visible.
            await engine.CreateVolumeAsync(session.ClaimVolume, SessionLabels.ForClaim(session, _options.InstanceName), cancellationToken).ConfigureAwait(false);
            try
            {
                await session.GetAgentAsync(engine, logger, AgentConnectTimeout, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await engine.RemoveVolumeAsync(session.ClaimVolume, CancellationToken.None).ConfigureAwait(false);
                throw;
            }
            _sessions[session.Id] = session;
            usage.SessionCreated(tenant.Name);
            logger.LogInformation("Session {Session} created for tenant {Tenant} (container {Container}, {Source})",
                session.Id, tenant.Name, containerId[..12], fromPool ? "warm pool" : "cold start");
            return session;
        }
        catch
        {
            ReleaseSlot(tenant.Name);
            if (containerId is not null)
            {
                await RemoveQuietlyAsync(containerId).ConfigureAwait(false);
            }
            throw;
        }
    }

    /// <summary>The tenant's session, or a 404 problem: another tenant's session is answered exactly like a missing one.</summary>
    public Session Get(Tenant tenant, string id)
    {
        if (_sessions.TryGetValue(id, out var session) && !session.Closed && string.Equals(session.Tenant, tenant.Name, StringComparison.Ordinal))
        {
            if (!session.IsExpired(time.GetUtcNow()))
            {
                return session;
            }
            // Expired but not yet reaped: gone for the caller; the reaper removes it.
        }
        throw ApiProblemException.SessionNotFound(id);
    }

    public int CountFor(Tenant tenant) => _tenantCounts.GetValueOrDefault(tenant.Name);

    public IReadOnlyList<Session> List(Tenant tenant, string? userId, IReadOnlyDictionary<string, string> metadata) =>
        _sessions.Values
            .Where(s => !s.Closed && string.Equals(s.Tenant, tenant.Name, StringComparison.Ordinal))
            .Where(s => userId is null || string.Equals(s.UserId, userId, StringComparison.Ordinal))
            .Where(s => metadata.All(kv => s.Metadata.TryGetValue(kv.Key, out var v) && string.Equals(v, kv.Value, StringComparison.Ordinal)))
            .OrderBy(s => s.CreatedAt)
            .ToList();

    public SessionInfo KeepAlive(Session session)
    {
        session.Touch(time.GetUtcNow());
        return session.ToInfo();
    }

    /// <summary>
    /// Removes the session's container and claim; idempotent. The session is closed to callers at once; if the engine
    /// cannot be reached the error escapes and the reaper finishes the removal later (the session still counts against
    /// its tenant's quota until its container is really gone).
    /// </summary>
    public async Task DeleteAsync(Session session, string reason)
    {
        if (!_sessions.ContainsKey(session.Id))
        {
            return;
        }
        session.MarkClosed();
        await session.DisconnectAsync().ConfigureAwait(false);
        // Container first: a claim without a container is recognised as an orphan on the next start.
        await engine.RemoveContainerAsync(session.ContainerId, CancellationToken.None).ConfigureAwait(false);
        await engine.RemoveVolumeAsync(session.ClaimVolume, CancellationToken.None).ConfigureAwait(false);
        if (_sessions.TryRemove(session.Id, out _))
        {
            ReleaseSlot(session.Tenant);
            logger.LogInformation("Session {Session} removed ({Reason})", session.Id, reason);
        }
    }

    /// <summary>Runs <paramref name="work"/> against the session's agent; a container that vanished becomes a 404, not a 500.</summary>
    public async Task<T> UseAgentAsync<T>(Session session, Func<AgentConnection, Task<T>> work, CancellationToken cancellationToken)
    {
        using var activity = session.BeginActivity(time);
        try
        {
            var agent = await session.GetAgentAsync(engine, logger, AgentConnectTimeout, cancellationToken).ConfigureAwait(false);
            return await work(agent).ConfigureAwait(false);
        }
        catch (Exception e) when (e is AgentUnavailableException or ContainerGoneException && !cancellationToken.IsCancellationRequested)
        {
            await ThrowIfGoneAsync(session).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>When the session's container is gone or stopped, removes the session and throws a 404 problem.</summary>
    public async Task ThrowIfGoneAsync(Session session)
    {
        ContainerState? state;
        try
        {
            state = await engine.InspectContainerAsync(session.ContainerId, CancellationToken.None).ConfigureAwait(false);
        }
        catch (EngineUnavailableException)
        {
            return;
        }
        if (state is { Running: true })
        {
            return;
        }
        await DeleteAsync(session, state is null ? "container removed outside SandboxKit" : "container stopped").ConfigureAwait(false);
        throw ApiProblemException.SessionNotFound(session.Id);
    }

    /// <summary>Removes expired sessions and finishes removals that failed earlier; one failure never stops the pass.</summary>
    public async Task ReapAsync(CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        foreach (var session in _sessions.Values)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            var reason = session.Closed ? "removal retried" : session.ExpiryReason(now);
            if (reason is null)
            {
                continue;
            }
            try
            {
                await DeleteAsync(session, reason).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                logger.LogWarning(e, "Reaper could not remove session {Session}; the next pass retries", session.Id);
            }
        }
    }

    /// <summary>Rebuilds sessions from claim labels after a start; removes expired sessions and orphans.</summary>
    public async Task AdoptAsync(CancellationToken cancellationToken)
    {
        var claims = await engine.ListVolumesAsync(SessionLabels.Instance, _options.InstanceName, cancellationToken).ConfigureAwait(false);
        var containers = await engine.ListContainersAsync(SessionLabels.Instance, _options.InstanceName, cancellationToken).ConfigureAwait(false);
        var running = containers.ToDictionary(c => c.Id, StringComparer.Ordinal);
        var claimed = new HashSet<string>(StringComparer.Ordinal);
        var now = time.GetUtcNow();
        int adopted = 0, removed = 0;
        foreach (var claim in claims.Where(v => v.Labels.GetValueOrDefault(SessionLabels.Kind) == SessionLabels.KindClaim))
        {
            var session = SessionLabels.ToSession(claim.Name, claim.Labels);
            if (session is not null && running.TryGetValue(session.ContainerId, out var container) && container.Running && now < session.MaxExpiresAt)
            {
                // Restart grants a fresh idle period; the maximum lifetime still bounds it.
                session.Touch(now);
                if (_sessions.TryAdd(session.Id, session))
                {
                    _tenantCounts.AddOrUpdate(session.Tenant, 1, (_, n) => n + 1);
                }
                claimed.Add(session.ContainerId);
                adopted++;
                continue;
            }
            if (session is not null)
            {
                claimed.Add(session.ContainerId);
                await RemoveQuietlyAsync(session.ContainerId).ConfigureAwait(false);
            }
            await engine.RemoveVolumeAsync(claim.Name, cancellationToken).ConfigureAwait(false);
            removed++;
        }
        foreach (var container in containers.Where(c => !claimed.Contains(c.Id) && c.Labels.GetValueOrDefault(SessionLabels.Generation) != SessionLabels.CurrentGeneration))
        {
            // Unclaimed: a pooled container from an earlier run or a session whose claim was never written.
            await RemoveQuietlyAsync(container.Id).ConfigureAwait(false);
            removed++;
        }
        logger.LogInformation("Adopted {Adopted} live sessions, removed {Removed} expired or orphaned resources", adopted, removed);
    }

    public async Task DeleteUserStorageAsync(Tenant tenant, string userId, CancellationToken cancellationToken)
    {
        userId = ValidateUserId(userId);
        if (_sessions.Values.Any(s => !s.Closed && s.Tenant == tenant.Name && s.UserId == userId))
        {
            throw new ApiProblemException(StatusCodes.Status409Conflict, ProblemCodes.Conflict, "User storage in use",
                $"User '{userId}' still has live sessions; delete them first.");
        }
        await engine.RemoveVolumeAsync(UserVolumeName(tenant.Name, userId), cancellationToken).ConfigureAwait(false);
    }

    private SessionShape ResolveShape(CreateSessionRequest request)
    {
        var image = request.Image ?? images.Default;
        if (!images.IsAllowed(image))
        {
            throw ApiProblemException.Invalid($"Image '{image}' is not on this server's allow-list.");
        }
        var memory = request.MemoryBytes ?? _options.DefaultMemoryBytes;
        if (memory < 16L << 20 || memory > _options.MaxMemoryBytes)
        {
            throw ApiProblemException.Invalid($"memoryBytes must be between {16L << 20} and {_options.MaxMemoryBytes}.");
        }
        var cpus = request.Cpus ?? _options.DefaultCpus;
        if (!(cpus >= 0.01 && cpus <= _options.MaxCpus))
        {
            throw ApiProblemException.Invalid($"cpus must be between 0.01 and {_options.MaxCpus}.");
        }
        var pids = request.PidsLimit ?? _options.DefaultPidsLimit;
        if (pids < 16 || pids > _options.MaxPidsLimit)
        {
            throw ApiProblemException.Invalid($"pidsLimit must be between 16 and {_options.MaxPidsLimit}.");
        }
        var network = request.NetworkMode ?? "none";
        if (network != "none" && !_options.AllowedNetworks.Contains(network, StringComparer.Ordinal))
        {
            throw ApiProblemException.Invalid($"Network mode '{network}' is not allowed on this server (allowed: none{string.Concat(_options.AllowedNetworks.Select(n => ", " + n))}).");
        }
        var runtime = request.Runtime ?? specs.DefaultRuntime;
        if (runtime != specs.DefaultRuntime && !_options.AllowedRuntimes.Contains(runtime, StringComparer.Ordinal))
        {
            throw ApiProblemException.Invalid($"Runtime '{runtime}' is not allowed on this server.");
        }
        return new SessionShape(image, memory, cpus, pids, network, runtime);
    }

    private static TimeSpan Bound(int? requested, int defaultSeconds, int maxSeconds, string name)
    {
        var seconds = requested ?? defaultSeconds;
        if (seconds < 1 || seconds > maxSeconds)
        {
            throw ApiProblemException.Invalid($"{name} must be between 1 and {maxSeconds}.");
        }
        return TimeSpan.FromSeconds(seconds);
    }

    private static Dictionary<string, string> ValidateEnvironment(IReadOnlyDictionary<string, string>? environment)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            if (!IsEnvironmentName(key))
            {
                throw ApiProblemException.Invalid($"'{key}' is not a valid environment variable name.");
            }
            if (value.Contains('\0', StringComparison.Ordinal))
            {
                throw ApiProblemException.Invalid($"Environment variable '{key}' contains a NUL character.");
            }
            result[key] = value;
        }
        if (result.Sum(kv => kv.Key.Length + kv.Value.Length) > 32 * 1024)
        {
            throw ApiProblemException.Invalid("environment is larger than 32 KiB.");
        }
        return result;
    }

    internal static bool IsEnvironmentName(string key) =>
        key.Length is > 0 and <= 256 && (char.IsAsciiLetter(key[0]) || key[0] == '_') && key.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static Dictionary<string, string> ValidateMetadata(IReadOnlyDictionary<string, string>? metadata)
    {
        var result = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>(), StringComparer.Ordinal);
        if (result.Count > 32 || result.Any(kv => kv.Key.Length is 0 or > 128 || kv.Value.Length > 1024))
        {
            throw ApiProblemException.Invalid("metadata allows at most 32 entries, keys of 1-128 characters and values of up to 1024.");
        }
        return result;
    }

    private static string ValidateUserId(string userId) =>
        userId.Length is > 0 and <= 200 && !userId.Any(char.IsControl)
            ? userId
            : throw ApiProblemException.Invalid("userId must be 1-200 characters without control characters.");

    private string UserVolumeName(string tenant, string userId) =>
        $"sk-user-{_options.InstanceName}-{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(tenant + "\n" + userId)))[..32]}";

    private void ReserveSlot(Tenant tenant)
    {
        while (true)
        {
            var current = _tenantCounts.GetOrAdd(tenant.Name, 0);
            if (current >= tenant.MaxSessions)
            {
                throw new ApiProblemException(StatusCodes.Status429TooManyRequests, ProblemCodes.QuotaExceeded, "Session quota exceeded",
                    $"Tenant '{tenant.Name}' already has {current} of its {tenant.MaxSessions} concurrent sessions; delete one first.",
                    TimeSpan.FromSeconds(5));
            }
            if (_tenantCounts.TryUpdate(tenant.Name, current + 1, current))
            {
                return;
            }
        }
    }

    private void ReleaseSlot(string tenant) => _tenantCounts.AddOrUpdate(tenant, 0, (_, n) => Math.Max(0, n - 1));

    private async Task RemoveQuietlyAsync(string containerId)
    {
        try
        {
            await engine.RemoveContainerAsync(containerId, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            logger.LogWarning(e, "Could not remove container {Container}", containerId);
        }
    }

    private static string NewId() => Guid.NewGuid().ToString("N");
}

/// <summary>What makes two sessions' containers interchangeable (the warm pool is keyed by it).</summary>
internal sealed record SessionShape(string Image, long MemoryBytes, double Cpus, int PidsLimit, string NetworkMode, string Runtime)
{
    public string Key { get; } = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(
        FormattableString.Invariant($"{Image}|{MemoryBytes}|{Cpus}|{PidsLimit}|{NetworkMode}|{Runtime}"))))[..16];
}
