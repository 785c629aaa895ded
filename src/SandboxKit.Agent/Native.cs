using System.Runtime.InteropServices;
using System.Text;

namespace SandboxKit.Agent;

/// <summary>
/// The native layer (native/sys.c, native/spawn.c), linked into the binary (DirectPInvoke "sbkagent"). Every
/// function returns a non-negative result or -errno; every descriptor it creates is close-on-exec.
/// </summary>
internal static unsafe partial class Native
{
    private const string Lib = "sbkagent";

    internal const int AtFdCwd = -100;

    // open(2) flags (x86_64 and aarch64 generic values differ only for O_DIRECTORY/O_NOFOLLOW on arm; this
    // binary is built for linux-x64).
    internal const int ORdOnly = 0;
    internal const int OWrOnly = 1;
    internal const int ORdWr = 2;
    internal const int OCreat = 0x40;
    internal const int OExcl = 0x80;
    internal const int ONoCtty = 0x100;
    internal const int OTrunc = 0x200;
    internal const int OAppend = 0x400;
    internal const int ONonBlock = 0x800;
    internal const int ODirectory = 0x10000;
    internal const int ONoFollow = 0x20000;

    internal const uint EpollIn = 0x001;
    internal const uint EpollOut = 0x004;
    internal const uint EpollErr = 0x008;
    internal const uint EpollHup = 0x010;
    internal const uint EpollRdHup = 0x2000;
    internal const int EpollCtlAdd = 1;
    internal const int EpollCtlDel = 2;
    internal const int EpollCtlMod = 3;

    internal const short PollIn = 0x001;
    internal const short PollOut = 0x004;
    internal const short PollErr = 0x008;
    internal const short PollHup = 0x010;

    internal const int SigKill = 9;
    internal const int SigTerm = 15;
    internal const int SigStop = 19;
    internal const int SigCont = 18;

    internal const uint SIfMt = 0xF000;
    internal const uint SIfDir = 0x4000;
    internal const uint SIfReg = 0x8000;
    internal const uint SIfLnk = 0xA000;

