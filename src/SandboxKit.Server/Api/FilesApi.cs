using System.Text.Json;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>
/// Files inside the sandbox, through the agent (so they work on tmpfs and volumes of a read-only rootfs and run as the sandbox user).
/// Relative paths are relative to <c>/workspace</c>. Writes are atomic: a broken upload leaves no half-written file.
/// </summary>
internal static class FilesApi
{
    private const int ChunkSize = 64 * 1024;

    public static RouteGroupBuilder MapFilesApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}").WithTags("Files").RequireTenant();
        group.MapPut("/files", UploadRawAsync).WithSummary("Write a file from the raw request body (parents are created).").DisableAntiforgery();
        group.MapPost("/files", UploadMultipartAsync).WithSummary("Upload multipart form files into the directory given by path.").DisableAntiforgery();
        group.MapGet("/files", DownloadAsync).WithSummary("Read a file's bytes.");
        group.MapGet("/files/list", ListAsync).WithSummary("List a directory.");
        group.MapDelete("/files", DeleteAsync).WithSummary("Delete a file, or a directory (recursive=true for a non-empty one).");
        group.MapPost("/directories", MakeDirectoryAsync).WithSummary("Make a directory and its parents.");
        return group;
    }

    private static async Task<Created<FileEntry>> UploadRawAsync(
        HttpContext http, SessionManager sessions, IOptions<SandboxOptions> options, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = Resolve(path);
        var max = options.Value.MaxFileBytes;
        AllowBody(http, max);
        var entry = await WriteAsync(sessions, session, target, http.Request.Body, max, cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/files?path={Uri.EscapeDataString(target)}", entry);
    }

    private static async Task<Created<FileList>> UploadMultipartAsync(
        HttpContext http, SessionManager sessions, IOptions<SandboxOptions> options, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var directory = Resolve(path ?? "/workspace");
        if (!http.Request.HasFormContentType)
        {
            throw ApiProblemException.Invalid("Send multipart/form-data with one or more files, or PUT the raw bytes.");
        }
        var max = options.Value.MaxFileBytes;
        AllowBody(http, max);
        var form = await http.Request.ReadFormAsync(cancellationToken);
        if (form.Files.Count == 0)
        {
            throw ApiProblemException.Invalid("The form has no files.");
        }
        var entries = new List<FileEntry>();
        foreach (var file in form.Files)
        {
            var name = Path.GetFileName(file.FileName);
            if (string.IsNullOrEmpty(name) || name is "." or "..")
            {
                throw ApiProblemException.Invalid($"'{file.FileName}' is not a usable file name.");
            }
            await using var content = file.OpenReadStream();
            entries.Add(await WriteAsync(sessions, session, directory.TrimEnd('/') + "/" + name, content, max, cancellationToken));
        }
        return TypedResults.Created($"/v1/sessions/{id}/files/list?path={Uri.EscapeDataString(directory)}", new FileList { Path = directory, Entries = entries });
    }

    private static async Task DownloadAsync(HttpContext http, SessionManager sessions, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = Resolve(path);
        await sessions.UseAgentAsync(session, async agent =>
        {
            await using var channel = await agent.OpenAsync(FrameType.ReadFile, Request(target), cancellationToken);
            var started = false;
            await foreach (var frame in channel.ReadAllAsync(cancellationToken))
            {
                if (frame.Type == FrameType.Error)
                {
                    throw CommandService.ToProblem(frame);
                }
                if (!started)
                {
                    // Headers wait for the first frame, so a missing file is still a clean 404.
                    http.Response.ContentType = "application/octet-stream";
                    http.Response.Headers.ContentDisposition = $"attachment; filename=\"{Path.GetFileName(target).Replace("\"", "", StringComparison.Ordinal)}\"";
                    started = true;
                }
                if (frame.Type == FrameType.Stdout)
                {
                    await http.Response.Body.WriteAsync(frame.Payload, cancellationToken);
                }
                else if (frame.Type == FrameType.FileResult)
                {
                    return true;
                }
            }
            throw new AgentUnavailableException("The sandbox agent closed the download early.");
        }, cancellationToken);
    }

    private static async Task<Ok<FileList>> ListAsync(HttpContext http, SessionManager sessions, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = Resolve(path ?? "/workspace");
        var result = await RequestAsync(sessions, session, FrameType.ListDir, new AgentFileRequest { Path = target }, cancellationToken);
        var entries = (result.Entries ?? [])
            .OrderBy(e => e.Name, StringComparer.Ordinal)
            .Select(e => new FileEntry
            {
                Name = e.Name,
                Path = target.TrimEnd('/') + "/" + e.Name,
                Type = e.Type,
                Size = e.Size,
                Mode = e.Mode,
                ModifiedAt = DateTimeOffset.FromUnixTimeMilliseconds((long)(e.ModifiedAt * 1000)),
            })
            .ToList();
        return TypedResults.Ok(new FileList { Path = target, Entries = entries });
    }

    private static async Task<NoContent> DeleteAsync(HttpContext http, SessionManager sessions, string id, string? path, bool? recursive, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = Resolve(path);
        if (target == "/")
        {
            throw ApiProblemException.Invalid("Refusing to delete '/'.");
        }
        await RequestAsync(sessions, session, FrameType.Delete, new AgentFileRequest { Path = target, Recursive = recursive ?? false }, cancellationToken);
        return TypedResults.NoContent();
    }

    private static async Task<Created<FileEntry>> MakeDirectoryAsync(HttpContext http, SessionManager sessions, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = Resolve(path);
        await RequestAsync(sessions, session, FrameType.MakeDir, new AgentFileRequest { Path = target, Parents = true }, cancellationToken);
        var stat = await RequestAsync(sessions, session, FrameType.Stat, new AgentFileRequest { Path = target }, cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/files/list?path={Uri.EscapeDataString(target)}", ToEntry(target, stat));
    }

    private static async Task<FileEntry> WriteAsync(SessionManager sessions, Session session, string target, Stream content, long max, CancellationToken cancellationToken)
    {
        return await sessions.UseAgentAsync(session, async agent =>
        {
            await using var channel = await agent.OpenAsync(FrameType.WriteFile, Request(new AgentFileRequest { Path = target, Parents = true }), cancellationToken);
            var buffer = new byte[ChunkSize];
            long total = 0;
            try
            {
                int read;
                while ((read = await content.ReadAsync(buffer, cancellationToken)) > 0)
                {
                    total += read;
                    if (total > max)
                    {
                        throw new ApiProblemException(StatusCodes.Status413PayloadTooLarge, ProblemCodes.PayloadTooLarge, "File too large", $"Files are limited to {max} bytes.");
                    }
                    await channel.SendAsync(FrameType.StdinData, buffer.AsMemory(0, read), cancellationToken);
                }
            }
            catch
            {
                // Discard the temporary file: nothing half-written becomes visible.
                await channel.SendAsync(FrameType.Kill, "{\"signal\":9}"u8.ToArray(), CancellationToken.None);
                throw;
            }
            await channel.SendAsync(FrameType.StdinClose, ReadOnlyMemory<byte>.Empty, cancellationToken);
            var result = await ReadResultAsync(channel, cancellationToken);
            return new FileEntry { Name = Path.GetFileName(target), Path = target, Type = "file", Size = result.Size ?? total };
        }, cancellationToken);
    }

    private static Task<AgentFileResult> RequestAsync(SessionManager sessions, Session session, byte type, AgentFileRequest request, CancellationToken cancellationToken) =>
        sessions.UseAgentAsync(session, async agent =>
        {
            await using var channel = await agent.OpenAsync(type, Request(request), cancellationToken);
            return await ReadResultAsync(channel, cancellationToken);
        }, cancellationToken);

    private static async Task<AgentFileResult> ReadResultAsync(AgentChannel channel, CancellationToken cancellationToken)
    {
        await foreach (var frame in channel.ReadAllAsync(cancellationToken))
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

    private static FileEntry ToEntry(string path, AgentFileResult stat) => new()
    {
        Name = Path.GetFileName(path.TrimEnd('/')),
        Path = path,
        Type = stat.Type ?? "other",
        Size = stat.Size ?? 0,
        Mode = stat.Mode ?? 0,
        ModifiedAt = stat.ModifiedAt is { } m ? DateTimeOffset.FromUnixTimeMilliseconds((long)(m * 1000)) : null,
    };

    private static byte[] Request(string path) => Request(new AgentFileRequest { Path = path });

    private static byte[] Request(AgentFileRequest request) => JsonSerializer.SerializeToUtf8Bytes(request, AgentJsonContext.Default.AgentFileRequest);

    private static void AllowBody(HttpContext http, long max)
    {
        if (http.Request.ContentLength > max)
        {
            throw new ApiProblemException(StatusCodes.Status413PayloadTooLarge, ProblemCodes.PayloadTooLarge, "File too large", $"Files are limited to {max} bytes.");
        }
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature)
        {
            // Multipart framing adds a little; the per-file check above is exact.
            feature.MaxRequestBodySize = max + 64 * 1024;
        }
    }

    /// <summary>An absolute, normalised path inside the sandbox; relative paths are taken from /workspace.</summary>
    internal static string Resolve(string? path)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw ApiProblemException.Invalid("path is required.");
        }
        if (path.Length > 4096 || path.Contains('\0', StringComparison.Ordinal))
        {
            throw ApiProblemException.Invalid("path is longer than 4096 characters or contains NUL.");
        }
        var absolute = path.StartsWith('/') ? path : "/workspace/" + path;
        var parts = new List<string>();
        foreach (var part in absolute.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (part == ".")
            {
                continue;
            }
            if (part == "..")
            {
                if (parts.Count > 0)
                {
                    parts.RemoveAt(parts.Count - 1);
                }
                continue;
            }
            parts.Add(part);
        }
        return "/" + string.Join('/', parts);
    }
}
