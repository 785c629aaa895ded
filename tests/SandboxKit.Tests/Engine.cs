using Microsoft.Extensions.Logging.Abstractions;
using SandboxKit.Server;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Tests;

/// <summary>Direct access to the real engine for arranging and checking what the server did.</summary>
internal static class Engine
{
    public static readonly DockerEngine Docker = new(DockerEngine.DefaultEndpoint, NullLogger<DockerEngine>.Instance);

    public static string Image => ServerInfo.DefaultImage;

    public static async Task<int> CountResourcesAsync(string instance)
    {
        var containers = await Docker.ListContainersAsync(SessionLabels.Instance, instance, CancellationToken.None);
        var volumes = await Docker.ListVolumesAsync(SessionLabels.Instance, instance, CancellationToken.None);
        return containers.Count + volumes.Count;
    }

    /// <summary>Removes what an instance left (after asserting there was nothing to remove, where the test wants that).</summary>
    public static async Task RemoveAllAsync(string instance)
    {
        foreach (var c in await Docker.ListContainersAsync(SessionLabels.Instance, instance, CancellationToken.None))
        {
            await Docker.RemoveContainerAsync(c.Id, CancellationToken.None);
        }
        foreach (var v in await Docker.ListVolumesAsync(SessionLabels.Instance, instance, CancellationToken.None))
        {
            await Docker.RemoveVolumeAsync(v.Name, CancellationToken.None);
        }
    }
}
