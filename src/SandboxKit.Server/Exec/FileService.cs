using System.Runtime.InteropServices;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Exec;

/// <summary>
/// Files inside a session, through its supervisor, which acts with the command user's permissions (so they work on the
/// tmpfs and volumes of a read-only rootfs, and a symlink to a root-only file is not read for the user). Used by the
/// Files API and the agent tools. Writes are atomic: the supervisor writes a temporary file and renames it on close,
/// and a cancelled or oversized write discards it. Transfers are flow-controlled both ways.
/// </summary>
internal sealed class FileService(SessionLifecycle lifecycle)
{
    private const int ChunkSize = FrameLimits.MaxDataPayload;

    public Task<FileEntry> WriteAsync(Session session, string path, Stream content, long maxBytes, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            await using var channel = await connection.OpenAsync(FrameType.WriteFile,
                new FileRequest { Path = path, Parents = true, MaxBytes = maxBytes }, ProtocolJsonContext.Default.FileRequest, cancellationToken).ConfigureAwait(false);
            var buffer = new byte[ChunkSize];
            long total = 0;
            try
            {
                int read;
                while ((read = await content.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                {
                    total += read;
                    if (total > maxBytes)
                    {
                        throw SandboxError.TooLarge("File too large", $"Files are limited to {maxBytes} bytes.");
                    }
                    await channel.SendDataAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                }
                await channel.SendAsync(FrameType.Close, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
            }
            catch (SupervisorUnavailableException) when (channel.Completed)
            {
                // The supervisor ended the write first (disk full, permissions, too large): its answer is the error.
                throw await FailureAsync(channel, path).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not SupervisorUnavailableException)
            {
                // Discard the temporary file: nothing half-written becomes visible.
                await CancelQuietlyAsync(channel).ConfigureAwait(false);
                throw;
            }
            var result = await ReadResultAsync(channel, path, cancellationToken).ConfigureAwait(false);
            return new FileEntry { Name = Path.GetFileName(path), Path = path, Type = "file", Size = result.Size ?? total };
        }, cancellationToken);

    public Task<FileEntry> WriteAsync(Session session, string path, ReadOnlyMemory<byte> content, long maxBytes, CancellationToken cancellationToken)
    {
        var stream = MemoryMarshal.TryGetArray(content, out var segment)
            ? new MemoryStream(segment.Array!, segment.Offset, segment.Count, writable: false)
            : new MemoryStream(content.ToArray(), writable: false);
        return WriteAsync(session, path, stream, maxBytes, cancellationToken);
    }

    /// <summary>Copies a file's bytes to <paramref name="destination"/>; <paramref name="beforeFirstWrite"/> runs once the file is known to be readable (so a missing file still fails cleanly).</summary>
    public Task<long> ReadAsync(Session session, string path, Stream destination, Action? beforeFirstWrite, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            await using var channel = await connection.OpenAsync(FrameType.ReadFile, new FileRequest { Path = path }, ProtocolJsonContext.Default.FileRequest, cancellationToken)
                .ConfigureAwait(false);
            var started = false;
            long total = 0;
            try
            {
                while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
                {
                    if (message.Type == FrameType.Stdout)
                    {
                        if (!started)
                        {
                            beforeFirstWrite?.Invoke();
                            started = true;
                        }
                        // Reading the next chunk only after this one is written is the back-pressure of a slow download.
                        await destination.WriteAsync(message.Data, cancellationToken).ConfigureAwait(false);
                        total += message.Data.Length;
                        continue;
                    }
                    if (message.Body is FileResult)
                    {
                        if (!started)
                        {
                            beforeFirstWrite?.Invoke();
                        }
                        return total;
                    }
                    throw SupervisorErrors.Unexpected(message, "file data");
                }
            }
            catch (Exception e) when (e is not SandboxError and not SupervisorUnavailableException)
            {
                // The destination failed (client gone): stop the supervisor's reading.
                await CancelQuietlyAsync(channel).ConfigureAwait(false);
                throw;
            }
            throw SandboxError.SupervisorUnavailable("The sandbox supervisor closed the read early.");
        }, cancellationToken);

    public async Task<FileList> ListAsync(Session session, string path, CancellationToken cancellationToken)
    {
        var result = await RequestAsync(session, FrameType.ListDirectory, new FileRequest { Path = path }, cancellationToken).ConfigureAwait(false);
        var entries = (result.Entries ?? [])
            .OrderBy(e => e.Name, StringComparer.Ordinal)
            .Select(e => new FileEntry
            {
                Name = e.Name,
                Path = path.TrimEnd('/') + "/" + e.Name,
                Type = e.Type,
                Size = e.Size,
                Mode = e.Mode,
                ModifiedAt = ToTime(e.Mtime),
            })
            .ToList();
        return new FileList { Path = path, Entries = entries, Truncated = result.Truncated == true };
    }

    public Task DeleteAsync(Session session, string path, bool recursive, CancellationToken cancellationToken) =>
        RequestAsync(session, FrameType.Delete, new FileRequest { Path = path, Recursive = recursive }, cancellationToken);

    public async Task<FileEntry> MakeDirectoryAsync(Session session, string path, CancellationToken cancellationToken)
    {
        await RequestAsync(session, FrameType.MakeDirectory, new FileRequest { Path = path, Parents = true }, cancellationToken).ConfigureAwait(false);
        var stat = await RequestAsync(session, FrameType.Stat, new FileRequest { Path = path }, cancellationToken).ConfigureAwait(false);
        return new FileEntry
        {
            Name = Path.GetFileName(path.TrimEnd('/')),
            Path = path,
            Type = stat.Type ?? "other",
            Size = stat.Size ?? 0,
            Mode = stat.Mode ?? 0,
            ModifiedAt = stat.Mtime is { } m ? ToTime(m) : null,
        };
    }

    /// <summary>
    /// A file time as the API shows it. It comes from the sandbox, where anyone can set any mtime (<c>touch -d</c>):
    /// values outside what <see cref="DateTimeOffset"/> holds are clamped, never an error.
    /// </summary>
    internal static DateTimeOffset ToTime(double seconds)
    {
        const double Min = -62_135_596_800; // 0001-01-01
        const double Max = 253_402_300_799; // 9999-12-31
        if (!double.IsFinite(seconds))
        {
            return DateTimeOffset.UnixEpoch;
        }
        var clamped = Math.Clamp(seconds, Min, Max);
        return DateTimeOffset.FromUnixTimeMilliseconds((long)Math.Clamp(clamped * 1000, Min * 1000, Max * 1000));
    }

    private Task<FileResult> RequestAsync(Session session, byte type, FileRequest request, CancellationToken cancellationToken) =>
        lifecycle.UseSupervisorAsync(session, async connection =>
        {
            await using var channel = await connection.OpenAsync(type, request, ProtocolJsonContext.Default.FileRequest, cancellationToken).ConfigureAwait(false);
            return await ReadResultAsync(channel, request.Path, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    private static async Task<FileResult> ReadResultAsync(SupervisorChannel channel, string path, CancellationToken cancellationToken)
    {
        var message = await channel.ReadAsync(cancellationToken).ConfigureAwait(false)
            ?? throw SandboxError.SupervisorUnavailable("The sandbox supervisor closed the file request without an answer.");
        return message.Body is FileResult result ? result : throw SupervisorErrors.Unexpected(message, "a file result");
    }

    private static async Task<SandboxError> FailureAsync(SupervisorChannel channel, string path)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            while (await channel.ReadAsync(timeout.Token).ConfigureAwait(false) is { } message)
            {
                if (message.IsFinal)
                {
                    return SupervisorErrors.Unexpected(message, "a file result");
                }
            }
        }
        catch (Exception e) when (e is SupervisorUnavailableException or OperationCanceledException)
        {
        }
        return SandboxError.SupervisorUnavailable($"The write of {path} ended without an answer.");
    }

    private static async Task CancelQuietlyAsync(SupervisorChannel channel)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await channel.SignalAsync(9, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SupervisorUnavailableException or OperationCanceledException)
        {
        }
    }

    /// <summary>An absolute, normalised path inside the sandbox; relative paths are taken from /workspace.</summary>
    public static string Resolve(string? path)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw SandboxError.Invalid("path is required.");
        }
        if (path.Length > 4096 || path.Contains('\0', StringComparison.Ordinal))
        {
            throw SandboxError.Invalid("path is longer than 4096 characters or contains NUL.");
        }
        return SandboxPath.Normalize(path);
    }
}
