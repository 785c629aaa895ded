using System.Text;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// File operations (docs: "Files"), run on a file worker with the user's permissions. Errors are
/// <see cref="RequestException"/>s with the protocol's code for the errno.
/// </summary>
internal static unsafe class FileOps
{
    internal const int MaxEntries = 10_000;

    private const byte DtDir = 4;

    internal static string TypeName(in Native.Stat st) =>
        st.IsSymlink ? "symlink" : st.IsDirectory ? "dir" : st.IsRegular ? "file" : "other";

    private static RequestException Fail(int errno, string path) => RequestException.FromErrno(errno, path);

    internal static Native.Stat Lstat(string path)
    {
        var rc = Native.StatPath(path, nofollow: true, out var st);
        return rc < 0 ? throw Fail(-rc, path) : st;
    }

    internal static string ReadLink(int dirfd, byte[] z)
    {
        var buffer = new byte[4096];
        nint n;
        fixed (byte* p = z)
        fixed (byte* b = buffer)
        {
            n = Native.ReadLinkAt(dirfd, p, b, buffer.Length);
        }
        return n < 0 ? "" : Encoding.UTF8.GetString(buffer, 0, (int)n);
    }

    /// <summary><c>T</c>: lstat (symlinks are not followed).</summary>
    internal static FileResult StatResult(string path)
    {
        var st = Lstat(path);
        return new FileResult
        {
            Type = TypeName(st),
            Size = st.Size,
            Mode = st.Permissions,
            Mtime = st.Mtime,
            Target = st.IsSymlink ? ReadLink(Native.AtFdCwd, Native.Z(path)) : null,
        };
    }

