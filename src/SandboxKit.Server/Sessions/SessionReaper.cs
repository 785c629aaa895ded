using Microsoft.Extensions.Options;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Adopts the engine's live sessions at start (before the pool or any request creates containers) and then,
/// every <see cref="SandboxOptions.ReaperIntervalSeconds"/>, removes expired ones. Each pass catches its own
/// failures: an escaped exception would stop the host, and one bad container must never stop the reaper.
/// </summary>
internal sealed class SessionReaper(SessionLifecycle sessions, IOptions<SandboxOptions> options, ILogger<SessionReaper> logger) : BackgroundService
{
    private bool _adopted;

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await TryAdoptAsync(cancellationToken).ConfigureAwait(false);
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
