using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Creates sessions: validates the request against the server's bounds, takes a quota slot, gets a container (a warm
/// one when the shape fits, else a cold start), writes the claim that makes it a session, and connects to its supervisor.
/// Any failure leaves nothing behind.
/// </summary>
internal sealed class SessionCreator(
    IContainerEngine engine,
    IOptions<SandboxOptions> options,
    SandboxImage images,
    ContainerSpecFactory specs,
    SupervisorBundle bundle,
    SupervisorDialer dialer,
    DiskStore disks,
    WarmPool pool,
    SessionRegistry registry,
    CapacityGuard capacity,
    SessionLifecycle lifecycle,
    Network.EgressService egress,
    UsageMeter usage,
    TimeProvider time,
    ILogger<SessionCreator> logger)
{
    private readonly SandboxOptions _options = options.Value;

    public async Task<Session> CreateAsync(Tenant tenant, CreateSessionRequest request, CancellationToken cancellationToken, Exec.IdempotencyToken? idempotency = null)
    {
        if (idempotency is not null && registry.FindCreatedBy(tenant, idempotency.Key) is { } existing)
        {
            // A retry of a create that succeeded before a server restart: the claim remembered its key.
            return existing.Idempotency == IdempotencyLabel(idempotency)
                ? existing
                : throw SandboxError.Unprocessable(ProblemCodes.InvalidRequest, "Idempotency key reused",
                    "This Idempotency-Key was already used with a different request body.");
        }
        var shape = ResolveShape(request);
        var idle = SessionRequestValidator.Seconds(request.IdleTimeoutSeconds, _options.DefaultIdleTimeoutSeconds, _options.MaxIdleTimeoutSeconds, "idleTimeoutSeconds");
        var lifetime = SessionRequestValidator.Seconds(request.MaxLifetimeSeconds, _options.DefaultMaxLifetimeSeconds, _options.MaxLifetimeSeconds, "maxLifetimeSeconds");
        var environment = SessionRequestValidator.Environment(request.Environment);
        var metadata = SessionRequestValidator.Metadata(request.Metadata);
        var userId = request.UserId is null ? null : SessionRequestValidator.UserId(request.UserId);
        var diskBytes = ResolveDiskBytes(request);
        var egressPolicy = egress.Validate(request.Egress);
        if (egressPolicy is not null && shape.NetworkMode != "none")
        {
            throw SandboxError.Invalid("egress is for sessions without a network (networkMode none): the gateway is their only way out.");
        }
        string? createdId = null;

        registry.Reserve(tenant);
        WarmContainer? warm = null;
        CapacityGuard.Lease? lease = null;
        string? containerId = null;
        string? claimVolume = null;
        DiskVolume? workspace = null;
        SupervisorConnection? connection = null;
        try
        {
            await bundle.EnsureVolumeAsync(engine, shape.Image, cancellationToken).ConfigureAwait(false);
            var sessionId = Guid.NewGuid().ToString("N");
            createdId = sessionId;
            DiskVolume? userStorage = null;
            if (userId is not null)
            {
                userStorage = await EnsureUserStorageAsync(tenant, userId, cancellationToken).ConfigureAwait(false);
            }

            // A pooled container only fits sessions of the pool's shape without per-user mounts, their own environment or disk size.
            warm = userStorage is null && environment.Count == 0 && diskBytes == DefaultDiskBytes ? pool.TryTake(shape) : null;
            try
            {
                lease = capacity.Reserve(shape.MemoryBytes);
            }
            catch (SandboxError) when (warm is not null)
            {
                pool.Return(warm);
                warm = null;
                throw;
            }
            containerId = warm?.ContainerId;
            connection = warm?.Connection;
            workspace = warm?.Workspace;
            if (containerId is null)
            {
                if (disks.Enabled)
                {
                    disks.EnsureRoom(diskBytes!.Value);
                    var name = $"sk-{_options.InstanceName}-ws-{sessionId}";
                    workspace = await disks.CreateVolumeAsync(name, diskBytes.Value, journal: false, new Dictionary<string, string>
                    {
                        [SessionLabels.Instance] = _options.InstanceName,
                        [SessionLabels.Kind] = SessionLabels.KindWorkspace,
                    }, cancellationToken).ConfigureAwait(false);
                }
                containerId = await RunAsync(specs.Build(shape, $"sk-{_options.InstanceName}-{sessionId}", userStorage, workspace, environment), cancellationToken)
                    .ConfigureAwait(false);
            }

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
                PersistentStoragePath = userStorage is null ? null : _options.PersistentStoragePath,
                Idempotency = idempotency is null ? null : IdempotencyLabel(idempotency),
                WorkspaceVolume = workspace?.Name,
                DiskBytes = workspace is null ? null : diskBytes,
            };
            session.Touch(now);

            // The claim volume's labels are the durable record of the session, written before the session is visible;
            // a cold container's supervisor starts meanwhile, so both waits overlap.
            claimVolume = session.ClaimVolume;
            var claim = engine.CreateVolumeAsync(session.ClaimVolume, SessionLabels.ForClaim(session, _options.InstanceName), cancellationToken);
            var connect = connection is not null
                ? Task.FromResult(connection)
                : dialer.ConnectAsync(containerId, shape.Runtime, sessionId, lifecycle.ConnectTimeout, cancellationToken);
            try
            {
                await Task.WhenAll(claim, connect).ConfigureAwait(false);
            }
            catch
            {
                if (connect.IsCompletedSuccessfully)
                {
                    connection = connect.Result;
                }
                throw;
            }
            connection = connect.Result;
            session.UseConnection(connection);
            if (egressPolicy is not null)
            {
                session.Egress = egressPolicy;
                await egress.SaveAsync(session).ConfigureAwait(false);
                await egress.AttachAsync(session, connection, cancellationToken).ConfigureAwait(false);
            }
            registry.Add(session);
            lease.Dispose();
            if (warm is not null)
            {
                pool.Replenish();
            }
            usage.SessionCreated(tenant.Name);
            logger.LogInformation("Session {Session} created for tenant {Tenant} (container {Container}, {Source})",
                session.Id, tenant.Name, containerId[..12], warm is not null ? "warm pool" : "cold start");
            return session;
        }
        catch (Exception e)
        {
            registry.Release(tenant.Name);
            if (createdId is not null)
            {
                egress.Forget(createdId);
            }
            lease?.Dispose();
            if (warm is not null)
            {
                pool.Replenish();
            }
            if (connection is not null)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }
            if (containerId is not null)
            {
                await lifecycle.RemoveContainerQuietlyAsync(containerId).ConfigureAwait(false);
            }
            if (workspace is not null)
            {
                await lifecycle.RemoveWorkspaceQuietlyAsync(workspace.Name).ConfigureAwait(false);
            }
            if (claimVolume is not null)
            {
                try
                {
                    await engine.RemoveVolumeAsync(claimVolume, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception cleanup) when (cleanup is EngineUnavailableException or VolumeInUseException)
                {
                    logger.LogWarning(cleanup, "Could not remove claim {Claim} of a failed create; the next start removes it", claimVolume);
                }
            }
            throw Translate(e, shape.Image, containerId is not null);
        }
    }

    private static string IdempotencyLabel(Exec.IdempotencyToken token) => token.Key + ":" + token.Fingerprint[..16];

    private long? DefaultDiskBytes => disks.Enabled ? _options.DefaultDiskBytes : null;

    private long? ResolveDiskBytes(CreateSessionRequest request)
    {
        if (!disks.Enabled)
        {
            return request.DiskBytes is null
                ? null
                : throw SandboxError.Invalid($"This server does not bound disks ({disks.Reason}), so diskBytes cannot be set.");
        }
        var bytes = request.DiskBytes ?? _options.DefaultDiskBytes;
        if (bytes < 16L << 20 || bytes > _options.MaxDiskBytes)
        {
            throw SandboxError.Invalid($"diskBytes must be between {16L << 20} and {_options.MaxDiskBytes}.");
        }
        return bytes;
    }

    /// <summary>The end user's storage volume, made on first use: a bounded disk (with a journal: it outlives sessions) within the tenant's cap.</summary>
    private async Task<DiskVolume> EnsureUserStorageAsync(Tenant tenant, string userId, CancellationToken cancellationToken)
    {
        var name = lifecycle.UserVolumeName(tenant.Name, userId);
        var labels = new Dictionary<string, string>
        {
            [SessionLabels.Instance] = _options.InstanceName,
            [SessionLabels.Kind] = SessionLabels.KindUserStorage,
            [SessionLabels.Tenant] = tenant.Name,
            [SessionLabels.User] = userId,
        };
        if (await engine.InspectVolumeAsync(name, cancellationToken).ConfigureAwait(false) is { } existing)
        {
            disks.Touch(existing.Labels);
            return await disks.EnsureAttachedAsync(existing, cancellationToken).ConfigureAwait(false);
        }
        var owned = (await engine.ListVolumesAsync(SessionLabels.Tenant, tenant.Name, cancellationToken).ConfigureAwait(false))
            .Count(v => v.Labels.GetValueOrDefault(SessionLabels.Kind) == SessionLabels.KindUserStorage
                && v.Labels.GetValueOrDefault(SessionLabels.Instance) == _options.InstanceName);
        if (owned >= _options.MaxUserStoragePerTenant)
        {
            throw SandboxError.QuotaExceeded(
                $"Tenant '{tenant.Name}' already has persistent storage for {owned} users, the most it may; delete one (DELETE /v1/users/{{userId}}/storage) first.",
                TimeSpan.FromSeconds(60));
        }
        if (disks.Enabled)
        {
            disks.EnsureRoom(_options.UserStorageBytes);
            return await disks.CreateVolumeAsync(name, _options.UserStorageBytes, journal: true, labels, cancellationToken).ConfigureAwait(false);
        }
        await engine.CreateVolumeAsync(name, labels, cancellationToken).ConfigureAwait(false);
        return new DiskVolume(name, null, null);
    }

    /// <summary>Starts the container; an image whose libraries cannot run the supervisor is the caller's error, said plainly.</summary>
    private async Task<string> RunAsync(ContainerSpec spec, CancellationToken cancellationToken)
    {
        try
        {
            return await engine.RunContainerAsync(spec, cancellationToken).ConfigureAwait(false);
        }
        catch (ContainerStartException e)
        {
            throw SandboxError.Unprocessable(ProblemCodes.ImageIncompatible, "Image cannot run the SandboxKit supervisor",
                $"Image '{spec.Image}' could not start the SandboxKit supervisor: {SupervisorConnection.Sanitize(e.Message, 300)}. " +
                "The image needs glibc 2.34 or newer (Debian 12, Ubuntu 22.04, RHEL 9 and images built on them); musl-based images such as Alpine cannot run it.");
        }
    }

    private Exception Translate(Exception e, string image, bool containerStarted) => e switch
    {
        SandboxError => e,
        SupervisorMismatchException m => SandboxError.SupervisorMismatch(m.Message),
        // The supervisor died at once (e.g. the dynamic loader refused an old glibc), so the container is gone.
        ContainerGoneException when containerStarted => SandboxError.Unprocessable(ProblemCodes.ImageIncompatible, "Image cannot run the SandboxKit supervisor",
            $"The SandboxKit supervisor exited right after starting in image '{image}'. The image needs glibc 2.34 or newer " +
            "(Debian 12, Ubuntu 22.04, RHEL 9 and images built on them); musl-based images such as Alpine cannot run it."),
        SupervisorUnavailableException u => SandboxError.SupervisorUnavailable(u.Message, u),
        EngineUnavailableException u => SandboxError.EngineUnavailable(u.Message, u),
        _ => e,
    };

    private SessionShape ResolveShape(CreateSessionRequest request)
    {
        var image = request.Image ?? images.Default;
        if (!images.IsAllowed(image))
        {
            throw SandboxError.Invalid($"Image '{image}' is not on this server's allow-list.");
        }
        var memory = request.MemoryBytes ?? _options.DefaultMemoryBytes;
        if (memory < 16L << 20 || memory > _options.MaxMemoryBytes)
        {
            throw SandboxError.Invalid($"memoryBytes must be between {16L << 20} and {_options.MaxMemoryBytes}.");
        }
        var cpus = request.Cpus ?? _options.DefaultCpus;
        if (!(cpus >= 0.01 && cpus <= _options.MaxCpus))
        {
            throw SandboxError.Invalid($"cpus must be between 0.01 and {_options.MaxCpus}.");
        }
        var pids = request.PidsLimit ?? _options.DefaultPidsLimit;
        if (pids < 16 || pids > _options.MaxPidsLimit)
        {
            throw SandboxError.Invalid($"pidsLimit must be between 16 and {_options.MaxPidsLimit}.");
        }
        var network = request.NetworkMode ?? "none";
        if (network != "none" && !_options.AllowedNetworks.Contains(network, StringComparer.Ordinal))
        {
            throw SandboxError.Invalid($"Network mode '{network}' is not allowed on this server (allowed: none{string.Concat(_options.AllowedNetworks.Select(n => ", " + n))}).");
        }
        var runtime = request.Runtime ?? specs.DefaultRuntime;
        if (runtime != specs.DefaultRuntime && !_options.AllowedRuntimes.Contains(runtime, StringComparer.Ordinal))
        {
            throw SandboxError.Invalid($"Runtime '{runtime}' is not allowed on this server.");
        }
        return new SessionShape(image, memory, cpus, pids, network, runtime);
    }
}

