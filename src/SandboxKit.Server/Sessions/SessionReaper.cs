using Microsoft.Extensions.Options;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Adopts the engine's live sessions at start (before the pool or any request creates containers) and then,
/// every <see cref="SandboxOptions.ReaperIntervalSeconds"/>, removes expired ones. Each pass catches its own
/// failures: an escaped exception would stop the host, and one bad container must never stop the reaper.
/// </summary>
internal sealed class SessionReaper(SessionLifecycle sessions, DiskStore disks, BlockIo blockIo, IOptions<SandboxOptions> options, ILogger<SessionReaper> logger) : BackgroundService
{
    private bool _adopted;
    private DateTime _nextStorageSweep = DateTime.UtcNow;

    /// <summary>How often unused user storage is looked for (retention is counted in days; a minute is plenty).</summary>
    private TimeSpan StorageSweepInterval => TimeSpan.FromSeconds(Math.Min(60, options.Value.UserStorageRetentionDays * 86400 / 4));

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        logger.Log(disks.Enabled ? LogLevel.Information : LogLevel.Warning, "Disks: {Disks}", disks.Reason);
        logger.LogInformation("Block I/O: {BlockIo}", blockIo.Describe());
        await TryAdoptAsync(cancellationToken).ConfigureAwait(false);
        // After adoption, which sweeps image files no volume refers to.
        disks.StartPool();
        await base.StartAsync(cancellationToken).ConfigureAwait(false);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(options.Value.ReaperIntervalSeconds));
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            if (!_adopted)
            {
                await TryAdoptAsync(stoppingToken).ConfigureAwait(false);
            }
            try
            {
                await sessions.ReapAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (Exception e) when (!stoppingToken.IsCancellationRequested)
            {
                logger.LogWarning(e, "Reaper pass failed; the next pass retries");
            }
            if (DateTime.UtcNow >= _nextStorageSweep)
            {
                _nextStorageSweep = DateTime.UtcNow + StorageSweepInterval;
                try
                {
                    await sessions.ExpireUserStorageAsync(stoppingToken).ConfigureAwait(false);
                }
                catch (Exception e) when (!stoppingToken.IsCancellationRequested)
                {
                    logger.LogWarning(e, "User storage sweep failed; the next sweep retries");
                }
            }
        }
    }

    private async Task TryAdoptAsync(CancellationToken cancellationToken)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(15));
            await sessions.AdoptAsync(timeout.Token).ConfigureAwait(false);
            _adopted = true;
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            logger.LogWarning("Could not adopt existing sessions yet ({Message}); retrying while the server runs", e.Message);
        }
    }
}
