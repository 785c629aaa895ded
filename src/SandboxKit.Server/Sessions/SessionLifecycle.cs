using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Everything after creation: reaching a session's supervisor (the one path every command, file and job operation
/// takes), deletion, expiry, adoption after a restart, and noticing containers that vanished behind the server's back.
/// </summary>
internal sealed class SessionLifecycle(
    IContainerEngine engine,
    SessionRegistry registry,
    SupervisorDialer dialer,
    SupervisorBundle bundle,
    DiskStore disks,
    Network.EgressService egress,
    IOptions<SandboxOptions> options,
    TimeProvider time,
    ILogger<SessionLifecycle> logger)
{
    private readonly SandboxOptions _options = options.Value;

    public TimeSpan ConnectTimeout => TimeSpan.FromSeconds(_options.SupervisorConnectTimeoutSeconds);

    /// <summary>A supervisor this server has spoken to is running already: it answers a reconnect at once or not at all.</summary>
    private TimeSpan ReconnectTimeout => TimeSpan.FromSeconds(Math.Min(_options.SupervisorConnectTimeoutSeconds, 5));

    /// <summary>
    /// Runs <paramref name="work"/> on the session's supervisor connection, as session activity. Failures leave as domain
    /// errors: a container that vanished is a 404, a supervisor that cannot be reached a 503, another build a 409.
    /// </summary>
    public async Task<T> UseSupervisorAsync<T>(Session session, Func<SupervisorConnection, Task<T>> work, CancellationToken cancellationToken)
    {
        using var activity = session.BeginActivity(time);
        try
        {
            var connection = await session.GetConnectionAsync(dialer, session.SupervisorVersion is null ? ConnectTimeout : ReconnectTimeout, cancellationToken).ConfigureAwait(false);
            // A new connection (a reconnect, a restarted server) takes the relay's channels again.
            await egress.AttachAsync(session, connection, cancellationToken).ConfigureAwait(false);
            return await work(connection).ConfigureAwait(false);
        }
        catch (SupervisorMismatchException e)
        {
            throw SandboxError.SupervisorMismatch(e.Message);
        }
        catch (Exception e) when (e is SupervisorUnavailableException or ContainerGoneException && !cancellationToken.IsCancellationRequested)
        {
            await ThrowIfGoneAsync(session).ConfigureAwait(false);
            throw SandboxError.SupervisorUnavailable(e.Message, e);
        }
        catch (EngineUnavailableException e)
        {
            throw SandboxError.EngineUnavailable(e.Message, e);
        }
    }

    /// <summary>
    /// Removes the session's container and claim; idempotent. The session is closed to callers at once; if the engine
    /// cannot be reached the error escapes and the reaper finishes the removal later (the session still counts against
    /// its tenant's quota until its container is really gone).
    /// </summary>
    public async Task DeleteAsync(Session session, string reason)
    {
        if (!registry.Contains(session.Id))
        {
            return;
        }
        session.MarkClosed();
        await session.DisconnectAsync().ConfigureAwait(false);
        try
        {
            // Container first: a claim without a container is recognised as an orphan on the next start; the workspace
            // disk is released once nothing mounts it, and the claim last, so a failure part way is finished by the reaper.
            await engine.RemoveContainerAsync(session.ContainerId, CancellationToken.None).ConfigureAwait(false);
            if (session.UserId is not null)
            {
                // Retention counts from the end of the last session that used the storage.
                disks.Touch(UserVolumeName(session.Tenant, session.UserId));
            }
            if (session.WorkspaceVolume is not null)
            {
                await disks.RemoveVolumeAsync(session.WorkspaceVolume, CancellationToken.None).ConfigureAwait(false);
            }
            await RemoveVolumeQuietlyAsync(session.ClaimVolume).ConfigureAwait(false);
            egress.Forget(session.Id);
        }
        catch (VolumeInUseException e)
        {
            // The engine has not let go of the disk yet: the reaper retries the removal.
            logger.LogDebug(e, "Workspace of session {Session} still in use; the reaper retries", session.Id);
            return;
        }
        catch (EngineUnavailableException e)
        {
            throw SandboxError.EngineUnavailable(e.Message, e);
        }
        if (registry.Remove(session))
        {
            logger.LogInformation("Session {Session} removed ({Reason})", session.Id, reason);
        }
    }

    /// <summary>When the session's container is gone or stopped, removes the session and throws a 404.</summary>
    public async Task ThrowIfGoneAsync(Session session)
    {
        ContainerState? state;
        try
        {
            state = await engine.InspectContainerAsync(session.ContainerId, CancellationToken.None).ConfigureAwait(false);
        }
        catch (EngineUnavailableException e)
        {
            throw SandboxError.EngineUnavailable(e.Message, e);
        }
        if (state is { Running: true })
        {
            return;
        }
        try
        {
            await DeleteAsync(session, state is null ? "container removed outside SandboxKit" : "container stopped").ConfigureAwait(false);
        }
        catch (SandboxError e) when (e.Kind == ErrorKind.EngineUnavailable)
        {
            // The reaper finishes it.
        }
        throw SandboxError.SessionNotFound(session.Id);
    }

    /// <summary>Removes expired sessions and finishes removals that failed earlier; one failure never stops the pass.</summary>
    public async Task ReapAsync(CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        foreach (var session in registry.All)
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
            if (session is not null)
            {
                session.Egress = egress.Load(session.Id);
            }
            if (session is not null && running.TryGetValue(session.ContainerId, out var container) && container.Running && now < session.MaxExpiresAt)
            {
                // Restart grants a fresh idle period; the maximum lifetime still bounds it.
                session.Touch(now);
                registry.Adopt(session);
                claimed.Add(session.ContainerId);
                adopted++;
                continue;
            }
            if (session is not null)
            {
                claimed.Add(session.ContainerId);
                await RemoveContainerQuietlyAsync(session.ContainerId).ConfigureAwait(false);
            }
            await RemoveVolumeQuietlyAsync(claim.Name).ConfigureAwait(false);
            removed++;
        }
        foreach (var container in containers.Where(c => !claimed.Contains(c.Id) && c.Labels.GetValueOrDefault(SessionLabels.Generation) != SessionLabels.CurrentGeneration))
        {
            // Unclaimed: a pooled container from an earlier run or a session whose claim was never written.
            await RemoveContainerQuietlyAsync(container.Id).ConfigureAwait(false);
            removed++;
        }
        // Workspace disks of removed sessions and of an earlier run's pool; then image files no volume refers to.
        var adoptedWorkspaces = new HashSet<string>(registry.All.Select(x => x.WorkspaceVolume).OfType<string>(), StringComparer.Ordinal);
        var volumes = await engine.ListVolumesAsync(SessionLabels.Instance, _options.InstanceName, cancellationToken).ConfigureAwait(false);
        foreach (var workspace in volumes.Where(v => v.Labels.GetValueOrDefault(SessionLabels.Kind) == SessionLabels.KindWorkspace && !adoptedWorkspaces.Contains(v.Name)))
        {
            await RemoveWorkspaceQuietlyAsync(workspace.Name).ConfigureAwait(false);
            removed++;
        }
        var liveDisks = (await engine.ListVolumesAsync(SessionLabels.Instance, _options.InstanceName, cancellationToken).ConfigureAwait(false))
            .Where(v => DiskStore.IsDisk(v.Labels))
            .Select(v => v.Labels[SessionLabels.Prefix + "disk-file"])
            .ToList();
        var orphanDisks = await disks.SweepOrphansAsync(liveDisks).ConfigureAwait(false);
        var stale = await bundle.SweepStaleVolumesAsync(engine, cancellationToken).ConfigureAwait(false);
        egress.SweepOrphans(registry.All.Select(x => x.Id).ToHashSet(StringComparer.Ordinal));
        logger.LogInformation("Adopted {Adopted} live sessions, removed {Removed} expired or orphaned resources, {Orphans} orphaned disk images and {Stale} unused supervisor volumes",
            adopted, removed, orphanDisks, stale);
    }

    public async Task DeleteUserStorageAsync(Tenant tenant, string userId, CancellationToken cancellationToken)
    {
        userId = SessionRequestValidator.UserId(userId);
        if (registry.HasLiveSessionsFor(tenant, userId))
        {
            throw SandboxError.Conflict("User storage in use", $"User '{userId}' still has live sessions; delete them first.");
        }
        try
        {
            var name = UserVolumeName(tenant.Name, userId);
            if (disks.Enabled)
            {
                await disks.RemoveVolumeAsync(name, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await engine.RemoveVolumeAsync(name, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (VolumeInUseException)
        {
            throw SandboxError.Conflict("User storage in use", $"User '{userId}' storage is still mounted by a container that is being removed; retry shortly.");
        }
        catch (EngineUnavailableException e)
        {
            throw SandboxError.EngineUnavailable(e.Message, e);
        }
    }

    /// <summary>
    /// Deletes end users' storage unused for <see cref="SandboxOptions.UserStorageRetentionDays"/> (last use: the last
    /// session that mounted it). Needs bounded disks, whose image files carry the time of last use.
    /// </summary>
    public async Task<int> ExpireUserStorageAsync(CancellationToken cancellationToken)
    {
        if (!disks.Enabled || _options.UserStorageRetentionDays <= 0)
        {
            return 0;
        }
        var cutoff = time.GetUtcNow() - TimeSpan.FromDays(_options.UserStorageRetentionDays);
        var expired = 0;
        foreach (var volume in await engine.ListVolumesAsync(SessionLabels.Instance, _options.InstanceName, cancellationToken).ConfigureAwait(false))
        {
            if (volume.Labels.GetValueOrDefault(SessionLabels.Kind) != SessionLabels.KindUserStorage
                || !volume.Labels.TryGetValue(SessionLabels.Tenant, out var tenant) || !volume.Labels.TryGetValue(SessionLabels.User, out var user)
                || DiskStore.LastUsed(volume.Labels) is not { } lastUsed || lastUsed >= cutoff
                || registry.HasLiveSessionsFor(new Tenant(tenant, 0), user))
            {
                continue;
            }
            try
            {
                await disks.RemoveVolumeAsync(volume.Name, cancellationToken).ConfigureAwait(false);
                expired++;
                logger.LogInformation("Storage of user {User} (tenant {Tenant}) deleted: unused since {LastUsed:u}", user, tenant, lastUsed);
            }
            catch (VolumeInUseException)
            {
                // Mounted again meanwhile.
            }
        }
        return expired;
    }

    internal async Task RemoveWorkspaceQuietlyAsync(string volume)
    {
        try
        {
            await disks.RemoveVolumeAsync(volume, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            logger.LogWarning(e, "Could not remove workspace {Volume}; the next start removes it", volume);
        }
    }

    internal string UserVolumeName(string tenant, string userId) =>
        $"sk-user-{_options.InstanceName}-{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(tenant + "\n" + userId)))[..32]}";

    internal async Task RemoveContainerQuietlyAsync(string containerId)
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

    private async Task RemoveVolumeQuietlyAsync(string name)
    {
        try
        {
            await engine.RemoveVolumeAsync(name, CancellationToken.None).ConfigureAwait(false);
        }
        catch (VolumeInUseException e)
        {
            logger.LogWarning(e, "Volume {Volume} is still in use; a later pass removes it", name);
        }
    }
}
