using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Size-bounded disks for what sessions write: each workspace and each user's storage is its own ext4 file system in a
/// sparse image file on this host, attached to a loop device, mounted by the server under <c>mnt/</c> beside the images
/// and bind-mounted into the container; an engine volume of the same name carries its labels (the durable record) and
/// nothing else. The server mounts and unmounts the disks itself rather than leaving it to the engine's local volume
/// driver: after an engine restart with live restore that driver keeps counting such mounts as active, and their
/// volumes can then never be removed. A full disk is <c>ENOSPC</c> for the command that filled it, and nothing else;
/// <c>df</c> inside shows the session's own size. Chosen because it needs no quota support from the kernel or the
/// engine's data root (this host's kernel has neither ext4 nor XFS quotas, and the data root is ext4). It needs root and
/// an engine on this host; elsewhere (<c>Sandbox:DiskQuotas=off</c>, or <c>auto</c> without them) workspaces are plain,
/// unbounded volumes and the server says so at start.
/// Cost at create time: a sparse file, <c>mkfs.ext4</c> (~20 ms for 1 GiB) and <c>losetup</c> (~10 ms) — kept off the
/// create path by a small pool of ready disks of the default size.
/// </summary>
internal sealed class DiskStore : IAsyncDisposable
{
    private const string FileLabel = SessionLabels.Prefix + "disk-file";
    private const string BytesLabel = SessionLabels.Prefix + "disk-bytes";

    private readonly SandboxOptions _options;
    private readonly IContainerEngine _engine;
    private readonly ILogger<DiskStore> _logger;
    private readonly ConcurrentQueue<ReadyDisk> _ready = new();
    private readonly SemaphoreSlim _refill = new(0, int.MaxValue);
    private readonly CancellationTokenSource _stopping = new();
    // Mount, unmount and detach of one disk never overlap (a delete finished by the reaper, a user's storage mounted
    // again while its expiry runs); they take milliseconds, so one lock for all is enough.
    private readonly SemaphoreSlim _mounts = new(1, 1);
    private Task _refiller = Task.CompletedTask;

    public DiskStore(IOptions<SandboxOptions> options, IContainerEngine engine, ILogger<DiskStore> logger)
    {
        _options = options.Value;
        _engine = engine;
        _logger = logger;
        (Enabled, Reason) = Decide();
        // Per instance: two servers on one host never sweep each other's images.
        Directory = _options.DiskDirectory is { Length: > 0 } d ? d : Path.Combine("/var/lib/sandboxkit/disks", _options.InstanceName);
        if (Enabled)
        {
            System.IO.Directory.CreateDirectory(Directory);
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(Directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }
    }

    /// <summary>True when disks are bounded.</summary>
    public bool Enabled { get; }

    /// <summary>Why disks are (not) bounded, for the start-up log and health.</summary>
    public string Reason { get; }

    /// <summary>Where the image files live (per instance).</summary>
    public string Directory { get; }

    /// <summary>Labels that mark a volume as one of these disks.</summary>
    public static bool IsDisk(IReadOnlyDictionary<string, string> labels) => labels.ContainsKey(FileLabel);

    /// <summary>The size a disk volume was made with, from its labels.</summary>
    public static long? SizeOf(IReadOnlyDictionary<string, string> labels) =>
        labels.TryGetValue(BytesLabel, out var text) && long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var bytes) ? bytes : null;

    /// <summary>Starts keeping <see cref="SandboxOptions.DiskPoolSize"/> workspaces of the default size ready.</summary>
    public void StartPool()
    {
        if (!Enabled || _options.DiskPoolSize == 0)
        {
            return;
        }
        _refiller = Task.Run(RefillLoopAsync);
        _refill.Release(_options.DiskPoolSize);
    }

