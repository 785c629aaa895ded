using SandboxKit.Contracts;

namespace SandboxKit.Client;

// The session's network: its egress policy (what the sandbox may reach through the server's gateway) and its preview
// URLs (ports inside the sandbox reached from outside). Neither gives the container a network of its own.
public partial class SandboxSession
{
    /// <summary>The highest port number <see cref="ExposePortAsync"/> accepts.</summary>
    private const int MaxPort = 65535;

    // ---------------------------------------------------------------- egress policy

    /// <summary>
    /// Replaces the session's egress policy. Connections the new policy no longer allows are closed; an empty
    /// <see cref="EgressPolicyRequest.Allow"/> list turns the network off again. Set a policy at creation with
    /// <see cref="CreateSessionRequest.Egress"/>.
    /// </summary>
    /// <param name="policy">The whole new policy: allowed and denied names or ranges, and headers the gateway adds
    /// (their values never enter the sandbox, nor come back in <see cref="Info"/>).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The session's new state (also stored in <see cref="Info"/>); its <see cref="SessionInfo.Egress"/> is the policy
    /// now in force, <see langword="null"/> when the session has no network.</returns>
    /// <exception cref="SandboxException">The operator does not allow the policy or it is malformed (400
    /// <see cref="SandboxErrorCodes.InvalidRequest"/>, the <see cref="SandboxException.Detail"/> starting with <c>egress:</c>),
    /// the session runs with a network mode of its own (400), or the call failed.</exception>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    public virtual async Task<SessionInfo> UpdateEgressAsync(EgressPolicyRequest policy, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ThrowIfDisposed();
        var info = await Connection.CallAsync((api, ct) => api.UpdateEgressAsync(Id, policy, ct), cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Reads the gateway's recent decisions for this session (newest first) and its egress counters.</summary>
    /// <param name="limit">How many decisions at most (the server keeps up to 1000; default 100).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The decisions (DNS answers, connections, policy changes; allowed or denied, and why) and the totals.</returns>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual Task<EgressLog> GetEgressLogAsync(int? limit = null, CancellationToken cancellationToken = default)
    {
        if (limit is { } value)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value, nameof(limit));
        }

        ThrowIfDisposed();
        return Connection.CallAsync((api, ct) => api.GetEgressLogAsync(Id, limit, ct), cancellationToken);
    }

    // ---------------------------------------------------------------- preview URLs

    /// <summary>
    /// Exposes a port a server inside the sandbox listens on (127.0.0.1 is enough) as a preview URL: HTTP and WebSocket
    /// from outside, through the supervisor, so the sandbox needs no network. Exposing a port again replaces its URL
    /// (the earlier one stops working).
    /// </summary>
    /// <param name="port">The TCP port in the sandbox (1-65535).</param>
    /// <param name="expiresIn">How long the URL works (whole seconds, rounded up); default one hour, at most the server's maximum.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The preview; disposing it (or <see cref="SandboxPreview.RevokeAsync"/>) revokes the URL.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="port"/> or <paramref name="expiresIn"/> is out of range.</exception>
    /// <exception cref="SandboxException">The server refused the expiry (400 <see cref="SandboxErrorCodes.InvalidRequest"/>) or the call failed.</exception>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    /// <remarks>The URL is a bearer credential (it carries a signed token): anyone holding it reaches the port until it
    /// expires or is revoked. Nothing checks that something listens on the port; requests to a closed port get 502.</remarks>
    public virtual async Task<SandboxPreview> ExposePortAsync(int port, TimeSpan? expiresIn = null, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(port, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, MaxPort);
        int? seconds = null;
        if (expiresIn is { } value)
        {
            ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(value, TimeSpan.Zero, nameof(expiresIn));
            var whole = Math.Ceiling(value.TotalSeconds);
            if (whole > int.MaxValue)
            {
                throw new ArgumentOutOfRangeException(nameof(expiresIn), value, "The expiry is too far in the future.");
            }

            seconds = (int)whole;
        }

        ThrowIfDisposed();
        var connection = Connection;
        var request = new ExposePortRequest { Port = port, ExpiresInSeconds = seconds };
        var exposed = await connection.CallAsync((api, ct) => api.ExposePortAsync(Id, request, ct), cancellationToken).ConfigureAwait(false);
        return new SandboxPreview(connection, Id, exposed);
    }

    /// <summary>Lists the session's exposed ports whose URLs still work.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Handles to them, by port. Disposing a handle revokes its URL; dropping it does not.</returns>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<IReadOnlyList<SandboxPreview>> ListExposedPortsAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var connection = Connection;
        var list = await connection.CallAsync((api, ct) => api.ListExposedPortsAsync(Id, ct), cancellationToken).ConfigureAwait(false);
        return list.Ports.Select(p => new SandboxPreview(connection, Id, p)).ToArray();
    }
}
