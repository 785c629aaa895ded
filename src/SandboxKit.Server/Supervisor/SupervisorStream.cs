using SandboxKit.Agent.Protocol;
using SandboxKit.Egress.Relay;

namespace SandboxKit.Server.Supervisor;

/// <summary>
/// A TCP byte stream carried on a supervisor channel: a connection into the sandbox (<c>N</c>, preview URLs) or one
/// out of it (<c>n</c>, the egress relay). Reads are the sandbox side's bytes (<c>o</c>; its half-close <c>z</c> and
/// the channel's end are the end of the stream), writes go in <c>I</c> frames within the supervisor's credit,
/// <see cref="CompleteWritesAsync"/> sends <c>C</c> (half-close toward the sandbox), and disposing before the end resets
/// the connection (<c>K</c>).
/// </summary>
internal sealed class SupervisorStream(SupervisorChannel channel) : Stream, IHalfCloseStream
{
    private ReadOnlyMemory<byte> _pending;
    private bool _readEnded;
    private bool _writesCompleted;
    private int _disposed;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <summary>Waits for the connect answer of an <c>N</c> channel.</summary>
    /// <exception cref="IOException">Refused (nothing listens) or another error.</exception>
    public async Task WaitConnectedAsync(CancellationToken cancellationToken)
    {
        while (await channel.ReadAsync(cancellationToken).ConfigureAwait(false) is { } message)
        {
            switch (message.Type)
            {
                case FrameType.Started:
                    return;
                case FrameType.Error:
                    var error = message.Body as ErrorReply;
                    throw new IOException(error?.Code == ErrorCodes.Refused
                        ? "Nothing listens on that port in the sandbox."
                        : "The sandbox refused the connection: " + SupervisorConnection.Sanitize(error?.Message, 200));
                case FrameType.Stdout:
                    _pending = message.Data;
                    return;
                case FrameType.HalfClose or FrameType.Result:
                    _readEnded = true;
                    return;
            }
        }
        throw new IOException("The sandbox connection ended before it was established.");
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (_pending.IsEmpty)
        {
            if (_readEnded)
            {
                return 0;
            }
            SupervisorMessage? next;
            try
            {
                next = await channel.ReadAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (SupervisorUnavailableException e)
            {
                throw new IOException(e.Message, e);
            }
            if (next is not { } message)
            {
                _readEnded = true;
                return 0;
            }
            switch (message.Type)
            {
                case FrameType.Stdout:
                    _pending = message.Data;
                    break;
                case FrameType.HalfClose or FrameType.Result:
                    _readEnded = true;
                    break;
                case FrameType.Error:
                    throw new IOException("The sandbox connection failed: " + SupervisorConnection.Sanitize((message.Body as ErrorReply)?.Message, 200));
            }
        }
        var count = Math.Min(buffer.Length, _pending.Length);
        _pending[..count].CopyTo(buffer);
        _pending = _pending[count..];
        return count;
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_writesCompleted)
        {
            throw new IOException("Writes were completed.");
        }
        try
        {
            await channel.SendDataAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (SupervisorUnavailableException e)
        {
            throw new IOException(e.Message, e);
        }
    }

    public async ValueTask CompleteWritesAsync()
    {
        if (_writesCompleted)
        {
            return;
        }
        _writesCompleted = true;
        try
        {
            await channel.SendAsync(FrameType.Close, ReadOnlyMemory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
        }
        catch (SupervisorUnavailableException)
        {
        }
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        if (!channel.Completed)
        {
            try
            {
                // Reset, unless both sides finished cleanly (the supervisor's final frame then follows on its own).
                if (!(_readEnded && _writesCompleted))
                {
                    await channel.SendAsync(FrameType.Kill, ReadOnlyMemory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
                }
            }
            catch (SupervisorUnavailableException)
            {
            }
        }
        await channel.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && Volatile.Read(ref _disposed) == 0)
        {
            DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        base.Dispose(disposing);
    }
}
