using System.Net;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using SandboxKit.Contracts;
using SandboxKit.Server.Api;

namespace SandboxKit.Server.Auth;

/// <summary>
/// What makes the keyless mode safe: without API keys anyone who can reach the port can run code, so the server must be
/// reachable from this machine only — and not from a web page this machine's browser opens. That means:
/// the addresses actually bound are loopback (checked after start, whatever the URLs or <c>Kestrel:Endpoints</c> said);
/// the <c>Host</c> header is a loopback name or address (a DNS-rebinding page arrives with its own name);
/// and a browser request from another origin (an <c>Origin</c> header that is not this server's) may not change
/// anything or open a WebSocket.
/// </summary>
internal static class LoopbackGuard
{
    /// <summary>Fails start-up when keyless and any bound address is not loopback.</summary>
    /// <exception cref="StartupException">A non-loopback address is bound.</exception>
    public static void CheckBoundAddresses(IServer server, TenantResolver tenants)
    {
        if (tenants.KeysConfigured)
        {
            return;
        }
        var addresses = server.Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        var open = addresses.Where(a => !IsLoopbackUrl(a)).ToList();
        if (open.Count > 0)
        {
            throw new StartupException(
                $"refusing to serve without API keys on {string.Join(", ", open)}: that is not loopback only. Configure Auth:ApiKeys, " +
                "or bind a loopback address such as http://127.0.0.1:5000 (a host name other than localhost binds every interface).");
        }
    }

    /// <summary>True for a URL whose host is a loopback address or <c>localhost</c>.</summary>
    public static bool IsLoopbackUrl(string url)
    {
        var normalized = url.Replace("://*", "://0.0.0.0", StringComparison.Ordinal).Replace("://+", "://0.0.0.0", StringComparison.Ordinal);
        return Uri.TryCreate(normalized, UriKind.Absolute, out var uri) && IsLoopbackHost(uri.Host);
    }

    /// <summary>True for <c>localhost</c> and loopback IP literals (127.0.0.0/8, ::1), brackets allowed.</summary>
    public static bool IsLoopbackHost(string host)
    {
        host = host.Trim().TrimEnd('.');
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase))
        {
            return true;
        }
        var literal = host.StartsWith('[') && host.EndsWith(']') ? host[1..^1] : host;
        return IPAddress.TryParse(literal, out var address) && IPAddress.IsLoopback(address);
    }
}

/// <summary>The keyless mode's request checks (see <see cref="LoopbackGuard"/>); does nothing when API keys are configured.</summary>
internal sealed class LoopbackGuardMiddleware(RequestDelegate next, TenantResolver tenants)
{
    public Task InvokeAsync(HttpContext context)
    {
        if (tenants.KeysConfigured)
        {
            return next(context);
        }
        var request = context.Request;
        if (!LoopbackGuard.IsLoopbackHost(request.Host.Host))
        {
            throw new ApiProblemException(StatusCodes.Status421MisdirectedRequest, ProblemCodes.Forbidden, "Host not allowed",
                "Without API keys this server answers only requests addressed to localhost or a loopback address.");
        }
        var origin = request.Headers.Origin.ToString();
        var changes = !HttpMethods.IsGet(request.Method) && !HttpMethods.IsHead(request.Method) && !HttpMethods.IsOptions(request.Method);
        // From the headers: this runs before the WebSocket middleware, which is what would set IsWebSocketRequest.
        var upgrade = request.Headers.Upgrade.ToString().Contains("websocket", StringComparison.OrdinalIgnoreCase) || HttpMethods.IsConnect(request.Method);
        if (origin.Length > 0 && (changes || upgrade) && !SameOrigin(origin, request))
        {
            throw new ApiProblemException(StatusCodes.Status403Forbidden, ProblemCodes.Forbidden, "Cross-origin request refused",
                "Without API keys this server refuses requests and WebSockets that a page of another origin starts.");
        }
        return next(context);
    }

    private static bool SameOrigin(string origin, HttpRequest request) =>
        Uri.TryCreate(origin, UriKind.Absolute, out var o)
        && string.Equals(o.Scheme, request.Scheme, StringComparison.OrdinalIgnoreCase)
        && string.Equals(o.Host, request.Host.Host, StringComparison.OrdinalIgnoreCase)
        && o.Port == (request.Host.Port ?? (request.IsHttps ? 443 : 80));
}
