using System.Net;
using System.Net.Sockets;

namespace SandboxKit.Egress.Relay;

/// <summary>Opens upstream TCP connections; behind an interface so tests can prove where the gateway dials.</summary>
internal interface IUpstreamConnector
{
    /// <summary>Connects to <paramref name="endpoint"/>; cancelled by <paramref name="cancellationToken"/> (the connect timeout).</summary>
    ValueTask<Socket> ConnectAsync(IPEndPoint endpoint, CancellationToken cancellationToken);
}

/// <summary>Plain socket connects.</summary>
internal sealed class SocketUpstreamConnector : IUpstreamConnector
{
    /// <inheritdoc />
    public async ValueTask<Socket> ConnectAsync(IPEndPoint endpoint, CancellationToken cancellationToken)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(endpoint, cancellationToken).ConfigureAwait(false);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

/// <summary>
/// The sandbox end of a relay can be any duplex stream (the supervisor channel's, a socket's). This optional
/// interface lets such a stream carry a half-close: the gateway calls it when upstream has finished sending, so the
/// sandbox sees end-of-stream while its own direction keeps flowing. A <see cref="NetworkStream"/> needs none.
/// </summary>
internal interface IHalfCloseStream
{
    /// <summary>Signals that nothing more will be written; reading goes on.</summary>
    ValueTask CompleteWritesAsync();
}