    [StructLayout(LayoutKind.Sequential)]
    internal struct Event
    {
        public uint Events;
        public int Fd;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct Stat
    {
        public long Dev;
        public long Ino;
        public long Size;
        public long MtimeSec;
        public long MtimeNsec;
        public uint Mode;
        public uint Uid;
        public uint Gid;
        public uint Nlink;

        public readonly bool IsDirectory => (Mode & SIfMt) == SIfDir;
        public readonly bool IsRegular => (Mode & SIfMt) == SIfReg;
        public readonly bool IsSymlink => (Mode & SIfMt) == SIfLnk;
        public readonly int Permissions => (int)(Mode & 0xFFF);
        public readonly double Mtime => MtimeSec + MtimeNsec / 1e9;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct FdMap
    {
        public int Source;
        public int Target;
    }

    /// <summary>Mirrors struct sbk_spawn_request in native/spawn.c.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SpawnRequest
    {
        public byte* Path;
        public byte** Argv;
        public byte** Envp;
        public byte* Cwd;
        public int Uid;
        public int Gid;
        public int OomScoreAdj;
        public int Flags;
        public int ControllingTty;
        public int FdCount;
        public FdMap* Fds;
    }

    internal const int SpawnSetSid = 1;
    internal const int SpawnSetCtty = 2;
    internal const int SpawnOomScore = 4;
    internal const int SpawnSetIds = 8;
    internal const int SpawnMaxFds = 16;

    [StructLayout(LayoutKind.Sequential)]
    internal struct SpawnResult
    {
        public int Error;
        public int Step;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct ExitStatus
    {
        public int Exited;
        public int Code;
        public int CoreDumped;
        public int Reserved;
        public long UserMicroseconds;
        public long SystemMicroseconds;
        public long MaxRssKib;
    }

    /// <summary>Mirrors struct sbk_inet in native/net.c: an IPv4 (first 4 bytes) or IPv6 address and a port.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct InetAddress
    {
        public int Family;
        public int Port;
        public fixed byte Address[16];
    }

    internal const int AfInet = 2;
    internal const int AfInet6 = 10;
    internal const int SigHup = 1;
    internal const int SigInt = 2;

    [LibraryImport(Lib, EntryPoint = "sbk_read")] internal static partial nint Read(int fd, byte* buffer, nint count);
    [LibraryImport(Lib, EntryPoint = "sbk_write")] internal static partial nint Write(int fd, byte* buffer, nint count);
    [LibraryImport(Lib, EntryPoint = "sbk_pread")] internal static partial nint PRead(int fd, byte* buffer, nint count, nint offset);
    [LibraryImport(Lib, EntryPoint = "sbk_pwrite")] internal static partial nint PWrite(int fd, byte* buffer, nint count, nint offset);
    [LibraryImport(Lib, EntryPoint = "sbk_close")] internal static partial int Close(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_pipe")] internal static partial int Pipe(int* fds, int nonblocking);
    [LibraryImport(Lib, EntryPoint = "sbk_set_nonblocking")] internal static partial int SetNonBlocking(int fd, int on);
    [LibraryImport(Lib, EntryPoint = "sbk_dup_above")] internal static partial int DupAbove(int fd, int minimum);
    [LibraryImport(Lib, EntryPoint = "sbk_fionread")] internal static partial int FionRead(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_memfd")] internal static partial int MemFd(byte* name);
    [LibraryImport(Lib, EntryPoint = "sbk_open")] internal static partial int Open(byte* path, int flags, int mode);
    [LibraryImport(Lib, EntryPoint = "sbk_openat")] internal static partial int OpenAt(int dirfd, byte* path, int flags, int mode);
    [LibraryImport(Lib, EntryPoint = "sbk_epoll_create1")] internal static partial int EpollCreate();
    [LibraryImport(Lib, EntryPoint = "sbk_epoll_ctl")] internal static partial int EpollCtl(int epfd, int op, int fd, uint events);
    [LibraryImport(Lib, EntryPoint = "sbk_epoll_wait")] internal static partial int EpollWait(int epfd, Event* events, int capacity, int timeoutMs);
    [LibraryImport(Lib, EntryPoint = "sbk_eventfd")] internal static partial int EventFd();
    [LibraryImport(Lib, EntryPoint = "sbk_timerfd")] internal static partial int TimerFd();
    [LibraryImport(Lib, EntryPoint = "sbk_timerfd_set")] internal static partial int TimerFdSet(int fd, long deadlineNs);
    [LibraryImport(Lib, EntryPoint = "sbk_monotonic_ns")] internal static partial long MonotonicNs();
    [LibraryImport(Lib, EntryPoint = "sbk_realtime_ms")] internal static partial long RealtimeMs();
    [LibraryImport(Lib, EntryPoint = "sbk_listen_unix")] internal static partial int ListenUnix(byte* path, int backlog);
    [LibraryImport(Lib, EntryPoint = "sbk_accept")] internal static partial int Accept(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_connect_unix")] internal static partial int ConnectUnix(byte* path);
    [LibraryImport(Lib, EntryPoint = "sbk_shutdown_write")] internal static partial int ShutdownWrite(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_send")] internal static partial nint Send(int fd, byte* buffer, nint count);
    [LibraryImport(Lib, EntryPoint = "sbk_poll2")] internal static partial int Poll2(int fd0, int events0, int fd1, int events1, int timeoutMs, int* revents);
    [LibraryImport(Lib, EntryPoint = "sbk_statat")] internal static partial int StatAt(int dirfd, byte* path, int nofollow, Stat* result);
    [LibraryImport(Lib, EntryPoint = "sbk_fstat")] internal static partial int FStat(int fd, Stat* result);
    [LibraryImport(Lib, EntryPoint = "sbk_mkdirat")] internal static partial int MkdirAt(int dirfd, byte* path, int mode);
    [LibraryImport(Lib, EntryPoint = "sbk_unlinkat")] internal static partial int UnlinkAt(int dirfd, byte* path, int removeDirectory);
    [LibraryImport(Lib, EntryPoint = "sbk_renameat")] internal static partial int RenameAt(int olddirfd, byte* oldpath, int newdirfd, byte* newpath);
    [LibraryImport(Lib, EntryPoint = "sbk_readlinkat")] internal static partial nint ReadLinkAt(int dirfd, byte* path, byte* buffer, nint size);
    [LibraryImport(Lib, EntryPoint = "sbk_fchmod")] internal static partial int FChmod(int fd, int mode);
    [LibraryImport(Lib, EntryPoint = "sbk_chown")] internal static partial int Chown(byte* path, int uid, int gid);
    [LibraryImport(Lib, EntryPoint = "sbk_chmod")] internal static partial int Chmod(byte* path, int mode);
    [LibraryImport(Lib, EntryPoint = "sbk_can_execute")] internal static partial int CanExecute(byte* path);
    [LibraryImport(Lib, EntryPoint = "sbk_getdents")] internal static partial nint GetDents(int fd, byte* buffer, nint size);
    [LibraryImport(Lib, EntryPoint = "sbk_lseek")] internal static partial nint LSeek(int fd, nint offset, int whence);
    [LibraryImport(Lib, EntryPoint = "sbk_kill")] internal static partial int Kill(int pid, int sig);
    [LibraryImport(Lib, EntryPoint = "sbk_getpid")] internal static partial int GetPid();
    [LibraryImport(Lib, EntryPoint = "sbk_geteuid")] internal static partial int GetEuid();
    [LibraryImport(Lib, EntryPoint = "sbk_umask")] internal static partial int Umask(int mask);
    [LibraryImport(Lib, EntryPoint = "sbk_set_not_dumpable")] internal static partial int SetNotDumpable();
    [LibraryImport(Lib, EntryPoint = "sbk_clear_groups")] internal static partial int ClearGroups();
    [LibraryImport(Lib, EntryPoint = "sbk_thread_become_user")] internal static partial int ThreadBecomeUser(int uid, int gid);
    [LibraryImport(Lib, EntryPoint = "sbk_getrandom")] internal static partial int GetRandom(byte* buffer, nint size);
    [LibraryImport(Lib, EntryPoint = "sbk_install_signal_handlers")] internal static partial int InstallSignalHandlers(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_page_size")] internal static partial nint PageSize();
    [LibraryImport(Lib, EntryPoint = "sbk_pty_unlock")] internal static partial int PtyUnlock(int master);
    [LibraryImport(Lib, EntryPoint = "sbk_pty_peer")] internal static partial int PtyPeer(int master);
    [LibraryImport(Lib, EntryPoint = "sbk_pty_number")] internal static partial int PtyNumber(int master);
    [LibraryImport(Lib, EntryPoint = "sbk_set_winsize")] internal static partial int SetWinsize(int fd, int cols, int rows);
    [LibraryImport(Lib, EntryPoint = "sbk_fchown")] internal static partial int FChown(int fd, int uid, int gid);
    [LibraryImport(Lib, EntryPoint = "sbk_inet_socket")] internal static partial int InetSocket(int family, int stream);
    [LibraryImport(Lib, EntryPoint = "sbk_inet_connect")] internal static partial int InetConnect(int fd, InetAddress* to);
    [LibraryImport(Lib, EntryPoint = "sbk_inet_bind")] internal static partial int InetBind(int fd, InetAddress* at);
    [LibraryImport(Lib, EntryPoint = "sbk_listen")] internal static partial int Listen(int fd, int backlog);
    [LibraryImport(Lib, EntryPoint = "sbk_inet_accept")] internal static partial int InetAccept(int fd, InetAddress* local);
    [LibraryImport(Lib, EntryPoint = "sbk_socket_error")] internal static partial int SocketError(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_reset_close")] internal static partial int ResetClose(int fd);
    [LibraryImport(Lib, EntryPoint = "sbk_inet_recvfrom")] internal static partial nint InetRecvFrom(int fd, byte* buffer, nint size, InetAddress* from);
    [LibraryImport(Lib, EntryPoint = "sbk_inet_sendto")] internal static partial nint InetSendTo(int fd, byte* buffer, nint size, InetAddress* to);
    [LibraryImport(Lib, EntryPoint = "sbk_route_local_default")] internal static partial int RouteLocalDefault(int family, int add);
    [LibraryImport(Lib, EntryPoint = "sbk_loopback_address")] internal static partial int LoopbackAddress(byte* address4, int add);
    [LibraryImport(Lib, EntryPoint = "sbk_spawn")] internal static partial int Spawn(SpawnRequest* request, SpawnResult* result);
    [LibraryImport(Lib, EntryPoint = "sbk_wait_peek")] internal static partial int WaitPeek();
    [LibraryImport(Lib, EntryPoint = "sbk_has_exited")] internal static partial int HasExited(int pid);
    [LibraryImport(Lib, EntryPoint = "sbk_reap")] internal static partial int Reap(int pid, ExitStatus* status);

    /// <summary>NUL-terminated UTF-8 (invalid UTF-16 becomes U+FFFD).</summary>
    internal static byte[] Z(string text)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(text) + 1];
        Encoding.UTF8.GetBytes(text, bytes);
        return bytes;
    }

    /// <summary>NUL-terminated copy of raw bytes.</summary>
    internal static byte[] Z(ReadOnlySpan<byte> text)
    {
        var bytes = new byte[text.Length + 1];
        text.CopyTo(bytes);
        return bytes;
    }

    /// <summary>Closes a descriptor that is no longer needed; errors are meaningless then.</summary>
    internal static void CloseQuietly(ref int fd)
    {
        if (fd >= 0)
        {
            _ = Close(fd);
            fd = -1;
        }
    }

    internal static int StatPath(string path, bool nofollow, out Stat result)
    {
        var z = Z(path);
        fixed (byte* p = z)
        fixed (Stat* s = &result)
        {
            return StatAt(AtFdCwd, p, nofollow ? 1 : 0, s);
        }
    }

    internal static bool IsDirectory(string path) => StatPath(path, false, out var st) == 0 && st.IsDirectory;

    /// <summary>Writes all of <paramref name="data"/> to a blocking descriptor.</summary>
    internal static int WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            var done = 0;
            while (done < data.Length)
            {
                var n = Write(fd, p + done, data.Length - done);
                if (n < 0)
                {
                    return (int)n;
                }
                done += (int)n;
            }
        }
        return data.Length;
    }

    /// <summary>Reads a small file whole (at most <paramref name="limit"/> bytes); null on any error.</summary>
    internal static byte[]? ReadSmallFile(string path, int limit = 1 << 20)
    {
        var z = Z(path);
        int fd;
        fixed (byte* p = z)
        {
            fd = Open(p, ORdOnly | ONoCtty, 0);
        }
        if (fd < 0)
        {
            return null;
        }
        try
        {
            var buffer = new byte[Math.Min(limit, 4096)];
            var length = 0;
            while (true)
            {
                if (length == buffer.Length)
                {
                    if (buffer.Length >= limit)
                    {
                        break;
                    }
                    Array.Resize(ref buffer, Math.Min(limit, buffer.Length * 2));
                }
                nint n;
                fixed (byte* b = buffer)
                {
                    n = Read(fd, b + length, buffer.Length - length);
                }
                if (n < 0)
                {
                    return null;
                }
                if (n == 0)
                {
                    break;
                }
                length += (int)n;
            }
            return buffer.AsSpan(0, length).ToArray();
        }
        finally
        {
            _ = Close(fd);
        }
    }
}

/// <summary>errno values used by name.</summary>
internal static class Errno
{
    internal const int EPERM = 1;
    internal const int ENOENT = 2;
    internal const int ESRCH = 3;
    internal const int EINTR = 4;
    internal const int EIO = 5;
    internal const int EBADF = 9;
    internal const int ECHILD = 10;
    internal const int EAGAIN = 11;
    internal const int ENOMEM = 12;
    internal const int EACCES = 13;
    internal const int EBUSY = 16;
    internal const int EEXIST = 17;
    internal const int EXDEV = 18;
    internal const int ENOTDIR = 20;
    internal const int EISDIR = 21;
    internal const int EINVAL = 22;
    internal const int EMFILE = 24;
    internal const int ETXTBSY = 26;
    internal const int EFBIG = 27;
    internal const int ENOSPC = 28;
    internal const int EROFS = 30;
    internal const int EPIPE = 32;
    internal const int ENAMETOOLONG = 36;
    internal const int ENOSYS = 38;
    internal const int ENOTEMPTY = 39;
    internal const int ELOOP = 40;
    internal const int EDQUOT = 122;
    internal const int EAFNOSUPPORT = 97;
    internal const int EADDRINUSE = 98;
    internal const int EADDRNOTAVAIL = 99;
    internal const int ENETUNREACH = 101;
    internal const int ECONNRESET = 104;
    internal const int ETIMEDOUT = 110;
    internal const int ECONNREFUSED = 111;
    internal const int EHOSTUNREACH = 113;
    internal const int EINPROGRESS = 115;
    internal const int ENOTTY = 25;
    internal const int EOPNOTSUPP = 95;

    /// <summary>The protocol's error code for an errno (docs/supervisor-protocol.md, "Files").</summary>
    internal static string ToCode(int errno) => errno switch
    {
        ENOENT => Protocol.ErrorCodes.NotFound,
        EISDIR => Protocol.ErrorCodes.IsDirectory,
        ENOTDIR => Protocol.ErrorCodes.NotDirectory,
        EACCES or EPERM or EROFS => Protocol.ErrorCodes.PermissionDenied,
        EEXIST => Protocol.ErrorCodes.Exists,
        ENOTEMPTY => Protocol.ErrorCodes.NotEmpty,
        ENOSPC or EDQUOT => Protocol.ErrorCodes.NoSpace,
        EINVAL or ENAMETOOLONG or ELOOP => Protocol.ErrorCodes.Invalid,
        _ => Protocol.ErrorCodes.Internal,
    };

    /// <summary>A short description, without the C library's locale machinery.</summary>
    internal static string Describe(int errno) => errno switch
    {
        EPERM => "operation not permitted",
        ENOENT => "no such file or directory",
        ESRCH => "no such process",
        EIO => "input/output error",
        EBADF => "bad file descriptor",
        ECHILD => "no child processes",
        EAGAIN => "resource temporarily unavailable",
        ENOMEM => "cannot allocate memory",
        EACCES => "permission denied",
        EBUSY => "device or resource busy",
        EEXIST => "file exists",
        EXDEV => "invalid cross-device link",
        ENOTDIR => "not a directory",
        EISDIR => "is a directory",
        EINVAL => "invalid argument",
        EMFILE => "too many open files",
        ETXTBSY => "text file busy",
        EFBIG => "file too large",
        ENOSPC => "no space left on device",
        EROFS => "read-only file system",
        EPIPE => "broken pipe",
        ENAMETOOLONG => "file name too long",
        ENOSYS => "function not implemented",
        ENOTEMPTY => "directory not empty",
        ELOOP => "too many levels of symbolic links",
        EDQUOT => "disk quota exceeded",
        ENOTTY => "inappropriate ioctl for device",
        EOPNOTSUPP => "operation not supported",
        EAFNOSUPPORT => "address family not supported",
        EADDRINUSE => "address already in use",
        EADDRNOTAVAIL => "cannot assign requested address",
        ENETUNREACH => "network is unreachable",
        ECONNRESET => "connection reset by peer",
        ETIMEDOUT => "connection timed out",
        ECONNREFUSED => "connection refused",
        EHOSTUNREACH => "no route to host",
        EINPROGRESS => "operation in progress",
        _ => $"errno {errno}",
    };
}

/// <summary>A failed system call, carrying its errno (mapped to a protocol error code where it ends a request).</summary>
internal sealed class SysException(int errno, string what) : Exception($"{what}: {SandboxKit.Agent.Errno.Describe(errno)}")
{
    internal int Errno { get; } = errno;

    internal static int Check(int result, string what) => result < 0 ? throw new SysException(-result, what) : result;

    internal static long Check(long result, string what) => result < 0 ? throw new SysException((int)-result, what) : result;
}
