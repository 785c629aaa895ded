using System.Runtime.InteropServices;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// What .NET does not expose: a file's allocated blocks and device (<c>stat(2)</c>), and <c>mount(2)</c>/<c>umount2(2)</c>.
/// The mounts are syscalls rather than mount(8)/umount(8): those parse /proc/self/mountinfo, which the kernel does
/// not read out atomically, and with the engine mounting and unmounting container file systems all the time they
/// then miss entries ("not mounted" for a mounted disk).
/// </summary>
internal static class HostFileSystem
{
    private const ulong MsNoSuid = 2, MsNoDev = 4, MsNoAtime = 1024;
    private const int Einval = 22, Ebusy = 16, Enoent = 2;
    private const int MntDetach = 2;

    /// <summary>True when <paramref name="path"/> is the root of another file system than its parent directory's.</summary>
    public static bool IsMountPoint(string path)
    {
        if (!Directory.Exists(path))
        {
            return false;
        }
        try
        {
            return DeviceOf(path) != DeviceOf(Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(path))!);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Mounts the ext4 file system on <paramref name="device"/> at <paramref name="path"/> with nosuid, nodev, noatime.</summary>
    /// <exception cref="IOException">The kernel refused.</exception>
    public static void MountExt4(string device, string path)
    {
        if (Mount(device, path, "ext4", MsNoSuid | MsNoDev | MsNoAtime, IntPtr.Zero) != 0)
        {
            throw new IOException($"mount {device} on {path} failed (errno {Marshal.GetLastPInvokeError()}).");
        }
    }

    /// <summary>Unmounts <paramref name="path"/>; when it is busy on the host, detaches it lazily. False when it was not mounted.</summary>
    /// <exception cref="IOException">The kernel refused for another reason.</exception>
    public static bool Unmount(string path)
    {
        if (Umount2(path, 0) == 0)
        {
            return true;
        }
        var errno = Marshal.GetLastPInvokeError();
        if (errno is Einval or Enoent)
        {
            return false;
        }
        if (errno == Ebusy && Umount2(path, MntDetach) == 0)
        {
            return true;
        }
        throw new IOException($"umount {path} failed (errno {errno}).");
    }

    [DllImport("libc", EntryPoint = "mount", SetLastError = true)]
    private static extern int Mount([MarshalAs(UnmanagedType.LPUTF8Str)] string source, [MarshalAs(UnmanagedType.LPUTF8Str)] string target,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string type, ulong flags, IntPtr data);

    [DllImport("libc", EntryPoint = "umount2", SetLastError = true)]
    private static extern int Umount2([MarshalAs(UnmanagedType.LPUTF8Str)] string target, int flags);

    /// <summary>Bytes the file occupies on the host (its allocated blocks, not its apparent size: sparse files), or 0.</summary>
    public static long AllocatedBytes(string path) =>
        TryStat(path, out var buffer) ? BitConverter.ToInt64(buffer, StBlocksOffset) * 512 : 0;

    /// <summary>The major and minor number of the device that holds <paramref name="path"/>.</summary>
    /// <exception cref="IOException">The path cannot be examined.</exception>
    public static (long Major, long Minor) DeviceOf(string path)
    {
        if (!TryStat(path, out var buffer))
        {
            throw new IOException($"stat {path} failed (errno {Marshal.GetLastPInvokeError()}).");
        }
        // glibc's encoding of dev_t.
        var dev = BitConverter.ToUInt64(buffer, 0);
        var major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfffUL);
        var minor = (dev & 0xff) | ((dev >> 12) & ~0xffUL);
        return ((long)major, (long)(minor & 0xfffff));
    }

    // struct stat on x86_64 and aarch64: st_dev at 0, st_blocks (512-byte units) at 64.
    private const int StBlocksOffset = 64;

    private static bool TryStat(string path, out byte[] buffer)
    {
        buffer = new byte[256];
        return Stat(path, buffer) == 0;
    }

    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    private static extern int Stat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] buffer);
}
