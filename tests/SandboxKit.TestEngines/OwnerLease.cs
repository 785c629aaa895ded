namespace SandboxKit.TestEngines;

/// <summary>
/// An exclusive advisory lock on a file that lives exactly as long as the owning process: .NET opens a file with
/// <see cref="FileShare.None"/> under flock(LOCK_EX | LOCK_NB) on Linux, and the kernel drops the lock when the process
/// dies, however it dies. That is what tells a live engine from a stale one (no pid files, no pid reuse races), and
/// what the watchdog's flock(1) waits on. The descriptor is close-on-exec, so children never inherit the lease.
/// </summary>
internal sealed class OwnerLease : IDisposable
{
    private FileStream? _stream;

    private OwnerLease(string path, FileStream stream)
    {
        Path = path;
        _stream = stream;
    }

    public string Path { get; }

    /// <summary>
    /// Takes the lock without waiting. <paramref name="mode"/> decides whether the file must be new
    /// (<see cref="FileMode.CreateNew"/>, for a fresh engine id), must exist (<see cref="FileMode.Open"/>, for the sweep)
    /// or may be either (<see cref="FileMode.OpenOrCreate"/>, for subnet slots). Returns null when another open file
    /// holds the lock or the mode's condition on the file fails.
    /// </summary>
    public static OwnerLease? TryAcquire(string path, FileMode mode, string? contents = null)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, mode, FileAccess.ReadWrite, FileShare.None, bufferSize: 1, FileOptions.None);
        }
        catch (IOException)
        {
            // Held elsewhere (EWOULDBLOCK surfaces as IOException), or exists/missing against the mode.
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
        var lease = new OwnerLease(path, stream);
        if (contents is not null)
        {
            lease.Write(contents);
        }
        return lease;
    }

    /// <summary>Replaces the file's contents (through the locked descriptor: another open would conflict with the lock).</summary>
    public void Write(string contents)
    {
        var stream = _stream ?? throw new ObjectDisposedException(nameof(OwnerLease));
        stream.SetLength(0);
        stream.Position = 0;
        stream.Write(System.Text.Encoding.UTF8.GetBytes(contents));
        stream.Flush();
    }

    /// <summary>The file's contents, read through the locked descriptor.</summary>
    public string ReadContents()
    {
        var stream = _stream ?? throw new ObjectDisposedException(nameof(OwnerLease));
        stream.Position = 0;
        using var reader = new StreamReader(stream, System.Text.Encoding.UTF8, detectEncodingFromByteOrderMarks: false, leaveOpen: true);
        return reader.ReadToEnd();
    }

    /// <summary>Waits (polling) until the lock is free, for a lock that guards a slow one-time job such as a cache fill.</summary>
    public static async Task<OwnerLease> AcquireAsync(string path, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (TryAcquire(path, FileMode.OpenOrCreate) is { } lease)
            {
                return lease;
            }
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the lock {path} was not free within {timeout}");
            }
            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>True when some open file (in this process or another) holds the lock on <paramref name="path"/>.</summary>
    public static bool IsHeld(string path)
    {
        using var probe = TryAcquire(path, FileMode.Open);
        return probe is null && File.Exists(path);
    }

    /// <summary>Releases the lock; with <paramref name="deleteFile"/> the file is unlinked first, while still locked.</summary>
    public void Release(bool deleteFile)
    {
        var stream = Interlocked.Exchange(ref _stream, null);
        if (stream is null)
        {
            return;
        }
        if (deleteFile)
        {
            try
            {
                File.Delete(Path);
            }
            catch (IOException)
            {
                // Best effort: an orphaned lease file is found and removed by the next sweep.
            }
        }
        stream.Dispose();
    }

    public void Dispose() => Release(deleteFile: false);
}
