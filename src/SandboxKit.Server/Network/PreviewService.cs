using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;
using Yarp.ReverseProxy.Forwarder;

namespace SandboxKit.Server.Network;

/// <summary>
/// Preview URLs: HTTP and WebSocket from the outside to a port inside a sandbox, for sessions with no network at all.
/// Each connection to the port is a supervisor <c>N</c> channel (the supervisor connects to 127.0.0.1:port in the
/// sandbox's own network namespace), so nothing in the container needs a network, under runc and runsc alike. The
/// HTTP exchange is forwarded with YARP over those connections (keep-alive, streaming, WebSocket upgrades).
/// A URL carries a signed, expiring token bound to the session, the port and one exposure (a <c>DELETE</c> revokes
/// it); the first request with it sets a cookie limited to the preview's path so the page's own relative requests
/// work. Exposures live in this server's memory: a restart revokes them (expose again).
/// </summary>
internal sealed class PreviewService : IDisposable
{
    public const string PathPrefix = "/preview";
    public const string TokenParameter = "sk_token";

    /// <summary>Most ports one session may have exposed at once (the exposures live in the server's memory).</summary>
    public const int MaxPortsPerSession = 64;

    private readonly ConcurrentDictionary<(string Session, int Port), Exposure> _exposures = new();
    private readonly byte[] _key = RandomNumberGenerator.GetBytes(32);
    private readonly SessionRegistry _registry;
    private readonly SessionLifecycle _lifecycle;
    private readonly SandboxOptions _options;
    private readonly TimeProvider _time;
    private readonly HttpMessageInvoker _invoker;

    public PreviewService(SessionRegistry registry, SessionLifecycle lifecycle, IOptions<SandboxOptions> options, TimeProvider time)
    {
        _registry = registry;
        _lifecycle = lifecycle;
        _options = options.Value;
        _time = time;
        _invoker = new HttpMessageInvoker(new SocketsHttpHandler
        {
            UseProxy = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            UseCookies = false,
            ConnectTimeout = TimeSpan.FromSeconds(10),
            // Idle connections into the sandbox are channels kept open; let them go soon.
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            // The destination host names the session and port (one pool each); the connection is a supervisor channel.
            ConnectCallback = ConnectAsync,
        });
    }

