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
        return containers.Count + volumes.Count + DiskImages(instance).Length;
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
        RemoveDisks(instance);
        // The server's per-instance state (egress policies, the gateway's CA) under its default directory.
        var state = Path.Combine("/var/lib/sandboxkit/state", instance);
        if (Directory.Exists(state))
        {
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>Where a test instance's bounded disks live (the server's default per-instance directory).</summary>
    public static string DiskDirectory(string instance) => Path.Combine("/var/lib/sandboxkit/disks", instance);

    /// <summary>The disk image files an instance still has.</summary>
    public static string[] DiskImages(string instance) =>
        Directory.Exists(DiskDirectory(instance)) ? Directory.GetFiles(DiskDirectory(instance), "*.img") : [];

    /// <summary>Unmounts and detaches an instance's disks and deletes their images (a failed test must not leak devices).</summary>
    private static void RemoveDisks(string instance)
    {
        var directory = DiskDirectory(instance);
        if (!Directory.Exists(directory))
        {
            return;
        }
        var mounts = Path.Combine(directory, "mnt");
        foreach (var mountPoint in Directory.Exists(mounts) ? Directory.GetDirectories(mounts) : [])
        {
            using var umount = System.Diagnostics.Process.Start("umount", ["-l", mountPoint]);
            umount.WaitForExit();
        }
        var images = new HashSet<string>(Directory.GetFiles(directory, "*.img"), StringComparer.Ordinal);
        foreach (var block in Directory.EnumerateDirectories("/sys/block", "loop*"))
        {
            var backing = Path.Combine(block, "loop", "backing_file");
            if (File.Exists(backing) && images.Contains(File.ReadAllText(backing).Trim()))
            {
                using var losetup = System.Diagnostics.Process.Start("losetup", ["-d", "/dev/" + Path.GetFileName(block)]);
                losetup.WaitForExit();
            }
        }
        Directory.Delete(directory, recursive: true);
    }
}
