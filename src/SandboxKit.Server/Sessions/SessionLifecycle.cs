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
    IOptions<SandboxOptions> options,
    TimeProvider time,
    ILogger<SessionLifecycle> logger)
{
    private readonly SandboxOptions _options = options.Value;

    public TimeSpan ConnectTimeout => TimeSpan.FromSeconds(_options.SupervisorConnectTimeoutSeconds);

    /// <summary>
    /// Runs <paramref name="work"/> on the session's supervisor connection, as session activity. Failures leave as domain
    /// errors: a container that vanished is a 404, a supervisor that cannot be reached a 503, another build a 409.
    /// </summary>
    public async Task<T> UseSupervisorAsync<T>(Session session, Func<SupervisorConnection, Task<T>> work, CancellationToken cancellationToken)
    {
        using var activity = session.BeginActivity(time);
        try
        {
            var connection = await session.GetConnectionAsync(dialer, ConnectTimeout, cancellationToken).ConfigureAwait(false);
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
            // Container first: a claim without a container is recognised as an orphan on the next start.
            await engine.RemoveContainerAsync(session.ContainerId, CancellationToken.None).ConfigureAwait(false);
            await RemoveVolumeQuietlyAsync(session.ClaimVolume).ConfigureAwait(false);
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
        var stale = await bundle.SweepStaleVolumesAsync(engine, cancellationToken).ConfigureAwait(false);
        logger.LogInformation("Adopted {Adopted} live sessions, removed {Removed} expired or orphaned resources and {Stale} unused supervisor volumes",
            adopted, removed, stale);
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
            await engine.RemoveVolumeAsync(UserVolumeName(tenant.Name, userId), cancellationToken).ConfigureAwait(false);
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