    public ExposedPort Expose(Session session, ExposePortRequest request, string baseUrl)
    {
        if (request.Port is < 1 or > 65535)
        {
            throw SandboxError.Invalid("port must be between 1 and 65535.");
        }
        var seconds = request.ExpiresInSeconds ?? Math.Min(3600, _options.MaxPreviewSeconds);
        if (seconds < 1 || seconds > _options.MaxPreviewSeconds)
        {
            throw SandboxError.Invalid($"expiresInSeconds must be between 1 and {_options.MaxPreviewSeconds}.");
        }
        // Whole seconds: the token carries the expiry as a Unix time.
        var expires = DateTimeOffset.FromUnixTimeSeconds(_time.GetUtcNow().AddSeconds(seconds).ToUnixTimeSeconds());
        var exposure = new Exposure(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)), expires);
        // Exposures of sessions that ended, and expired ones, go with the next one made.
        var now = _time.GetUtcNow();
        foreach (var (key, old) in _exposures.Where(e => !_registry.Contains(e.Key.Session) || e.Value.ExpiresAt <= now).ToList())
        {
            _exposures.TryRemove(KeyValuePair.Create(key, old));
        }
        if (_exposures.Count(e => e.Key.Session == session.Id && e.Key.Port != request.Port) >= MaxPortsPerSession)
        {
            throw SandboxError.Conflict("Too many exposed ports", $"A session may expose at most {MaxPortsPerSession} ports at once; revoke one first.");
        }
        _exposures[(session.Id, request.Port)] = exposure;
        return Describe(session.Id, request.Port, exposure, baseUrl);
    }

    public IReadOnlyList<ExposedPort> List(Session session, string baseUrl)
    {
        var now = _time.GetUtcNow();
        return _exposures.Where(e => e.Key.Session == session.Id && e.Value.ExpiresAt > now)
            .OrderBy(e => e.Key.Port)
            .Select(e => Describe(session.Id, e.Key.Port, e.Value, baseUrl))
            .ToList();
    }

    /// <summary>Revokes a port's URL (its token stops working at once).</summary>
    public void Revoke(Session session, int port)
    {
        if (!_exposures.TryRemove((session.Id, port), out _))
        {
            throw SandboxError.NotFound("Port not exposed", $"Port {port} of session {session.Id} is not exposed.");
        }
    }

    /// <summary>Forwards one request for <c>/preview/{session}/{port}/...</c>, authorised by its token or cookie.</summary>
    public async Task ForwardAsync(HttpContext http, IHttpForwarder forwarder, string sessionId, int port, string rest)
    {
        var session = Authorize(http, sessionId, port);
        using var activity = session.BeginActivity(_time);
        var destination = $"http://{session.Id}-{port}.preview.sandboxkit.invalid/";
        var error = await forwarder.SendAsync(http, destination, _invoker, new ForwarderRequestConfig { ActivityTimeout = TimeSpan.FromMinutes(10) },
            new PreviewTransformer("/" + rest, port));
        if (error != ForwarderError.None && !http.Response.HasStarted)
        {
            var failure = http.Features.Get<IForwarderErrorFeature>()?.Exception;
            var refused = failure?.ToString().Contains("Nothing listens", StringComparison.Ordinal) == true;
            throw new Api.ApiProblemException(StatusCodes.Status502BadGateway, ProblemCodes.SupervisorUnavailable, "Preview unavailable",
                refused ? $"Nothing listens on port {port} in session {session.Id}." : $"The preview of port {port} could not be reached ({error}).");
        }
    }

    public void Dispose() => _invoker.Dispose();

    private Session Authorize(HttpContext http, string sessionId, int port)
    {
        var fromQuery = http.Request.Query[TokenParameter].ToString();
        var token = fromQuery.Length > 0 ? fromQuery : http.Request.Cookies[CookieName(port)] ?? "";
        if (!Verify(sessionId, port, token, out var expires))
        {
            throw new Api.ApiProblemException(StatusCodes.Status401Unauthorized, ProblemCodes.Unauthorized, "Preview token required",
                "This preview URL needs its token (the sk_token query parameter of the URL the API gave), and it must not be expired or revoked.");
        }
        if (fromQuery.Length > 0)
        {
            http.Response.Cookies.Append(CookieName(port), token, new CookieOptions
            {
                Path = $"{PathPrefix}/{sessionId}/{port}/",
                HttpOnly = true,
                SameSite = SameSiteMode.Lax,
                Secure = http.Request.IsHttps,
                Expires = expires,
            });
        }
        // A valid token names a live session of some tenant: the token is the authorisation.
        return _registry.All.FirstOrDefault(s => s.Id == sessionId && !s.Closed) ?? throw SandboxError.SessionNotFound(sessionId);
    }

    private bool Verify(string sessionId, int port, string token, out DateTimeOffset expires)
    {
        expires = default;
        var parts = token.Split('.');
        if (parts.Length != 3 || !long.TryParse(parts[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var unix))
        {
            return false;
        }
        if (!_exposures.TryGetValue((sessionId, port), out var exposure) || exposure.Nonce != parts[1])
        {
            return false;
        }
        expires = DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(unix, 0, 253_402_300_799));
        if (expires <= _time.GetUtcNow() || unix != exposure.ExpiresAt.ToUnixTimeSeconds())
        {
            return false;
        }
        var expected = Sign(sessionId, port, unix, parts[1]);
        return CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(expected), Encoding.ASCII.GetBytes(parts[2]));
    }

    private ExposedPort Describe(string sessionId, int port, Exposure exposure, string baseUrl)
    {
        var unix = exposure.ExpiresAt.ToUnixTimeSeconds();
        var token = $"{unix}.{exposure.Nonce}.{Sign(sessionId, port, unix, exposure.Nonce)}";
        return new ExposedPort
        {
            Port = port,
            Url = $"{baseUrl.TrimEnd('/')}{PathPrefix}/{sessionId}/{port}/?{TokenParameter}={token}",
            ExpiresAt = DateTimeOffset.FromUnixTimeSeconds(unix),
        };
    }

    private string Sign(string sessionId, int port, long unix, string nonce) =>
        Convert.ToBase64String(HMACSHA256.HashData(_key, Encoding.UTF8.GetBytes($"{sessionId}\n{port}\n{unix}\n{nonce}")))
            .TrimEnd('=').Replace('+', '-').Replace('/', '_');

    private static string CookieName(int port) => "sk_preview_" + port.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var host = context.DnsEndPoint.Host;
        var dash = host.IndexOf('-', StringComparison.Ordinal);
        var dot = host.IndexOf('.', StringComparison.Ordinal);
        if (dash <= 0 || dot <= dash || !int.TryParse(host.AsSpan(dash + 1, dot - dash - 1), out var port))
        {
            throw new IOException("Not a preview destination.");
        }
        var sessionId = host[..dash];
        var session = _registry.All.FirstOrDefault(s => s.Id == sessionId && !s.Closed) ?? throw new IOException($"Session {sessionId} is gone.");
        var channel = await _lifecycle.UseSupervisorAsync(session, connection =>
            connection.OpenAsync(FrameType.Connect, new ConnectRequest { Host = "127.0.0.1", Port = port }, ProtocolJsonContext.Default.ConnectRequest, cancellationToken),
            cancellationToken).ConfigureAwait(false);
        var stream = new SupervisorStream(channel);
        try
        {
            await stream.WaitConnectedAsync(cancellationToken).ConfigureAwait(false);
            return stream;
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private sealed record Exposure(string Nonce, DateTimeOffset ExpiresAt);

    /// <summary>The path inside the sandbox, the app's own Host (<c>localhost:port</c>: dev servers check it), no token.</summary>
    private sealed class PreviewTransformer(string path, int port) : HttpTransformer
    {
        public override async ValueTask TransformRequestAsync(HttpContext httpContext, HttpRequestMessage proxyRequest, string destinationPrefix, CancellationToken cancellationToken)
        {
            await base.TransformRequestAsync(httpContext, proxyRequest, destinationPrefix, cancellationToken);
            var query = string.Join('&', httpContext.Request.Query
                .Where(q => q.Key != TokenParameter)
                .SelectMany(q => q.Value.Select(v => Uri.EscapeDataString(q.Key) + "=" + Uri.EscapeDataString(v ?? ""))));
            proxyRequest.RequestUri = new Uri(destinationPrefix.TrimEnd('/') + path + (query.Length > 0 ? "?" + query : ""));
            proxyRequest.Headers.Host = "localhost:" + port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            // The preview's own cookie and any API key are the server's business, not the app's; the app's cookies pass.
            if (httpContext.Request.Headers.Cookie.Count > 0)
            {
                proxyRequest.Headers.Remove("Cookie");
                var kept = string.Join("; ", httpContext.Request.Cookies.Where(c => !c.Key.StartsWith("sk_preview_", StringComparison.Ordinal)).Select(c => c.Key + "=" + c.Value));
                if (kept.Length > 0)
                {
                    proxyRequest.Headers.TryAddWithoutValidation("Cookie", kept);
                }
            }
            proxyRequest.Headers.Remove("Authorization");
            proxyRequest.Headers.Remove("X-API-Key");
        }
    }
}
