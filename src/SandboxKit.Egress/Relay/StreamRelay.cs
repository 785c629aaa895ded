using System.Buffers;
using System.Net.Security;
using System.Security.Authentication;
using System.Net.Sockets;

namespace SandboxKit.Egress.Relay;

/// <summary>One side of a relayed connection: the stream, and how to tell the peer we are done writing.</summary>
internal sealed class RelayEnd
{
    private readonly Func<ValueTask> _completeWrites;
    private int _completed;

    /// <summary>Creates an end.</summary>
    public RelayEnd(Stream stream, Func<ValueTask> completeWrites)
    {
        Stream = stream;
        _completeWrites = completeWrites;
    }

    /// <summary>The stream.</summary>
    public Stream Stream { get; }

    /// <summary>An end over a socket: half-close is a send shutdown.</summary>
    public static RelayEnd ForSocket(Socket socket, Stream stream) => new(stream, () =>
    {
        try
        {
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already gone: nothing left to signal.
        }
        return ValueTask.CompletedTask;
    });

    /// <summary>An end over the sandbox's stream, half-closing however that stream can.</summary>
    public static RelayEnd ForSandbox(Stream sandbox, Stream stream) => sandbox switch
    {
        NetworkStream network => ForSocket(network.Socket, stream),
        IHalfCloseStream halfClose => new(stream, halfClose.CompleteWritesAsync),
        _ => new(stream, () => ValueTask.CompletedTask),
    };

    /// <summary>A TLS end over <paramref name="inner"/>: close_notify, then the inner half-close.</summary>
    public static RelayEnd ForTls(SslStream tls, RelayEnd inner) => new(tls, async () =>
    {
        try
        {
            await tls.ShutdownAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The peer is gone or the session already closed.
        }
        await inner.CompleteWritesAsync().ConfigureAwait(false);
    });

    /// <summary>Signals end of writes, once.</summary>
    public ValueTask CompleteWritesAsync() =>
        Interlocked.Exchange(ref _completed, 1) == 0 ? _completeWrites() : ValueTask.CompletedTask;
}

/// <summary>Activity and byte accounting of one connection, driving its idle timeout.</summary>
internal sealed class RelayActivity : IDisposable
{
    private readonly CancellationTokenSource _cts;
    private readonly TimeSpan _idle;
    private readonly Action<long, long> _onBytes;
    private long _up;
    private long _down;
    private string? _reason;

    /// <summary>Creates the accounting; <see cref="Token"/> cancels on <paramref name="cancellationToken"/> or when idle.</summary>
    public RelayActivity(TimeSpan idle, Action<long, long> onBytes, CancellationToken cancellationToken)
    {
        _cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        _idle = idle;
        _onBytes = onBytes;
        _cts.CancelAfter(idle);
    }

    /// <summary>Cancelled when the connection must end.</summary>
    public CancellationToken Token => _cts.Token;

    /// <summary>Set when the sandbox broke the rules mid-connection (see <see cref="Deny"/>).</summary>
    public string? Violation { get; private set; }

    /// <summary>Ends the connection because the sandbox sent something the policy or the protocol rules refuse.</summary>
    public void Deny(string reason)
    {
        Violation ??= reason;
        Cancel("denied: " + reason);
    }

    /// <summary>Why <see cref="Cancel"/> ended the connection, if it did.</summary>
    public string? CancelReason => Volatile.Read(ref _reason);

    /// <summary>Bytes sent upstream.</summary>
    public long BytesUp => Interlocked.Read(ref _up);

    /// <summary>Bytes sent to the sandbox.</summary>
    public long BytesDown => Interlocked.Read(ref _down);

    /// <summary>Counts bytes written upstream and restarts the idle timer.</summary>
    public void Up(int count)
    {
        Interlocked.Add(ref _up, count);
        _onBytes(count, 0);
        Touch();
    }

    /// <summary>Counts bytes written to the sandbox and restarts the idle timer.</summary>
    public void Down(int count)
    {
        Interlocked.Add(ref _down, count);
        _onBytes(0, count);
        Touch();
    }

    /// <summary>Ends the connection now, for <paramref name="reason"/> (the first reason given is kept).</summary>
    public void Cancel(string? reason)
    {
        if (reason is not null)
        {
            Interlocked.CompareExchange(ref _reason, reason, null);
        }
        try
        {
            _cts.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already over.
        }
    }

    /// <inheritdoc />
    public void Dispose() => _cts.Dispose();

    private void Touch()
    {
        try
        {
            _cts.CancelAfter(_idle);
        }
        catch (ObjectDisposedException)
        {
            // The connection is over.
        }
    }
}

/// <summary>Copies bytes between the two ends of a connection.</summary>
internal static class StreamRelay
{
    /// <summary>
    /// Copies <paramref name="from"/> to <paramref name="to"/> until end of stream, then half-closes
    /// <paramref name="to"/>. One buffer, and a write is awaited before the next read: backpressure by construction.
    /// </summary>
    public static async Task CopyAsync(Stream from, RelayEnd to, int bufferSize, Action<int> onWritten, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(bufferSize);
        try
        {
            while (true)
            {
                int read = await from.ReadAsync(buffer.AsMemory(0, bufferSize), cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }
                await to.Stream.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                onWritten(read);
            }
            await to.Stream.FlushAsync(cancellationToken).ConfigureAwait(false);
            await to.CompleteWritesAsync().ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Runs both directions until both have ended (a half-close on one side lets the other go on), or until one
    /// fails or <paramref name="activity"/> is cancelled (idle, policy change, session end), in which case both end.
    /// <paramref name="abort"/> tears the streams down so a read that ignores cancellation still returns.
    /// Returns why the connection ended.
    /// </summary>
    public static async Task<string> RunAsync(Func<CancellationToken, Task> upstream, Func<CancellationToken, Task> downstream, RelayActivity activity, Action abort, CancellationToken callerToken)
    {
        var token = activity.Token;
        Task up, down;
        using (token.Register(abort))
        {
            up = upstream(token);
            down = downstream(token);
            var first = await Task.WhenAny(up, down).ConfigureAwait(false);
            if (first.Status != TaskStatus.RanToCompletion)
            {
                // One direction failed: the connection is broken both ways.
                // (A failure after the token fired is the teardown itself, not the cause.)
                var e = first.Exception?.InnerException;
                activity.Cancel(token.IsCancellationRequested || e is null or OperationCanceledException
                    ? null
                    : $"{(first == up ? "sandbox to upstream" : "upstream to sandbox")} failed: {Describe(e)}");
            }
            try
            {
                await Task.WhenAll(up, down).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // Teardown: the other direction's failure is the consequence of the first; the reason says what happened.
            }
        }
        if (activity.CancelReason is { } reason)
        {
            return reason;
        }
        if (callerToken.IsCancellationRequested)
        {
            return "cancelled by the caller";
        }
        return token.IsCancellationRequested ? "idle timeout" : "closed";
    }

    /// <summary>A short, secret-free description of a relay failure.</summary>
    public static string Describe(Exception e) => e switch
    {
        SocketException s => s.SocketErrorCode.ToString(),
        IOException { InnerException: SocketException s } => s.SocketErrorCode.ToString(),
        AuthenticationException => "TLS handshake failed",
        _ => e.GetType().Name,
    };
}
