using System.Collections.Concurrent;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Pre-started, never-used containers of the default session shape, handed out on create and refilled in the
/// background. A container leaves the pool once and is removed with its session: never reused.
/// Pooled containers carry only instance/kind/shape labels, so a restarted server sweeps them as unclaimed.
/// Each is handed out with its supervisor already connected and answering, so a warm create costs no engine round trip but the claim.
/// </summary>
internal sealed class WarmPool(
    IContainerEngine engine,
    ContainerSpecFactory specs,
    SupervisorBundle bundle,
    SupervisorDialer dialer,
    DiskStore disks,
    CapacityGuard capacity,
    IOptions<SandboxOptions> options,
    ILogger<WarmPool> logger) : BackgroundService
{
    private readonly ConcurrentQueue<WarmContainer> _ready = new();
    private readonly SemaphoreSlim _refill = new(0, int.MaxValue);
    private readonly int _size = options.Value.WarmPoolSize;
    private readonly string _instance = options.Value.InstanceName;
    private SessionShape? _shape;

    public int ReadyCount => _ready.Count;

    /// <summary>The memory limits of the ready containers (they count against the host's capacity like sessions).</summary>
    public long CommittedMemoryBytes => _shape is null ? 0 : _ready.Count * _shape.MemoryBytes;

    /// <summary>
    /// A ready container of this shape with its supervisor connection, or null (the caller starts one cold). The caller
    /// calls <see cref="Replenish"/> once its own engine calls are done: a refill started at once would compete with
    /// them in the engine (the claim write then took up to 14 ms instead of 1).
    /// </summary>
    public WarmContainer? TryTake(SessionShape shape)
    {
        if (_size == 0 || _shape is null || shape.Key != _shape.Key)
        {
            return null;
        }
        while (_ready.TryDequeue(out var warm))
        {
            if (!warm.Connection.IsClosed)
            {
                return warm;
            }
            // Its container died while waiting (removed by hand, engine restarted): never hand that out.
            _refill.Release();
            _ = DiscardAsync(warm);
        }
        return null;
    }

    /// <summary>Starts the refill of the slot a <see cref="TryTake"/> emptied.</summary>
    public void Replenish() => _refill.Release();

    /// <summary>Gives back a container a create took but could not use (it is still unused and connected).</summary>
    public void Return(WarmContainer warm) => _ready.Enqueue(warm);

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
                    if (!capacity.HasRoomForPool(_shape.MemoryBytes))
                    {
                        // A full host keeps its room for sessions; try again later.
                        await Task.Delay(TimeSpan.FromSeconds(5), stoppingToken).ConfigureAwait(false);
                        continue;
                    }
                    using var lease = capacity.Reserve(_shape.MemoryBytes, forPool: true);
                    await bundle.EnsureVolumeAsync(engine, _shape.Image, stoppingToken).ConfigureAwait(false);
                    var suffix = Guid.NewGuid().ToString("N");
                    var name = $"sk-{_instance}-pool-{suffix}";
                    DiskVolume? workspace = null;
                    if (disks.Enabled)
                    {
                        disks.EnsureRoom(options.Value.DefaultDiskBytes);
                        workspace = await disks.CreateVolumeAsync($"sk-{_instance}-ws-{suffix}", options.Value.DefaultDiskBytes, journal: false, new Dictionary<string, string>
                        {
                            [SessionLabels.Instance] = _instance,
                            [SessionLabels.Kind] = SessionLabels.KindWorkspace,
                        }, CancellationToken.None).ConfigureAwait(false);
                    }
                    string id;
                    try
                    {
                        // Not cancelled by the stop: a create cut off half way could leave a container nobody knows of.
                        // It is bounded by the engine; a stop that comes meanwhile removes the new container below.
                        id = await engine.RunContainerAsync(specs.Build(_shape, name, null, workspace), CancellationToken.None).ConfigureAwait(false);
                    }
                    catch
                    {
                        await RemoveWorkspaceAsync(workspace?.Name).ConfigureAwait(false);
                        throw;
                    }
                    try
                    {
                        var connection = await dialer.ConnectAsync(id, _shape.Runtime, name, TimeSpan.FromSeconds(options.Value.SupervisorConnectTimeoutSeconds), stoppingToken)
                            .ConfigureAwait(false);
                        if (stoppingToken.IsCancellationRequested)
                        {
                            await connection.DisposeAsync().ConfigureAwait(false);
                            throw new OperationCanceledException(stoppingToken);
                        }
                        _ready.Enqueue(new WarmContainer(id, connection, workspace));
                    }
                    catch
                    {
                        await engine.RemoveContainerAsync(id, CancellationToken.None).ConfigureAwait(false);
                        await RemoveWorkspaceAsync(workspace?.Name).ConfigureAwait(false);
                        throw;
                    }
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

    /// <summary>A graceful stop removes every pooled container: nothing of this server's pool outlives it.</summary>
    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        try
        {
            await base.StopAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            // Also when the host's shutdown timeout cut the wait short: a refill that finishes later removes its own container.
            await Task.WhenAll(DrainReady().Select(DiscardAsync)).ConfigureAwait(false);
        }
    }

    private IEnumerable<WarmContainer> DrainReady()
    {
        var drained = new List<WarmContainer>();
        while (_ready.TryDequeue(out var warm))
        {
            drained.Add(warm);
        }
        return drained;
    }

    private async Task RemoveWorkspaceAsync(string? workspace)
    {
        if (workspace is null)
        {
            return;
        }
        try
        {
            await disks.RemoveVolumeAsync(workspace, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            logger.LogWarning("Could not remove workspace {Volume} of a pooled container: {Message}; the next start removes it", workspace, e.Message);
        }
    }

    private async Task DiscardAsync(WarmContainer warm)
    {
        try
        {
            await warm.Connection.DisposeAsync().ConfigureAwait(false);
            await engine.RemoveContainerAsync(warm.ContainerId, CancellationToken.None).ConfigureAwait(false);
            await RemoveWorkspaceAsync(warm.Workspace?.Name).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            logger.LogWarning("Could not remove pooled container {Container}: {Message}", warm.ContainerId[..12], e.Message);
        }
    }
}

/// <summary>A pooled container, its live supervisor connection and its workspace disk (when disks are bounded).</summary>
internal sealed record WarmContainer(string ContainerId, SupervisorConnection Connection, DiskVolume? Workspace);
