using System.Runtime.InteropServices;
using System.Text.Json;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Api;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Exec;

/// <summary>
/// Files inside a session, through its agent (so they work on the tmpfs and volumes of a read-only rootfs and run as
/// the sandbox user). Used by the Files API and the MCP tools. Writes are atomic: the agent writes a temporary file and
/// renames it on close, and a cancelled or oversized write discards it.
/// </summary>
internal sealed class FileService(SessionManager sessions)
{
    private const int ChunkSize = 64 * 1024;

    public Task<FileEntry> WriteAsync(Session session, string path, Stream content, long maxBytes, CancellationToken cancellationToken) =>
        sessions.UseAgentAsync(session, async agent =>
        {
            await using var channel = await agent.OpenAsync(FrameType.WriteFile, Payload(new AgentFileRequest { Path = path, Parents = true }), cancellationToken)
                .ConfigureAwait(false);
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
                        throw new ApiProblemException(StatusCodes.Status413PayloadTooLarge, ProblemCodes.PayloadTooLarge, "File too large", $"Files are limited to {maxBytes} bytes.");
                    }
                    await channel.SendAsync(FrameType.StdinData, buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                }
            }
            catch
            {
                // Discard the temporary file: nothing half-written becomes visible.
                await channel.SendAsync(FrameType.Kill, "{\"signal\":9}"u8.ToArray(), CancellationToken.None).ConfigureAwait(false);
                throw;
            }
            await channel.SendAsync(FrameType.StdinClose, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
            var result = await ReadResultAsync(channel, cancellationToken).ConfigureAwait(false);
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
        sessions.UseAgentAsync(session, async agent =>
        {
            await using var channel = await agent.OpenAsync(FrameType.ReadFile, Payload(new AgentFileRequest { Path = path }), cancellationToken).ConfigureAwait(false);
            var started = false;
            long total = 0;
            await foreach (var frame in channel.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                if (frame.Type == FrameType.Error)
                {
                    throw CommandService.ToProblem(frame);
                }
                if (!started)
                {
                    beforeFirstWrite?.Invoke();
                    started = true;
                }
                if (frame.Type == FrameType.Stdout)
                {
                    // A destination that throws stops the copy; disposing the channel drops the rest.
                    await destination.WriteAsync(frame.Payload, cancellationToken).ConfigureAwait(false);
                    total += frame.Payload.Length;
                }
                else if (frame.Type == FrameType.FileResult)
                {
                    return total;
                }
            }
            throw new AgentUnavailableException("The sandbox agent closed the read early.");
        }, cancellationToken);

    public async Task<FileList> ListAsync(Session session, string path, CancellationToken cancellationToken)
    {
        var result = await RequestAsync(session, FrameType.ListDir, new AgentFileRequest { Path = path }, cancellationToken).ConfigureAwait(false);
        var entries = (result.Entries ?? [])
            .OrderBy(e => e.Name, StringComparer.Ordinal)
            .Select(e => new FileEntry
            {
                Name = e.Name,
                Path = path.TrimEnd('/') + "/" + e.Name,
                Type = e.Type,
                Size = e.Size,
                Mode = e.Mode,
                ModifiedAt = DateTimeOffset.FromUnixTimeMilliseconds((long)(e.ModifiedAt * 1000)),
            })
            .ToList();
        return new FileList { Path = path, Entries = entries };
    }

    public Task DeleteAsync(Session session, string path, bool recursive, CancellationToken cancellationToken) =>
        RequestAsync(session, FrameType.Delete, new AgentFileRequest { Path = path, Recursive = recursive }, cancellationToken);

    public async Task<FileEntry> MakeDirectoryAsync(Session session, string path, CancellationToken cancellationToken)
    {
        await RequestAsync(session, FrameType.MakeDir, new AgentFileRequest { Path = path, Parents = true }, cancellationToken).ConfigureAwait(false);
        var stat = await RequestAsync(session, FrameType.Stat, new AgentFileRequest { Path = path }, cancellationToken).ConfigureAwait(false);
        return new FileEntry
        {
            Name = Path.GetFileName(path.TrimEnd('/')),
            Path = path,
            Type = stat.Type ?? "other",
            Size = stat.Size ?? 0,
            Mode = stat.Mode ?? 0,
            ModifiedAt = stat.ModifiedAt is { } m ? DateTimeOffset.FromUnixTimeMilliseconds((long)(m * 1000)) : null,
        };
    }

    private Task<AgentFileResult> RequestAsync(Session session, byte type, AgentFileRequest request, CancellationToken cancellationToken) =>
        sessions.UseAgentAsync(session, async agent =>
        {
            await using var channel = await agent.OpenAsync(type, Payload(request), cancellationToken).ConfigureAwait(false);
            return await ReadResultAsync(channel, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    private static async Task<AgentFileResult> ReadResultAsync(AgentChannel channel, CancellationToken cancellationToken)
    {
        await foreach (var frame in channel.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (frame.Type == FrameType.Error)
            {
                throw CommandService.ToProblem(frame);
            }
            if (frame.Type == FrameType.FileResult)
            {
                return JsonSerializer.Deserialize(frame.Payload.Span, AgentJsonContext.Default.AgentFileResult) ?? new AgentFileResult();
            }
        }
        throw new AgentUnavailableException("The sandbox agent closed the file request without an answer.");
    }

    private static byte[] Payload(AgentFileRequest request) => JsonSerializer.SerializeToUtf8Bytes(request, AgentJsonContext.Default.AgentFileRequest);

    /// <summary>An absolute, normalised path inside the sandbox; relative paths are taken from /workspace.</summary>
    public static string Resolve(string? path)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw ApiProblemException.Invalid("path is required.");
        }
        if (path.Length > 4096 || path.Contains('\0', StringComparison.Ordinal))
        {
            throw ApiProblemException.Invalid("path is longer than 4096 characters or contains NUL.");
        }
        return SandboxPath.Normalize(path);
    }
}