    /// <summary>
    /// Creates a new disk of <paramref name="bytes"/>, owned by the command user, mounts it, and records it as the engine
    /// volume <paramref name="volumeName"/>. <paramref name="journal"/>: with an ext4 journal (for storage that outlives sessions).
    /// </summary>
    /// <returns>The volume, its loop device and where it is mounted on this host (the container binds that).</returns>
    public async Task<DiskVolume> CreateVolumeAsync(string volumeName, long bytes, bool journal, IReadOnlyDictionary<string, string> labels, CancellationToken cancellationToken)
    {
        ReadyDisk? disk = null;
        if (!journal && bytes == _options.DefaultDiskBytes && _ready.TryDequeue(out var pooled))
        {
            disk = pooled;
            _refill.Release();
        }
        disk ??= await MakeDiskAsync(Path.Combine(Directory, volumeName + ".img"), bytes, journal, cancellationToken).ConfigureAwait(false);
        try
        {
            var mountPath = await MountAsync(disk.File, disk.Device, cancellationToken).ConfigureAwait(false);
            var all = new Dictionary<string, string>(labels)
            {
                [FileLabel] = disk.File,
                [BytesLabel] = bytes.ToString(CultureInfo.InvariantCulture),
            };
            await _engine.CreateVolumeAsync(volumeName, all, cancellationToken).ConfigureAwait(false);
            return new DiskVolume(volumeName, disk.Device, mountPath);
        }
        catch
        {
            await ReleaseAsync(disk.File).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Makes sure an existing disk is attached and mounted and returns where. After a host reboot loop devices and mounts
    /// are gone (and loop numbers may back other images since): the image is attached and mounted again.
    /// </summary>
    /// <exception cref="InvalidOperationException">The image file is missing.</exception>
    public async Task<DiskVolume> EnsureAttachedAsync(VolumeState volume, CancellationToken cancellationToken)
    {
        if (!volume.Labels.TryGetValue(FileLabel, out var file))
        {
            return new DiskVolume(volume.Name, null, null);
        }
        if (!File.Exists(file))
        {
            throw new InvalidOperationException($"The disk image {file} of volume {volume.Name} is missing.");
        }
        var device = DeviceOf(file);
        if (device is null)
        {
            device = await AttachAsync(file, cancellationToken).ConfigureAwait(false);
            _logger.LogWarning("Disk {Volume} had no loop device (loop devices did not survive, e.g. a reboot); attached it to {Device}.", volume.Name, device);
        }
        return new DiskVolume(volume.Name, device, await MountAsync(file, device, cancellationToken).ConfigureAwait(false));
    }

    /// <summary>Removes a disk volume from the engine and then the disk: unmounted, detached, deleted (idempotent).</summary>
    /// <remarks>The caller makes sure no container uses it any more: the engine does not know of the bind.</remarks>
    public async Task RemoveVolumeAsync(string volumeName, CancellationToken cancellationToken)
    {
        var volume = await _engine.InspectVolumeAsync(volumeName, cancellationToken).ConfigureAwait(false);
        if (volume is null)
        {
            return;
        }
        await _engine.RemoveVolumeAsync(volumeName, cancellationToken).ConfigureAwait(false);
        await ReleaseAsync(volume.Labels).ConfigureAwait(false);
    }

    /// <summary>
    /// What the disks have committed (the sum of their sizes, sparse or not) and what this host allows: the operator's
    /// <see cref="SandboxOptions.MaxCommittedDiskBytes"/>, or what the file system has free plus what the images already
    /// hold, less <see cref="SandboxOptions.MinFreeDiskBytes"/>. Kept within it, sparse images can never fill the host disk.
    /// </summary>
    public (long Committed, long Max) Commitment()
    {
        if (!Enabled || !System.IO.Directory.Exists(Directory))
        {
            return (0, 0);
        }
        long committed = 0, allocated = 0;
        foreach (var file in System.IO.Directory.EnumerateFiles(Directory, "*.img"))
        {
            try
            {
                committed += new FileInfo(file).Length;
                allocated += HostFileSystem.AllocatedBytes(file);
            }
            catch (IOException)
            {
                // Removed meanwhile.
            }
        }
        var max = _options.MaxCommittedDiskBytes > 0 ? _options.MaxCommittedDiskBytes : Math.Max(0, FreeBytes() + allocated - _options.MinFreeDiskBytes);
        return (committed, max);
    }

    /// <summary>Refuses (503 <c>capacity_exhausted</c>) a new disk of <paramref name="bytes"/> that would commit more than the host allows.</summary>
    public void EnsureRoom(long bytes)
    {
        if (!Enabled)
        {
            return;
        }
        var (committed, max) = Commitment();
        if (committed + bytes > max)
        {
            throw Domain.SandboxError.CapacityExhausted(
                $"A disk of {bytes >> 20} MiB would commit {(committed + bytes) >> 20} MiB of disk on this host, more than the {max >> 20} MiB it allows; " +
                "retry later, delete a session or user storage, or ask for a smaller disk.", TimeSpan.FromSeconds(30));
        }
    }

    /// <summary>Unmounts, detaches and deletes the disk of a volume that was removed from the engine (idempotent).</summary>
    public Task ReleaseAsync(IReadOnlyDictionary<string, string> labels) =>
        labels.TryGetValue(FileLabel, out var file) ? ReleaseAsync(file) : Task.CompletedTask;

    /// <summary>Marks a disk as used now (user storage retention counts from its last use).</summary>
    public void Touch(IReadOnlyDictionary<string, string> labels)
    {
        if (labels.TryGetValue(FileLabel, out var file) && File.Exists(file))
        {
            File.SetLastWriteTimeUtc(file, DateTime.UtcNow);
        }
    }

    /// <summary>Marks the disk of volume <paramref name="volumeName"/> as used now (its session ended).</summary>
    public void Touch(string volumeName)
    {
        var file = Path.Combine(Directory, volumeName + ".img");
        if (Enabled && File.Exists(file))
        {
            File.SetLastWriteTimeUtc(file, DateTime.UtcNow);
        }
    }

    /// <summary>When a disk was last used.</summary>
    public static DateTimeOffset? LastUsed(IReadOnlyDictionary<string, string> labels) =>
        labels.TryGetValue(FileLabel, out var file) && File.Exists(file) ? File.GetLastWriteTimeUtc(file) : null;

    /// <summary>Bytes the image files hold on the host now.</summary>
    public long AllocatedBytes()
    {
        if (!Enabled || !System.IO.Directory.Exists(Directory))
        {
            return 0;
        }
        long total = 0;
        foreach (var file in System.IO.Directory.EnumerateFiles(Directory, "*.img"))
        {
            total += HostFileSystem.AllocatedBytes(file);
        }
        return total;
    }

    /// <summary>Free bytes of the file system that holds the images.</summary>
    public long FreeBytes() => Enabled ? new DriveInfo(Directory).AvailableFreeSpace : 0;

    /// <summary>Image files without a volume (a crash between steps, or an earlier server) are detached and deleted.</summary>
    public async Task<int> SweepOrphansAsync(IReadOnlyCollection<string> liveFiles)
    {
        if (!Enabled || !System.IO.Directory.Exists(Directory))
        {
            return 0;
        }
        var live = new HashSet<string>(liveFiles, StringComparer.Ordinal);
        foreach (var ready in _ready)
        {
            live.Add(ready.File);
        }
        var removed = 0;
        foreach (var file in System.IO.Directory.EnumerateFiles(Directory, "*.img"))
        {
            if (!live.Contains(file))
            {
                await ReleaseAsync(file).ConfigureAwait(false);
                removed++;
            }
        }
        // Mount points whose image is gone (a crash between the steps of a release).
        var mounts = Path.Combine(Directory, "mnt");
        if (System.IO.Directory.Exists(mounts))
        {
            foreach (var mountPoint in System.IO.Directory.EnumerateDirectories(mounts))
            {
                if (!File.Exists(Path.Combine(Directory, Path.GetFileName(mountPoint) + ".img")))
                {
                    Unmount(mountPoint);
                }
            }
        }
        return removed;
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        try
        {
            await _refiller.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        while (_ready.TryDequeue(out var disk))
        {
            await ReleaseAsync(disk.File).ConfigureAwait(false);
        }
        _stopping.Dispose();
        var mounts = Path.Combine(Directory, "mnt");
        if (Enabled && System.IO.Directory.Exists(mounts) && !System.IO.Directory.EnumerateFileSystemEntries(mounts).Any())
        {
            System.IO.Directory.Delete(mounts);
        }
        if (Enabled && System.IO.Directory.Exists(Directory) && !System.IO.Directory.EnumerateFileSystemEntries(Directory).Any())
        {
            System.IO.Directory.Delete(Directory);
        }
    }

    private async Task RefillLoopAsync()
    {
        var failures = 0;
        while (!_stopping.IsCancellationRequested)
        {
            try
            {
                await _refill.WaitAsync(_stopping.Token).ConfigureAwait(false);
                if (_ready.Count >= _options.DiskPoolSize)
                {
                    continue;
                }
                var file = Path.Combine(Directory, $"ready-{Guid.NewGuid():N}.img");
                _ready.Enqueue(await MakeDiskAsync(file, _options.DefaultDiskBytes, journal: false, _stopping.Token).ConfigureAwait(false));
                failures = 0;
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                failures++;
                _logger.LogWarning("Could not prepare a ready disk ({Attempt}): {Message}", failures, e.Message);
                _refill.Release();
                await Task.Delay(TimeSpan.FromSeconds(Math.Min(30, failures * 2)), _stopping.Token).ConfigureAwait(false);
            }
        }
    }

    private async Task<ReadyDisk> MakeDiskAsync(string file, long bytes, bool journal, CancellationToken cancellationToken)
    {
        await using (var stream = new FileStream(file, FileMode.CreateNew, FileAccess.Write, FileShare.None))
        {
            // Sparse: the image takes host disk only as the session fills it (admission control keeps the sum in check).
            stream.SetLength(bytes);
        }
        try
        {
            var owner = FormattableString.Invariant($"root_owner={_options.CommandUid}:{_options.CommandGid},lazy_itable_init=1,lazy_journal_init=1");
            await RunAsync("mkfs.ext4", ["-q", "-F", "-m", "0", "-L", "sandboxkit", "-O", journal ? "has_journal" : "^has_journal", "-E", owner, file], cancellationToken)
                .ConfigureAwait(false);
            // An empty workspace looks empty: lost+found is root's and the user could not remove it (fsck makes it again if ever needed).
            await RunAsync("debugfs", ["-w", "-R", "rmdir lost+found", file], cancellationToken).ConfigureAwait(false);
            // Not cancelled half way: a device attached as the wait is cut off would outlive its image.
            return new ReadyDisk(file, await AttachAsync(file, CancellationToken.None).ConfigureAwait(false));
        }
        catch
        {
            if (DeviceOf(file) is { } device)
            {
                await RunAsync("losetup", ["-d", device], CancellationToken.None).ConfigureAwait(false);
            }
            TryDelete(file);
            throw;
        }
    }

    private static async Task<string> AttachAsync(string file, CancellationToken cancellationToken)
    {
        var device = (await RunAsync("losetup", ["--find", "--show", file], cancellationToken).ConfigureAwait(false)).Trim();
        if (!device.StartsWith("/dev/loop", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"losetup answered '{device}' for {file}.");
        }
        return device;
    }

    /// <summary>Where the disk of <paramref name="file"/> is mounted on this host.</summary>
    private string MountPathOf(string file) => Path.Combine(Directory, "mnt", Path.GetFileNameWithoutExtension(file));

    /// <summary>Mounts the disk at its mount point, unless it is mounted there already.</summary>
    private async Task<string> MountAsync(string file, string device, CancellationToken cancellationToken)
    {
        var mountPoint = MountPathOf(file);
        await _mounts.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!HostFileSystem.IsMountPoint(mountPoint))
            {
                System.IO.Directory.CreateDirectory(mountPoint);
                HostFileSystem.MountExt4(device, mountPoint);
            }
            return mountPoint;
        }
        finally
        {
            _mounts.Release();
        }
    }

    private static void Unmount(string mountPoint)
    {
        HostFileSystem.Unmount(mountPoint);
        try
        {
            System.IO.Directory.Delete(mountPoint);
        }
        catch (Exception e) when (e is IOException or DirectoryNotFoundException)
        {
        }
    }

    private async Task ReleaseAsync(string file)
    {
        await _mounts.WaitAsync().ConfigureAwait(false);
        try
        {
            Unmount(MountPathOf(file));
            // Only the device backed by this very file: loop numbers are reused.
            if (DeviceOf(file) is { } device)
            {
                try
                {
                    await RunAsync("losetup", ["-d", device], CancellationToken.None).ConfigureAwait(false);
                }
                catch (InvalidOperationException) when (DeviceOf(file) is null)
                {
                    // Detached meanwhile: what we wanted.
                }
            }
        }
        catch (Exception e) when (e is InvalidOperationException or IOException)
        {
            _logger.LogWarning("Could not release the disk {File}: {Message}; the next start sweeps it", file, e.Message);
            return;
        }
        finally
        {
            _mounts.Release();
        }
        TryDelete(file);
    }

    /// <summary>The loop device whose backing file is <paramref name="file"/>, from sysfs, or null.</summary>
    private static string? DeviceOf(string file)
    {
        try
        {
            foreach (var block in System.IO.Directory.EnumerateDirectories("/sys/block", "loop*"))
            {
                var backing = Path.Combine(block, "loop", "backing_file");
                if (File.Exists(backing) && File.ReadAllText(backing).Trim() == file)
                {
                    return "/dev/" + Path.GetFileName(block);
                }
            }
        }
        catch (IOException)
        {
        }
        return null;
    }

    private static void TryDelete(string file)
    {
        try
        {
            File.Delete(file);
        }
        catch (IOException)
        {
        }
    }

    private (bool Enabled, string Reason) Decide()
    {
        var mode = _options.DiskQuotas;
        if (mode == "off")
        {
            return (false, "Sandbox:DiskQuotas is off: workspaces and user storage are unbounded volumes");
        }
        var missing = new List<string>();
        if (!OperatingSystem.IsLinux())
        {
            missing.Add("Linux");
        }
        if (!Environment.IsPrivilegedProcess)
        {
            missing.Add("root (loop devices and mkfs)");
        }
        if (!_engine.IsLocal)
        {
            missing.Add("an engine on this host (the images are files here)");
        }
        if (!File.Exists("/dev/loop-control"))
        {
            missing.Add("/dev/loop-control");
        }
        if (FindOnPath("mkfs.ext4") is null || FindOnPath("debugfs") is null || FindOnPath("losetup") is null)
        {
            missing.Add("mkfs.ext4, debugfs and losetup (e2fsprogs, util-linux)");
        }
        if (missing.Count == 0)
        {
            return (true, $"bounded: each workspace ({_options.DefaultDiskBytes >> 20} MiB by default) and each user's storage is its own ext4 disk");
        }
        if (mode == "on")
        {
            throw new StartupException($"Sandbox:DiskQuotas=on needs {string.Join(", ", missing)}.");
        }
        return (false, $"unbounded: bounded disks need {string.Join(", ", missing)} (Sandbox:DiskQuotas=auto)");
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").Split(':')
            .Append("/usr/sbin").Append("/sbin")
            .Select(d => Path.Combine(d, name))
            .FirstOrDefault(File.Exists);

    private static async Task<string> RunAsync(string program, IReadOnlyList<string> arguments, CancellationToken cancellationToken)
    {
        var psi = new ProcessStartInfo(FindOnPath(program) ?? program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            psi.ArgumentList.Add(argument);
        }
        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"{program} did not start.");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        var output = process.StandardOutput.ReadToEndAsync(timeout.Token);
        var error = process.StandardError.ReadToEndAsync(timeout.Token);
        try
        {
            await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} failed ({process.ExitCode}): {(await error.ConfigureAwait(false)).Trim()}");
        }
        return await output.ConfigureAwait(false);
    }

    private sealed record ReadyDisk(string File, string Device);
}

/// <summary>An engine volume; for a bounded disk also its loop device and where it is mounted on this host (null: an unbounded volume).</summary>
internal sealed record DiskVolume(string Name, string? Device, string? MountPath);
