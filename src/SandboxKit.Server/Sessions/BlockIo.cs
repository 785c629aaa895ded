using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// What keeps one session's disk traffic from starving the others: a proportional weight where the host's I/O scheduler
/// honours one (bfq, or cgroup v2 <c>io.weight</c>), and per-device rate and IOPS ceilings everywhere. The ceilings apply
/// to the session's own disks (its workspace and user storage loop devices) and to the host disk under the engine's
/// data root and the disk images, which every session shares. With cgroup v1 the kernel throttles reads and direct
/// writes; buffered writes are written back by the kernel outside the session's cgroup, so they are bounded by the
/// session's memory limit (dirty pages) and its disk size rather than by the write ceiling.
/// </summary>
internal sealed class BlockIo
{
    private readonly SandboxOptions _options;
    private readonly IReadOnlyList<string> _sharedDevices;

    public BlockIo(IOptions<SandboxOptions> options, DiskStore disks)
    {
        _options = options.Value;
        WeightSupported = DetectWeightSupport();
        _sharedDevices = disks.Enabled ? WholeDiskOf(disks.Directory) is { } device ? [device] : [] : [];
    }

    /// <summary>True when this host's kernel applies block-IO weights (otherwise the engine would discard them).</summary>
    public bool WeightSupported { get; }

    /// <summary>The weight to give every session, or null where it would be discarded.</summary>
    public int? Weight => WeightSupported && _options.BlockIoWeight > 0 ? _options.BlockIoWeight : null;

    /// <summary>One line for the start-up log: what bounds block I/O here.</summary>
    public string Describe()
    {
        var weight = Weight is { } w ? $"weight {w}" : _options.BlockIoWeight > 0 ? "no weight (this kernel's I/O scheduler ignores weights: not bfq)" : "no weight";
        var ceilings = HasCeilings
            ? $"ceilings per device {Rate(_options.DiskReadBytesPerSecond)} read, {Rate(_options.DiskWriteBytesPerSecond)} write, {Iops(_options.DiskReadIops)} read / {Iops(_options.DiskWriteIops)} write IOPS on the session's disks{(_sharedDevices.Count > 0 ? " and " + string.Join(", ", _sharedDevices) : "")}"
            : "no ceilings";
        return $"{weight}; {ceilings}";

        static string Rate(long bytes) => bytes > 0 ? $"{bytes >> 20} MiB/s" : "unlimited";
        static string Iops(long count) => count > 0 ? count.ToString(System.Globalization.CultureInfo.InvariantCulture) : "unlimited";
    }

    /// <summary>The ceilings for a container whose own disks are <paramref name="sessionDevices"/>.</summary>
    public IReadOnlyList<BlockIoCeiling> CeilingsFor(IEnumerable<string?> sessionDevices)
    {
        if (!HasCeilings)
        {
            return [];
        }
        return sessionDevices.OfType<string>().Concat(_sharedDevices).Distinct(StringComparer.Ordinal)
            .Select(device => new BlockIoCeiling(device, _options.DiskReadBytesPerSecond, _options.DiskWriteBytesPerSecond, _options.DiskReadIops, _options.DiskWriteIops))
            .ToList();
    }

    private bool HasCeilings => _options.DiskReadBytesPerSecond > 0 || _options.DiskWriteBytesPerSecond > 0 || _options.DiskReadIops > 0 || _options.DiskWriteIops > 0;

    private static bool DetectWeightSupport() =>
        File.Exists("/sys/fs/cgroup/blkio/blkio.weight") || File.Exists("/sys/fs/cgroup/blkio/blkio.bfq.weight")
        || (File.Exists("/sys/fs/cgroup/cgroup.controllers") && File.ReadAllText("/sys/fs/cgroup/cgroup.controllers").Split(' ', '\n').Contains("io"));

    /// <summary>The whole-disk device (e.g. <c>/dev/vda</c>) that holds <paramref name="path"/>, or null (throttles need whole disks).</summary>
    internal static string? WholeDiskOf(string path)
    {
        try
        {
            var (major, minor) = HostFileSystem.DeviceOf(path);
            var sys = $"/sys/dev/block/{major}:{minor}";
            if (!Directory.Exists(sys))
            {
                return null;
            }
            var resolved = new DirectoryInfo(sys).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? sys;
            // A partition's parent directory is its disk.
            if (File.Exists(Path.Combine(resolved, "partition")))
            {
                resolved = Path.GetDirectoryName(resolved)!;
            }
            var uevent = File.ReadAllLines(Path.Combine(resolved, "uevent"));
            var name = uevent.FirstOrDefault(l => l.StartsWith("DEVNAME=", StringComparison.Ordinal))?["DEVNAME=".Length..];
            return name is not null && File.Exists("/dev/" + name) ? "/dev/" + name : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
