using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace SandboxKit.Agents;

/// <summary>
/// Reads host files for <c>upload_file_from_host</c>, only from the allowed directories. The requested path must be absolute;
/// every symbolic link in it is resolved (as <c>realpath</c> does) before the check, the resolved path is what gets opened,
/// and on Linux the opened handle is checked again, so a link or a swapped directory cannot lead outside.
/// </summary>
internal sealed class HostUploadPolicy
{
    private const int MaxLinkHops = 40;
    private static readonly StringComparison PathComparison = OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
    private readonly string[] _roots;
    private readonly long _maxBytes;

    public HostUploadPolicy(IEnumerable<string> allowedDirectories, long maxBytes)
    {
        _roots = allowedDirectories.Where(d => !string.IsNullOrWhiteSpace(d)).ToArray();
        foreach (var root in _roots)
        {
            if (!Path.IsPathFullyQualified(root))
            {
                throw new ArgumentException($"Allowed upload directory '{root}' is not an absolute path.", nameof(allowedDirectories));
            }
        }
        _maxBytes = maxBytes;
    }

    public bool Enabled => _roots.Length > 0;

    /// <summary>The file's bytes, or a <see cref="SandboxToolException"/> that says (without disclosing the host's layout) why not.</summary>
    public async Task<byte[]> ReadAsync(string hostPath, CancellationToken cancellationToken)
    {
        if (!Path.IsPathFullyQualified(hostPath))
        {
            throw new SandboxToolException("hostPath must be an absolute path.");
        }
        // Directories are resolved on every call: they may be links themselves, or be created after start.
        var roots = _roots.Select(RealPath).OfType<string>().ToArray();
        var real = RealPath(hostPath);
        if (real is null || !roots.Any(root => IsInside(real, root)))
        {
            // The same answer for "missing" and "not allowed": a model cannot probe the host's files.
            throw new SandboxToolException("hostPath is not a file inside the directories this application allows uploads from.");
        }

        FileStream stream;
        try
        {
            stream = OpenForRead(real);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ExternalException)
        {
            throw new SandboxToolException("hostPath is not a readable file inside the directories this application allows uploads from.");
        }
        await using (stream.ConfigureAwait(false))
        {
            if (OperatingSystem.IsLinux() && OpenedPath(stream.SafeFileHandle) is { } opened && !roots.Any(root => IsInside(opened, root)))
            {
                throw new SandboxToolException("hostPath is not a file inside the directories this application allows uploads from.");
            }
            if (!stream.CanSeek)
            {
                throw new SandboxToolException("hostPath is not a regular file.");
            }
            if (stream.Length > _maxBytes)
            {
                throw new SandboxToolException($"the file is larger than {_maxBytes} bytes, the most this application uploads.");
            }
            var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int read;
            while ((read = await stream.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
            {
                if (buffer.Length + read > _maxBytes)
                {
                    throw new SandboxToolException($"the file is larger than {_maxBytes} bytes, the most this application uploads.");
                }
                buffer.Write(chunk, 0, read);
            }
            return buffer.ToArray();
        }
    }

    /// <summary>True when <paramref name="path"/> is strictly below <paramref name="root"/> (both already resolved).</summary>
    internal static bool IsInside(string path, string root)
    {
        var prefix = Path.EndsInDirectorySeparator(root) ? root : root + Path.DirectorySeparatorChar;
        return path.Length > prefix.Length && path.StartsWith(prefix, PathComparison);
    }

    /// <summary>
    /// The path with every symbolic link resolved and <c>.</c>/<c>..</c> applied to the resolved directories (as <c>realpath(3)</c>),
    /// or null when a component does not exist or links loop.
    /// </summary>
    internal static string? RealPath(string path)
    {
        if (!Path.IsPathFullyQualified(path))
        {
            return null;
        }
        var root = Path.GetPathRoot(path)!;
        var pending = new LinkedList<string>(Split(path[root.Length..]));
        var current = root;
        var hops = 0;
        while (pending.First is { } node)
        {
            pending.RemoveFirst();
            var part = node.Value;
            if (part == ".")
            {
                continue;
            }
            if (part == "..")
            {
                current = Path.GetDirectoryName(current) ?? root;
                continue;
            }
            var next = Path.Join(current, part);
            string? link;
            try
            {
                var info = new FileInfo(next);
                if (!info.Exists && !Directory.Exists(next))
                {
                    return null;
                }
                link = info.LinkTarget;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                return null;
            }
            if (link is null)
            {
                current = next;
                continue;
            }
            if (++hops > MaxLinkHops)
            {
                return null;
            }
            // Continue with the link's own components, then the rest of the path.
            var linkParts = Split(Path.IsPathFullyQualified(link) ? link[Path.GetPathRoot(link)!.Length..] : link);
            if (Path.IsPathFullyQualified(link))
            {
                current = Path.GetPathRoot(link)!;
            }
            for (var i = linkParts.Length - 1; i >= 0; i--)
            {
                pending.AddFirst(linkParts[i]);
            }
        }
        return current;
    }

    private static string[] Split(string path) =>
        path.Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries);

    private static FileStream OpenForRead(string path)
    {
        if (OperatingSystem.IsLinux())
        {
            // O_NONBLOCK: opening a FIFO must not wait for a writer (it then fails the regular-file check).
            var fd = NativeMethods.Open(path, NativeMethods.ReadOnlyNonBlockingCloseOnExec);
            if (fd < 0)
            {
                throw new IOException($"open failed with errno {Marshal.GetLastPInvokeError()}.");
            }
            return new FileStream(new SafeFileHandle((IntPtr)fd, ownsHandle: true), FileAccess.Read, bufferSize: 1);
        }
        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.Asynchronous);
    }

    /// <summary>Where an open handle really points (Linux), from <c>/proc/self/fd</c>.</summary>
    private static string? OpenedPath(SafeFileHandle handle)
    {
        try
        {
            return new FileInfo($"/proc/self/fd/{handle.DangerousGetHandle()}").LinkTarget;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static class NativeMethods
    {
        // O_RDONLY | O_NONBLOCK (04000) | O_CLOEXEC (02000000): the same values on x86-64 and arm64 Linux.
        public const int ReadOnlyNonBlockingCloseOnExec = 0x800 | 0x80000;

        [DllImport("libc", EntryPoint = "open", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        public static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);
    }
}
