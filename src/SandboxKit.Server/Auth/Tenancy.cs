using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Api;
using SandboxKit.Contracts;

namespace SandboxKit.Server.Auth;

/// <summary>API keys and tenants, bound from the <c>Auth</c> configuration section.</summary>
public sealed class AuthOptions
{
    /// <summary>Configuration section name.</summary>
    public const string Section = "Auth";

    /// <summary>The accepted keys. With none, the server runs as one tenant and listens on loopback only.</summary>
    public List<ApiKeyOptions> ApiKeys { get; set; } = [];

    /// <summary>Concurrent-session quota of the single tenant used when no keys are configured.</summary>
    public int DefaultMaxSessions { get; set; } = 50;

    /// <summary>Requests per second each tenant may make (token bucket, bursts up to twice this); 0 means no limit.
    /// A key's own <see cref="ApiKeyOptions.RequestsPerSecond"/> overrides it.</summary>
    public int DefaultRequestsPerSecond { get; set; }

    /// <summary>Requests per second one client address may make without a valid key (bursts to twice this): they are
    /// answered 401 at once, but each still costs a key hash, so a flood is cut here.</summary>
    public int AnonymousRequestsPerSecond { get; set; } = 20;

    /// <summary>Requests without a valid key in progress at once, over all clients.</summary>
    public int AnonymousConcurrentRequests { get; set; } = 64;

    /// <summary>Requests per second per client address to preview URLs (authorised by their tokens, not keys); 0: no limit.</summary>
    public int PreviewRequestsPerSecond { get; set; } = 200;
}

/// <summary>One API key. Give <see cref="KeySha256"/> (hex SHA-256 of the key) in production; <see cref="Key"/> is hashed at start.</summary>
public sealed class ApiKeyOptions
{
    /// <summary>The key in plain text (convenient for development; prefer <see cref="KeySha256"/>).</summary>
    public string? Key { get; set; }

    /// <summary>Lower- or upper-case hex SHA-256 of the key.</summary>
    public string? KeySha256 { get; set; }

    /// <summary>Tenant the key belongs to; sessions are visible only to keys of the same tenant.</summary>
    public string Tenant { get; set; } = "default";

    /// <summary>Most sessions the tenant may have at once.</summary>
    public int MaxSessions { get; set; } = 20;

    /// <summary>Requests per second for this tenant; null takes <see cref="AuthOptions.DefaultRequestsPerSecond"/>, 0 means no limit.</summary>
    public int? RequestsPerSecond { get; set; }
}

/// <summary>Who is calling: the tenant a key maps to and its quotas.</summary>
internal sealed record Tenant(string Name, int MaxSessions, int RequestsPerSecond = 0);

/// <summary>Resolves the caller's tenant from <c>Authorization: Bearer</c> or <c>X-API-Key</c>; keys are kept only as hashes.</summary>
internal sealed class TenantResolver
{
    private readonly Dictionary<string, Tenant> _byHash;
    private readonly Tenant? _anonymous;

    public TenantResolver(IOptions<AuthOptions> options)
    {
        _byHash = new Dictionary<string, Tenant>(StringComparer.Ordinal);
        foreach (var key in options.Value.ApiKeys)
        {
            var hash = key.KeySha256?.Trim().ToLowerInvariant()
                ?? (key.Key is { Length: > 0 } plain ? Hash(plain) : throw new StartupException("Auth:ApiKeys entry has neither Key nor KeySha256."));
            if (hash.Length != 64)
            {
                throw new StartupException($"Auth:ApiKeys entry for tenant '{key.Tenant}' has a KeySha256 that is not 64 hex digits.");
            }
            _byHash[hash] = new Tenant(key.Tenant, key.MaxSessions, key.RequestsPerSecond ?? options.Value.DefaultRequestsPerSecond);
        }
        _anonymous = _byHash.Count == 0 ? new Tenant("default", options.Value.DefaultMaxSessions, options.Value.DefaultRequestsPerSecond) : null;
    }

    public bool KeysConfigured => _anonymous is null;