/// <summary>Checks of the free-form parts of a create request.</summary>
internal static class SessionRequestValidator
{
    public static TimeSpan Seconds(int? requested, int defaultSeconds, int maxSeconds, string name)
    {
        var seconds = requested ?? defaultSeconds;
        if (seconds < 1 || seconds > maxSeconds)
        {
            throw SandboxError.Invalid($"{name} must be between 1 and {maxSeconds}.");
        }
        return TimeSpan.FromSeconds(seconds);
    }

    public static Dictionary<string, string> Environment(IReadOnlyDictionary<string, string>? environment)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            if (!IsEnvironmentName(key))
            {
                throw SandboxError.Invalid($"'{key}' is not a valid environment variable name.");
            }
            if (key.StartsWith("SANDBOXKIT_", StringComparison.Ordinal))
            {
                throw SandboxError.Invalid($"'{key}': names starting with SANDBOXKIT_ are reserved.");
            }
            if (value is null || value.Contains('\0', StringComparison.Ordinal))
            {
                throw SandboxError.Invalid($"Environment variable '{key}' is null or contains a NUL character.");
            }
            result[key] = value;
        }
        if (result.Sum(kv => kv.Key.Length + kv.Value.Length) > 32 * 1024)
        {
            throw SandboxError.Invalid("environment is larger than 32 KiB.");
        }
        return result;
    }

    public static bool IsEnvironmentName(string key) =>
        key.Length is > 0 and <= 256 && (char.IsAsciiLetter(key[0]) || key[0] == '_') && key.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    public static Dictionary<string, string> Metadata(IReadOnlyDictionary<string, string>? metadata)
    {
        var result = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>(), StringComparer.Ordinal);
        if (result.Count > 32 || result.Any(kv => kv.Key.Length is 0 or > 128 || kv.Value is null || kv.Value.Length > 1024))
        {
            throw SandboxError.Invalid("metadata allows at most 32 entries, keys of 1-128 characters and values of up to 1024.");
        }
        return result;
    }

    public static string UserId(string userId) =>
        userId.Length is > 0 and <= 200 && !userId.Any(char.IsControl)
            ? userId
            : throw SandboxError.Invalid("userId must be 1-200 characters without control characters.");
}

/// <summary>What makes two sessions' containers interchangeable (the warm pool is keyed by it).</summary>
internal sealed record SessionShape(string Image, long MemoryBytes, double Cpus, int PidsLimit, string NetworkMode, string Runtime)
{
    public string Key { get; } = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(
        FormattableString.Invariant($"{Image}|{MemoryBytes}|{Cpus}|{PidsLimit}|{NetworkMode}|{Runtime}"))))[..16];
}
