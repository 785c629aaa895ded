using System.Collections.Concurrent;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Pre-started, never-used containers of the default session shape, handed out on create and refilled in the
/// background. A container leaves the pool once and is removed with its session: never reused.
/// Pooled containers carry only instance/kind/shape labels, so a restarted server sweeps them as unclaimed.
/// </summary>
internal sealed class WarmPool(
    IContainerEngine engine,
    ContainerSpecFactory specs,
    IOptions<SandboxOptions> options,
    ILogger<WarmPool> logger) : BackgroundService
{
    private readonly ConcurrentQueue<string> _ready = new();
    private readonly SemaphoreSlim _refill = new(0, int.MaxValue);
    private readonly int _size = options.Value.WarmPoolSize;
    private readonly string _instance = options.Value.InstanceName;
    private SessionShape? _shape;

    public int ReadyCount => _ready.Count;

    /// <summary>A ready container of this shape, or null (the caller starts one cold).</summary>
    public string? TryTake(SessionShape shape)
    {
        if (_size == 0 || _shape is null || shape.Key != _shape.Key || !_ready.TryDequeue(out var id))
        {
            return null;
        }
        _refill.Release();
        return id;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (_size == 0)
        {
            return;
        }
        _shape = specs.DefaultShape;
        var failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                while (_ready.Count < _size && !stoppingToken.IsCancellationRequested)
                {
                    var id = await engine.RunContainerAsync(specs.Build(_shape, $"sk-{_instance}-pool-{Guid.NewGuid():N}", null), stoppingToken).ConfigureAwait(false);
                    _ready.Enqueue(id);
                    failures = 0;
                }
                await _refill.WaitAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e)
            {
                // Engine down or image missing: keep trying, slower each time, without stopping the host.
                failures++;
                logger.LogWarning("Warm pool refill failed ({Attempt}): {Message}", failures, e.Message);
                await Task.Delay(TimeSpan.FromSeconds(Math.Min(30, failures * 2)), stoppingToken).ConfigureAwait(false);
            }
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
        // Unclaimed containers would be swept on the next start anyway; removing them now leaves the engine clean.
        while (_ready.TryDequeue(out var id))
        {
            try
            {
                await engine.RemoveContainerAsync(id, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                logger.LogWarning("Could not remove pooled container {Container}: {Message}", id[..12], e.Message);
            }
        }
    }
}