    /// <summary>The caller's tenant, or null when the request carries no valid key (never throws).</summary>
    public Tenant? TryResolve(HttpContext context)
    {
        if (_anonymous is not null)
        {
            return _anonymous;
        }
        var key = ReadKey(context.Request);
        return key is not null && _byHash.TryGetValue(Hash(key), out var tenant) ? tenant : FromTicket(context);
    }

    public Tenant Resolve(HttpContext context)
    {
        if (_anonymous is not null)
        {
            return _anonymous;
        }
        var key = ReadKey(context.Request);
        if (key is null)
        {
            return FromTicket(context) ?? throw new ApiProblemException(StatusCodes.Status401Unauthorized, ProblemCodes.Unauthorized, "API key required",
                "Send the key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>' (a WebSocket from a browser: a ticket as '?ticket=').");
        }
        // Hashing first makes the dictionary lookup independent of how much of the key matches.
        return _byHash.TryGetValue(Hash(key), out var tenant)
            ? tenant
            : throw new ApiProblemException(StatusCodes.Status401Unauthorized, ProblemCodes.Unauthorized, "Invalid API key", "The API key is not known to this server.");
    }

    private static string? ReadKey(HttpRequest request)
    {
        var auth = request.Headers.Authorization.ToString();
        if (auth.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return auth["Bearer ".Length..].Trim() is { Length: > 0 } bearer ? bearer : null;
        }
        if (request.Headers["X-API-Key"].ToString() is { Length: > 0 } apiKey)
        {
            return apiKey.Trim();
        }
        return null;
    }

    /// <summary>A WebSocket upgrade with a ticket (<see cref="WebSocketTickets"/>): its tenant, once.</summary>
    private static Tenant? FromTicket(HttpContext context)
    {
        var request = context.Request;
        // From the headers: this runs before the WebSocket middleware, which is what would set IsWebSocketRequest.
        if (!request.Headers.Upgrade.ToString().Contains("websocket", StringComparison.OrdinalIgnoreCase)
            || request.Query["ticket"].ToString() is not { Length: > 0 } ticket)
        {
            return null;
        }
        return context.RequestServices.GetRequiredService<WebSocketTickets>().Redeem(ticket, request.Path.Value ?? "");
    }

    public static string Hash(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));
}

/// <summary>Endpoint metadata: the endpoint acts for a tenant, so a valid key is checked before anything else runs.</summary>
internal sealed class TenantRequiredMetadata
{
    public static readonly TenantRequiredMetadata Instance = new();
}

internal static class TenantHttpContextExtensions
{
    private static readonly object Key = new();

    public static Tenant GetTenant(this HttpContext context)
    {
        if (context.Items.TryGetValue(Key, out var value) && value is Tenant tenant)
        {
            return tenant;
        }
        tenant = context.RequestServices.GetRequiredService<TenantResolver>().Resolve(context);
        context.Items[Key] = tenant;
        return tenant;
    }

    /// <summary>The tenant if the request carries a valid key, without failing.</summary>
    public static Tenant? TryGetTenant(this HttpContext context)
    {
        if (context.Items.TryGetValue(Key, out var value) && value is Tenant tenant)
        {
            return tenant;
        }
        var resolved = context.RequestServices.GetRequiredService<TenantResolver>().TryResolve(context);
        if (resolved is not null)
        {
            context.Items[Key] = resolved;
        }
        return resolved;
    }

    /// <summary>
    /// Marks every endpoint of the group as acting for a tenant: <see cref="TenantMiddleware"/> answers 401 before
    /// routing, body parsing or the handler run.
    /// </summary>
    public static TBuilder RequireTenant<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.WithMetadata(TenantRequiredMetadata.Instance);
}

/// <summary>
/// Checks the API key of every request to an endpoint that acts for a tenant, right after routing and rate limiting:
/// a request without a valid key is answered 401 before its body is read or any work starts.
/// </summary>
internal sealed class TenantMiddleware(RequestDelegate next)
{
    public Task InvokeAsync(HttpContext context)
    {
        if (context.GetEndpoint()?.Metadata.GetMetadata<TenantRequiredMetadata>() is not null)
        {
            // Throws the 401 problem for the exception handler.
            context.GetTenant();
        }
        return next(context);
    }
}