    /// <summary><c>L</c>: lstat of each entry, sorted by name, at most <see cref="MaxEntries"/>.</summary>
    internal static FileResult List(string path)
    {
        var dir = OpenDirectory(Native.AtFdCwd, Native.Z(path), followLast: true, path);
        try
        {
            var entries = new List<FileEntryInfo>();
            var truncated = false;
            var buffer = new byte[32 * 1024];
            while (!truncated)
            {
                nint n;
                fixed (byte* b = buffer)
                {
                    n = Native.GetDents(dir, b, buffer.Length);
                }
                if (n < 0)
                {
                    throw Fail((int)-n, path);
                }
                if (n == 0)
                {
                    break;
                }
                for (var offset = 0; offset < n;)
                {
                    var length = buffer[offset + 16] | (buffer[offset + 17] << 8);
                    var name = EntryName(buffer, offset, length);
                    offset += length;
                    if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8))
                    {
                        continue;
                    }
                    if (entries.Count >= MaxEntries)
                    {
                        truncated = true;
                        break;
                    }
                    var z = Native.Z(name);
                    Native.Stat st;
                    int rc;
                    fixed (byte* p = z)
                    {
                        rc = Native.StatAt(dir, p, 1, &st);
                    }
                    if (rc < 0)
                    {
                        continue; // vanished meanwhile
                    }
                    entries.Add(new FileEntryInfo
                    {
                        Name = Encoding.UTF8.GetString(name),
                        Type = TypeName(st),
                        Size = st.Size,
                        Mode = st.Permissions,
                        Mtime = st.Mtime,
                    });
                }
            }
            entries.Sort(static (a, b) => string.CompareOrdinal(a.Name, b.Name));
            return new FileResult { Entries = entries, Truncated = truncated ? true : null };
        }
        finally
        {
            _ = Native.Close(dir);
        }
    }

    private static ReadOnlySpan<byte> EntryName(byte[] buffer, int offset, int length)
    {
        var name = buffer.AsSpan(offset + 19, length - 19);
        var end = name.IndexOf((byte)0);
        return end >= 0 ? name[..end] : name;
    }

    private static int OpenDirectory(int dirfd, byte[] z, bool followLast, string what)
    {
        int fd;
        fixed (byte* p = z)
        {
            fd = Native.OpenAt(dirfd, p, Native.ORdOnly | Native.ODirectory | (followLast ? 0 : Native.ONoFollow), 0);
        }
        return fd < 0 ? throw Fail(-fd, what) : fd;
    }

    /// <summary><c>M</c>: mkdir, or mkdir -p with <paramref name="parents"/>.</summary>
    internal static void MakeDirectory(string path, bool parents, int mode)
    {
        if (!parents)
        {
            var z = Native.Z(path);
            int rc;
            fixed (byte* p = z)
            {
                rc = Native.MkdirAt(Native.AtFdCwd, p, mode);
            }
            if (rc < 0)
            {
                throw Fail(-rc, path);
            }
            return;
        }
        MakeDirectories(path, mode);
    }

    /// <summary>mkdir -p: an existing directory is fine; an existing non-directory is <c>exists</c> (last) or <c>not_directory</c>.</summary>
    internal static void MakeDirectories(string path, int mode)
    {
        var trimmed = path.TrimEnd('/');
        if (trimmed.Length == 0)
        {
            return;
        }
        var rc = Native.StatPath(trimmed, nofollow: false, out var st);
        if (rc == 0)
        {
            if (!st.IsDirectory)
            {
                throw Fail(Errno.EEXIST, path);
            }
            return;
        }
        if (-rc != Errno.ENOENT)
        {
            throw Fail(-rc, path);
        }
        var slash = trimmed.LastIndexOf('/');
        if (slash > 0)
        {
            MakeDirectories(trimmed[..slash], mode);
        }
        var z = Native.Z(trimmed);
        fixed (byte* p = z)
        {
            rc = Native.MkdirAt(Native.AtFdCwd, p, mode);
        }
        if (rc < 0 && -rc != Errno.EEXIST)
        {
            throw Fail(-rc, path);
        }
    }

    /// <summary><c>D</c>: unlink files and symlinks; directories need <paramref name="recursive"/> unless empty. Never follows symlinks.</summary>
    internal static void Delete(string path, bool recursive, Func<bool> cancelled)
    {
        var st = Lstat(path);
        var z = Native.Z(path);
        int rc;
        if (!st.IsDirectory)
        {
            fixed (byte* p = z)
            {
                rc = Native.UnlinkAt(Native.AtFdCwd, p, 0);
            }
            if (rc < 0)
            {
                throw Fail(-rc, path);
            }
            return;
        }
        if (recursive)
        {
            var dir = OpenDirectory(Native.AtFdCwd, z, followLast: false, path);
            try
            {
                EmptyTree(dir, path, cancelled);
            }
            finally
            {
                _ = Native.Close(dir);
            }
        }
        fixed (byte* p = z)
        {
            rc = Native.UnlinkAt(Native.AtFdCwd, p, 1);
        }
        if (rc < 0)
        {
            throw Fail(-rc, path);
        }
    }

    private sealed class Frame(int fd, byte[] name)
    {
        internal int Fd { get; } = fd;
        internal byte[] Name { get; } = name; // NUL-terminated, in the parent
        internal byte[] Buffer { get; } = new byte[8192];
        internal int Offset { get; set; }
        internal int Length { get; set; }
        internal bool DeletedThisPass { get; set; }
    }

    /// <summary>Removes everything inside the open directory <paramref name="root"/> (iterative: depth costs no stack).</summary>
    private static void EmptyTree(int root, string what, Func<bool> cancelled)
    {
        var stack = new Stack<Frame>();
        stack.Push(new Frame(root, []));
        try
        {
            while (stack.Count > 0)
            {
                if (cancelled())
                {
                    throw RequestException.Invalid("delete cancelled");
                }
                var frame = stack.Peek();
                if (frame.Offset >= frame.Length)
                {
                    nint n;
                    fixed (byte* b = frame.Buffer)
                    {
                        n = Native.GetDents(frame.Fd, b, frame.Buffer.Length);
                    }
                    if (n < 0)
                    {
                        throw Fail((int)-n, what);
                    }
                    if (n == 0)
                    {
                        if (frame.DeletedThisPass)
                        {
                            // Entries removed while reading: read again from the start until a pass removes nothing.
                            frame.DeletedThisPass = false;
                            _ = Native.LSeek(frame.Fd, 0, 0);
                            continue;
                        }
                        stack.Pop();
                        if (stack.Count == 0)
                        {
                            return; // the root: the caller removes it
                        }
                        var parent = stack.Peek();
                        _ = Native.Close(frame.Fd);
                        int rc;
                        fixed (byte* p = frame.Name)
                        {
                            rc = Native.UnlinkAt(parent.Fd, p, 1);
                        }
                        if (rc < 0)
                        {
                            throw Fail(-rc, what);
                        }
                        parent.DeletedThisPass = true;
                        continue;
                    }
                    frame.Offset = 0;
                    frame.Length = (int)n;
                }
                var length = frame.Buffer[frame.Offset + 16] | (frame.Buffer[frame.Offset + 17] << 8);
                var type = frame.Buffer[frame.Offset + 18];
                var name = EntryName(frame.Buffer, frame.Offset, length);
                frame.Offset += length;
                if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8))
                {
                    continue;
                }
                var z = Native.Z(name);
                if (type != DtDir)
                {
                    int rc;
                    fixed (byte* p = z)
                    {
                        rc = Native.UnlinkAt(frame.Fd, p, 0);
                    }
                    if (rc == 0)
                    {
                        frame.DeletedThisPass = true;
                        continue;
                    }
                    if (-rc == Errno.ENOENT)
                    {
                        continue;
                    }
                    if (-rc != Errno.EISDIR && -rc != Errno.EPERM)
                    {
                        throw Fail(-rc, what);
                    }
                    // d_type unknown and it is a directory: descend.
                }
                int child;
                fixed (byte* p = z)
                {
                    child = Native.OpenAt(frame.Fd, p, Native.ORdOnly | Native.ODirectory | Native.ONoFollow, 0);
                }
                if (child < 0)
                {
                    if (-child == Errno.ENOENT)
                    {
                        continue;
                    }
                    if (-child is Errno.ENOTDIR or Errno.ELOOP)
                    {
                        int rc;
                        fixed (byte* p = z)
                        {
                            rc = Native.UnlinkAt(frame.Fd, p, 0);
                        }
                        if (rc < 0 && -rc != Errno.ENOENT)
                        {
                            throw Fail(-rc, what);
                        }
                        frame.DeletedThisPass = true;
                        continue;
                    }
                    throw Fail(-child, what);
                }
                stack.Push(new Frame(child, z));
            }
        }
        finally
        {
            while (stack.Count > 1)
            {
                _ = Native.Close(stack.Pop().Fd);
            }
        }
    }

    /// <summary>Opens a regular file for <c>G</c> (non-blocking open: a FIFO must not hang the worker).</summary>
    internal static int OpenForRead(string path, out long size)
    {
        var z = Native.Z(path);
        int fd;
        fixed (byte* p = z)
        {
            fd = Native.Open(p, Native.ORdOnly | Native.ONonBlock | Native.ONoCtty, 0);
        }
        if (fd < 0)
        {
            throw Fail(-fd, path);
        }
        Native.Stat st;
        var rc = Native.FStat(fd, &st);
        if (rc < 0 || !st.IsRegular)
        {
            _ = Native.Close(fd);
            if (rc < 0)
            {
                throw Fail(-rc, path);
            }
            throw st.IsDirectory
                ? new RequestException(ErrorCodes.IsDirectory, $"{path} is a directory")
                : RequestException.Invalid($"{path} is not a regular file");
        }
        _ = Native.SetNonBlocking(fd, 0);
        size = st.Size;
        return fd;
    }

    internal static byte[] ReadChunk(int fd, int max, string path)
    {
        var buffer = new byte[max];
        nint n;
        fixed (byte* b = buffer)
        {
            n = Native.Read(fd, b, max);
        }
        if (n < 0)
        {
            throw Fail((int)-n, path);
        }
        return n == max ? buffer : buffer.AsSpan(0, (int)n).ToArray();
    }

    /// <summary>An upload in progress: a temporary file next to the target.</summary>
    internal sealed class Upload
    {
        internal required string Target { get; init; }
        internal required string Directory { get; init; }
        internal required string TempName { get; init; }
        internal required int Mode { get; init; }
        internal int Fd { get; set; } = -1;
        internal long Size { get; set; }
    }

    /// <summary><c>W</c> begins: checks, parents, the temporary <c>.NAME.XXXXXX.sbk-tmp</c> (and the old content when appending).</summary>
    internal static Upload BeginUpload(string path, int? mode, bool append, bool parents, long? maxBytes)
    {
        var trimmed = path.Length > 1 ? path.TrimEnd('/') : path;
        var slash = trimmed.LastIndexOf('/');
        var directory = slash <= 0 ? "/" : trimmed[..slash];
        var name = trimmed[(slash + 1)..];
        if (name.Length == 0 || name is "." or "..")
        {
            throw RequestException.Invalid($"{path} names no file");
        }
        var rc = Native.StatPath(trimmed, nofollow: false, out var existing);
        if (rc == 0 && existing.IsDirectory)
        {
            throw new RequestException(ErrorCodes.IsDirectory, $"{path} is a directory");
        }
        if (parents)
        {
            MakeDirectories(directory, 0x1FF);
        }
        var finalMode = mode ?? (append && rc == 0 ? existing.Permissions : 0x1A4);
        Span<byte> random = stackalloc byte[6];
        fixed (byte* r = random)
        {
            _ = Native.GetRandom(r, 6);
        }
        const string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        for (var attempt = 0; ; attempt++)
        {
            var suffix = new char[6];
            for (var i = 0; i < 6; i++)
            {
                suffix[i] = alphabet[(random[i] + attempt * 7 + i) % alphabet.Length];
            }
            var tempName = $".{name}.{new string(suffix)}.sbk-tmp";
            var z = Native.Z(Session.CombinePath(directory, tempName));
            int fd;
            fixed (byte* p = z)
            {
                fd = Native.Open(p, Native.OWrOnly | Native.OCreat | Native.OExcl | Native.ONoFollow, 0x180);
            }
            if (fd == -Errno.EEXIST && attempt < 100)
            {
                continue;
            }
            if (fd < 0)
            {
                throw Fail(-fd, directory);
            }
            var upload = new Upload { Target = trimmed, Directory = directory, TempName = tempName, Mode = finalMode & 0xFFF, Fd = fd };
            if (append && rc == 0 && existing.IsRegular)
            {
                try
                {
                    CopyInto(trimmed, upload, maxBytes);
                }
                catch
                {
                    AbortUpload(upload);
                    throw;
                }
            }
            return upload;
        }
    }

    private static void CopyInto(string source, Upload upload, long? maxBytes)
    {
        var fd = OpenForRead(source, out _);
        try
        {
            var buffer = new byte[64 * 1024];
            while (true)
            {
                nint n;
                fixed (byte* b = buffer)
                {
                    n = Native.Read(fd, b, buffer.Length);
                }
                if (n < 0)
                {
                    throw Fail((int)-n, source);
                }
                if (n == 0)
                {
                    return;
                }
                WriteChunk(upload, buffer.AsSpan(0, (int)n), maxBytes);
            }
        }
        finally
        {
            _ = Native.Close(fd);
        }
    }

    internal static void WriteChunk(Upload upload, ReadOnlySpan<byte> data, long? maxBytes)
    {
        if (maxBytes is { } limit && upload.Size + data.Length > limit)
        {
            throw new RequestException(ErrorCodes.TooLarge, $"{upload.Target} would exceed {limit} bytes");
        }
        var rc = Native.WriteAll(upload.Fd, data);
        if (rc < 0)
        {
            throw Fail(-rc, upload.Target);
        }
        upload.Size += data.Length;
    }

    /// <summary>Renames the temporary over the target; returns the size.</summary>
    internal static long CommitUpload(Upload upload)
    {
        var rc = Native.FChmod(upload.Fd, upload.Mode);
        if (rc < 0)
        {
            throw Fail(-rc, upload.Target);
        }
        Native.Stat st;
        rc = Native.FStat(upload.Fd, &st);
        if (rc < 0)
        {
            throw Fail(-rc, upload.Target);
        }
        var fd = upload.Fd;
        upload.Fd = -1;
        rc = Native.Close(fd);
        if (rc < 0 && -rc != Errno.EINTR)
        {
            throw Fail(-rc, upload.Target); // e.g. ENOSPC or EDQUOT reported at close
        }
        var from = Native.Z(Session.CombinePath(upload.Directory, upload.TempName));
        var to = Native.Z(upload.Target);
        fixed (byte* f = from)
        fixed (byte* t = to)
        {
            rc = Native.RenameAt(Native.AtFdCwd, f, Native.AtFdCwd, t);
        }
        if (rc < 0)
        {
            throw Fail(-rc, upload.Target);
        }
        return st.Size;
    }

    /// <summary>Discards an upload's temporary file.</summary>
    internal static void AbortUpload(Upload upload)
    {
        if (upload.Fd >= 0)
        {
            var fd = upload.Fd;
            upload.Fd = -1;
            _ = Native.Close(fd);
        }
        var z = Native.Z(Session.CombinePath(upload.Directory, upload.TempName));
        fixed (byte* p = z)
        {
            _ = Native.UnlinkAt(Native.AtFdCwd, p, 0);
        }
    }

    /// <summary>The first executable <paramref name="name"/> on <paramref name="path"/> for the user, or null.</summary>
    internal static string? FindOnPath(string name, string? path)
    {
        foreach (var directory in (path ?? "").Split(':'))
        {
            var candidate = Session.CombinePath(directory.Length == 0 ? "." : directory, name);
            var z = Native.Z(candidate);
            int rc;
            fixed (byte* p = z)
            {
                rc = Native.CanExecute(p);
            }
            if (rc == 0 && Native.StatPath(candidate, nofollow: false, out var st) == 0 && st.IsRegular)
            {
                return candidate;
            }
        }
        return null;
    }
}
