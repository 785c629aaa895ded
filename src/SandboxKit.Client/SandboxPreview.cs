using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// A port inside a sandbox exposed as a preview URL, from <see cref="SandboxSession.ExposePortAsync"/> or
/// <see cref="SandboxSession.ListExposedPortsAsync"/>. Open <see cref="Url"/> in a browser or with any
/// <see cref="HttpClient"/>: it needs no API key, and the first request sets a cookie so the page's relative links work.
/// </summary>
/// <remarks>
/// <para><b>Disposal revokes the URL.</b> <see cref="DisposeAsync"/> revokes once, is safe to call more than once and
/// never throws (failures are logged; the URL still ends at <see cref="ExpiresAt"/> or with the session). Call
/// <see cref="RevokeAsync"/> to see failures. Dropping the object without disposing it leaves the URL working.</para>
/// <para>The server keeps one URL per port: exposing the port again replaces this one. Revoking a handle whose URL was
/// replaced leaves the newer URL alone.</para>
/// <para>The URL is a bearer credential; <see cref="ToString"/> leaves it out, so it does not end up in logs by accident.</para>
/// </remarks>
public class SandboxPreview : IAsyncDisposable
{
    private const string TokenParameter = "sk_token";

    private readonly SandboxConnection? _connection;
    private readonly string _sessionId = string.Empty;
    private readonly ExposedPort _info = null!;
    private readonly Uri _url = null!;
    private int _revoked;

    /// <summary>For mocking frameworks only; members of an instance made this way do nothing useful until overridden.</summary>
    protected SandboxPreview()
    {
    }

    internal SandboxPreview(SandboxConnection connection, string sessionId, ExposedPort info)
    {
        _connection = connection;
        _sessionId = sessionId;
        _info = info;
        // The server answers absolute URLs (its public address); a relative one is resolved against the client's.
        // (On Unix "/preview/..." parses as an absolute file: URI, hence the scheme check.)
        _url = Uri.TryCreate(info.Url, UriKind.Absolute, out var absolute) && (absolute.Scheme == Uri.UriSchemeHttp || absolute.Scheme == Uri.UriSchemeHttps)
            ? absolute
            : new Uri(SandboxConnection.NormalizeBaseAddress(connection.BaseAddress), info.Url.TrimStart('/'));
    }

    /// <summary>The session the port belongs to.</summary>
    public virtual string SessionId => _sessionId;

    /// <summary>The port in the sandbox.</summary>
    public virtual int Port => _info.Port;

    /// <summary>The preview URL (HTTP; use <c>ws</c>/<c>wss</c> with the same address for WebSocket). It carries its signed token.</summary>
    public virtual Uri Url => _url;

    /// <summary>When the URL stops working.</summary>
    public virtual DateTimeOffset ExpiresAt => _info.ExpiresAt;

    /// <summary>The exposure as the server described it.</summary>
    public virtual ExposedPort Info => _info;

    /// <summary>True once this handle revoked the URL (or found it gone).</summary>
    public virtual bool IsRevoked => Volatile.Read(ref _revoked) != 0;

    private SandboxConnection Connection =>
        _connection ?? throw new InvalidOperationException("This SandboxPreview was created for mocking and has no connection.");

    /// <summary>Revokes the URL: its token stops working at once, for pages already open too.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when this call revoked it; <see langword="false"/> when it no longer worked anyway
    /// (revoked before, expired, replaced by exposing the port again, or the session is gone).</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    /// <remarks>The server revokes by port, so this first checks that the port still carries this handle's URL (one
    /// <c>GET</c>), then sends the <c>DELETE</c>. Exposing the same port again between the two is not detected.</remarks>
    public virtual async Task<bool> RevokeAsync(CancellationToken cancellationToken = default)
    {
        if (IsRevoked)
        {
            return false;
        }

        var connection = Connection;
        try
        {
            var current = await connection.CallAsync((api, ct) => api.ListExposedPortsAsync(SessionId, ct), cancellationToken).ConfigureAwait(false);
            if (!current.Ports.Any(p => p.Port == Port && SameExposure(p.Url, _info.Url)))
            {
                Interlocked.Exchange(ref _revoked, 1);
                return false;
            }

            await connection.CallAsync((api, ct) => api.RevokePortAsync(SessionId, Port, ct), cancellationToken).ConfigureAwait(false);
            return Interlocked.Exchange(ref _revoked, 1) == 0;
        }
        catch (SessionNotFoundException)
        {
            Interlocked.Exchange(ref _revoked, 1);
            return false;
        }
        catch (SandboxException e) when (e.Code == SandboxErrorCodes.NotFound)
        {
            // Revoked by someone else between the check and the DELETE.
            Interlocked.Exchange(ref _revoked, 1);
            return false;
        }
    }

    /// <summary>Revokes the URL unless that was done already. Never throws (see the remarks on <see cref="SandboxPreview"/>).</summary>
    /// <returns>A task that completes when the URL is revoked or the attempt has failed.</returns>
    public async ValueTask DisposeAsync()
    {
        await DisposeAsyncCore().ConfigureAwait(false);
        GC.SuppressFinalize(this);
    }

    /// <summary>Revokes the URL once; override to add cleanup, and call the base implementation.</summary>
    /// <returns>A task that completes when cleanup is done.</returns>
    protected virtual async ValueTask DisposeAsyncCore()
    {
        if (_connection is null || IsRevoked)
        {
            return;
        }

        try
        {
            await RevokeAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // Disposal must not throw: it would hide the exception that ended an `await using` block.
            Log.PreviewRevokeFailed(_connection.Logger, ex, Port, SessionId);
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"SandboxPreview {SessionId}:{Port}";

    /// <summary>Two URLs of one port are the same exposure when they carry the same token.</summary>
    private static bool SameExposure(string a, string b) =>
        string.Equals(Token(a) ?? a, Token(b) ?? b, StringComparison.Ordinal);

    private static string? Token(string url)
    {
        var query = url.IndexOf('?', StringComparison.Ordinal);
        if (query < 0)
        {
            return null;
        }

        foreach (var pair in url[(query + 1)..].Split('&'))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            if (equals > 0 && string.Equals(pair[..equals], TokenParameter, StringComparison.Ordinal))
            {
                return Uri.UnescapeDataString(pair[(equals + 1)..]);
            }
        }

        return null;
    }
}
