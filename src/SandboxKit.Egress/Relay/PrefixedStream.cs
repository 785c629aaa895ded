namespace SandboxKit.Egress.Relay;

/// <summary>
/// The sandbox's stream with the bytes already peeked put back in front, and possibly a read still in flight (the
/// one the first-byte timeout gave up waiting for, which is never cancelled because not every stream survives a
/// cancelled read). Writes go straight through.
/// </summary>
internal sealed class PrefixedStream : Stream
{
    private readonly Stream _inner;
    private readonly byte[] _prefix;
    private int _prefixStart;
    private int _prefixEnd;
    private Task<int>? _pending;

    /// <summary>
    /// Creates the stream: <paramref name="prefix"/>[<paramref name="start"/>..<paramref name="end"/>) is read first,
    /// then the result of <paramref name="pending"/> (which reads into <paramref name="prefix"/> at <paramref name="end"/>), then <paramref name="inner"/>.
    /// </summary>
    public PrefixedStream(Stream inner, byte[] prefix, int start, int end, Task<int>? pending = null)
    {
        _inner = inner;
        _prefix = prefix;
        _prefixStart = start;
        _prefixEnd = end;
        _pending = pending;
    }

    /// <summary>The wrapped stream.</summary>
    public Stream Inner => _inner;

    /// <inheritdoc />
    public override bool CanRead => true;

    /// <inheritdoc />
    public override bool CanSeek => false;

    /// <inheritdoc />
    public override bool CanWrite => _inner.CanWrite;

    /// <inheritdoc />
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc />
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <inheritdoc />
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_prefixStart == _prefixEnd && _pending is { } pending)
        {
            _pending = null;
            int read = await pending.WaitAsync(cancellationToken).ConfigureAwait(false);
            _prefixEnd += read;
            if (read == 0)
            {
                return 0;
            }
        }
        if (_prefixStart < _prefixEnd)
        {
            int count = Math.Min(buffer.Length, _prefixEnd - _prefixStart);
            _prefix.AsMemory(_prefixStart, count).CopyTo(buffer);
            _prefixStart += count;
            return count;
        }
        return await _inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count, CancellationToken.None).GetAwaiter().GetResult();

    /// <inheritdoc />
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        _inner.WriteAsync(buffer, cancellationToken);

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _inner.WriteAsync(buffer, offset, count, cancellationToken);

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => _inner.Write(buffer, offset, count);

    /// <inheritdoc />
    public override Task FlushAsync(CancellationToken cancellationToken) => _inner.FlushAsync(cancellationToken);

    /// <inheritdoc />
    public override void Flush() => _inner.Flush();

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();
}
