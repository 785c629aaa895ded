using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Server.Api;

/// <summary>Files inside the sandbox (see <see cref="FileService"/>). Relative paths are relative to <c>/workspace</c>.</summary>
internal static class FilesApi
{
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
        HttpContext http, SessionRegistry sessions, FileService files, IOptions<SandboxOptions> options, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = FileService.Resolve(path);
        var max = options.Value.MaxFileBytes;
        AllowBody(http, max);
        var entry = await files.WriteAsync(session, target, http.Request.Body, max, cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/files?path={Uri.EscapeDataString(target)}", entry);
    }

    private static async Task<Created<FileList>> UploadMultipartAsync(
        HttpContext http, SessionRegistry sessions, FileService files, IOptions<SandboxOptions> options, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var directory = FileService.Resolve(path ?? "/workspace");
        if (!http.Request.HasFormContentType)
        {
            throw SandboxError.Invalid("Send multipart/form-data with one or more files, or PUT the raw bytes.");
        }
        var max = options.Value.MaxFileBytes;
        AllowBody(http, max);
        var form = await http.Request.ReadFormAsync(cancellationToken);
        if (form.Files.Count == 0)
        {
            throw SandboxError.Invalid("The form has no files.");
        }
        var entries = new List<FileEntry>();
        foreach (var file in form.Files)
        {
            var name = Path.GetFileName(file.FileName);
            if (string.IsNullOrEmpty(name) || name is "." or "..")
            {
                throw SandboxError.Invalid($"'{file.FileName}' is not a usable file name.");
            }
            await using var content = file.OpenReadStream();
            entries.Add(await files.WriteAsync(session, directory.TrimEnd('/') + "/" + name, content, max, cancellationToken));
        }
        return TypedResults.Created($"/v1/sessions/{id}/files/list?path={Uri.EscapeDataString(directory)}", new FileList { Path = directory, Entries = entries });
    }

    private static async Task DownloadAsync(HttpContext http, SessionRegistry sessions, FileService files, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = FileService.Resolve(path);
        await files.ReadAsync(session, target, http.Response.Body, () =>
        {
            http.Response.ContentType = "application/octet-stream";
            http.Response.Headers.ContentDisposition = ContentDisposition(Path.GetFileName(target));
        }, cancellationToken);
    }

    private static async Task<Ok<FileList>> ListAsync(HttpContext http, SessionRegistry sessions, FileService files, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        return TypedResults.Ok(await files.ListAsync(session, FileService.Resolve(path ?? "/workspace"), cancellationToken));
    }

    private static async Task<NoContent> DeleteAsync(HttpContext http, SessionRegistry sessions, FileService files, string id, string? path, bool? recursive, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = FileService.Resolve(path);
        if (target == "/")
        {
            throw SandboxError.Invalid("Refusing to delete '/'.");
        }
        await files.DeleteAsync(session, target, recursive ?? false, cancellationToken);
        return TypedResults.NoContent();
    }

    private static async Task<Created<FileEntry>> MakeDirectoryAsync(HttpContext http, SessionRegistry sessions, FileService files, string id, string? path, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        var target = FileService.Resolve(path);
        var entry = await files.MakeDirectoryAsync(session, target, cancellationToken);
        return TypedResults.Created($"/v1/sessions/{id}/files/list?path={Uri.EscapeDataString(target)}", entry);
    }

    /// <summary>
    /// <c>attachment</c> with an ASCII <c>filename</c> for old clients and the exact name as RFC 5987 <c>filename*</c>:
    /// header values must be ASCII, and sandbox file names can be anything but NUL and '/'.
    /// </summary>
    internal static string ContentDisposition(string name)
    {
        var fallback = new string(name.Select(c => c is >= ' ' and < (char)127 and not '"' and not '\\' and not ';' ? c : '_').ToArray());
        var header = new Microsoft.Net.Http.Headers.ContentDispositionHeaderValue("attachment") { FileName = "\"" + (fallback.Length > 0 ? fallback : "download") + "\"" };
        if (fallback != name)
        {
            header.FileNameStar = name;
        }
        return header.ToString();
    }

    private static void AllowBody(HttpContext http, long max)
    {
        if (http.Request.ContentLength > max)
        {
            throw SandboxError.TooLarge("File too large", $"Files are limited to {max} bytes.");
        }
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature)
        {
            // Multipart framing adds a little; the per-file check in FileService is exact.
            feature.MaxRequestBodySize = max + 64 * 1024;
        }
    }
}
