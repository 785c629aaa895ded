using System.Collections.Frozen;
using System.Reflection;
using System.Security.Cryptography;
using Microsoft.Net.Http.Headers;

namespace SandboxKit.Server.Web;

/// <summary>
/// The web terminal (<c>Web/terminal/</c>) and the vendored xterm.js it runs on (<c>Web/vendor/xterm/</c>), served from
/// resources embedded in the server assembly: a single-file or containerised server needs no content root, and a page
/// always matches the server that serves it.
/// </summary>
internal static class WebAssets
{
    /// <summary>
    /// No inline script: the page's one script is <c>terminal.js</c>. Inline styles stay allowed because xterm.js sets
    /// element styles and injects its theme as a <c>&lt;style&gt;</c> element.
    /// </summary>
    internal const string ContentSecurityPolicy = "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; img-src 'self' data:";

    private const string PageResource = "web/terminal/index.html";

    /// <summary>Asset names the page uses (flat, under <c>/terminal/assets/</c>) and the resources behind them.</summary>
    private static readonly FrozenDictionary<string, string> AssetResources = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["terminal.js"] = "web/terminal/terminal.js",
        ["terminal.css"] = "web/terminal/terminal.css",
        ["xterm.js"] = "web/vendor/xterm/xterm.js",
        ["xterm.css"] = "web/vendor/xterm/xterm.css",
        ["addon-fit.js"] = "web/vendor/xterm/addon-fit.js",
    }.ToFrozenDictionary(StringComparer.Ordinal);

    private static readonly Lazy<FrozenDictionary<string, WebAsset>> Loaded = new(Load);

    /// <summary>Maps <c>GET /terminal</c> (the page) and <c>GET /terminal/assets/{name}</c> (its scripts and styles).</summary>
    /// <param name="app">The application's endpoint builder.</param>
    /// <returns>The same builder.</returns>
    public static IEndpointRouteBuilder MapWebAssets(this IEndpointRouteBuilder app)
    {
        app.MapGet("/terminal", (HttpContext http) => ServePage(http))
            .WithTags("Terminal")
            .WithSummary("The web terminal: a shell on a pseudo-terminal of a session, in the browser.")
            .AllowAnonymous()
            .ExcludeFromDescription();
        app.MapGet("/terminal/assets/{name}", (HttpContext http, string name) => ServeAsset(http, name))
            .WithTags("Terminal")
            .AllowAnonymous()
            .ExcludeFromDescription();
        return app;
    }

    private static IResult ServePage(HttpContext http)
    {
        var page = Loaded.Value[PageResource];
        var headers = http.Response.Headers;
        headers.ContentSecurityPolicy = ContentSecurityPolicy;
        // CSP frame-ancestors would change the policy above; this keeps other sites from framing the page to steal keystrokes.
        headers.XFrameOptions = "DENY";
        headers.XContentTypeOptions = "nosniff";
        // The URL carries the session id; nothing should forward it elsewhere.
        headers["Referrer-Policy"] = "no-referrer";
        // Revalidated on every load (the ETag makes that a 304), so a page never outlives the server that served it.
        headers.CacheControl = "no-cache";
        return Respond(http, page);
    }

    private static IResult ServeAsset(HttpContext http, string name)
    {
        if (!AssetResources.TryGetValue(name, out var resource))
        {
            return Results.Problem(statusCode: StatusCodes.Status404NotFound, title: "Not found",
                detail: $"There is no web terminal asset named '{name}'.");
        }
        var headers = http.Response.Headers;
        headers.XContentTypeOptions = "nosniff";
        headers.CacheControl = "public, max-age=3600";
        return Respond(http, Loaded.Value[resource]);
    }

    private static IResult Respond(HttpContext http, WebAsset asset)
    {
        http.Response.Headers.ETag = asset.ETag.ToString();
        if (Matches(http.Request, asset.ETag))
        {
            return Results.StatusCode(StatusCodes.Status304NotModified);
        }
        return Results.Bytes(asset.Content, asset.ContentType);
    }

    /// <summary>If-None-Match compares weakly (RFC 9110 13.1.2): a proxy may have weakened the tag it stored.</summary>
    private static bool Matches(HttpRequest request, EntityTagHeaderValue etag) =>
        request.GetTypedHeaders().IfNoneMatch is { Count: > 0 } candidates
        && candidates.Any(c => c.Equals(EntityTagHeaderValue.Any) || c.Compare(etag, useStrongComparison: false));

    private static FrozenDictionary<string, WebAsset> Load()
    {
        var assembly = typeof(WebAssets).Assembly;
        var assets = new Dictionary<string, WebAsset>(StringComparer.Ordinal);
        foreach (var resource in AssetResources.Values.Append(PageResource))
        {
            // Logical names come from MSBuild's RecursiveDir, whose separator is the build machine's.
            var manifestName = assembly.GetManifestResourceNames().FirstOrDefault(n => n.Replace('\\', '/') == resource)
                ?? throw new InvalidOperationException($"The server assembly lacks the embedded web asset '{resource}'; check the EmbeddedResource item in SandboxKit.Server.csproj.");
            assets[resource] = WebAsset.Read(assembly, manifestName, resource);
        }
        return assets.ToFrozenDictionary(StringComparer.Ordinal);
    }

    private sealed record WebAsset(byte[] Content, string ContentType, EntityTagHeaderValue ETag)
    {
        public static WebAsset Read(Assembly assembly, string manifestName, string resource)
        {
            using var stream = assembly.GetManifestResourceStream(manifestName)!;
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            var content = copy.ToArray();
            var etag = new EntityTagHeaderValue("\"" + Convert.ToHexStringLower(SHA256.HashData(content)) + "\"");
            return new WebAsset(content, ContentTypeOf(resource), etag);
        }

        private static string ContentTypeOf(string resource) => Path.GetExtension(resource) switch
        {
            ".html" => "text/html; charset=utf-8",
            ".js" => "text/javascript; charset=utf-8",
            ".css" => "text/css; charset=utf-8",
            var other => throw new InvalidOperationException($"No content type is known for the web asset '{resource}' ({other})."),
        };
    }
}
