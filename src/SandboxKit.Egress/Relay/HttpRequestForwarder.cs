using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Relay;

/// <summary>
/// The sandbox-to-upstream direction of an HTTP/1.x connection to a named host: every request on the connection
/// (keep-alive, pipelining) is parsed, checked to be for that host, its configured headers replaced or added, and its
/// body (Content-Length or chunked) streamed through byte for byte. Responses are not parsed; they flow back raw.
/// </summary>
/// <remarks>
/// Every request must be for the connection's name: a second Host on a kept-alive connection would otherwise
/// receive (or leak) the first host's credentials. An Upgrade request (WebSocket) turns the rest of the connection
/// into raw bytes, since what follows is no longer HTTP; headers are added to the upgrade request only.
/// </remarks>
internal sealed class HttpRequestForwarder
{
    private const int MaxChunkLine = 4096;
    private const int MaxTrailerBytes = 16 * 1024;

    private readonly int _maxHead;
    private readonly string _name;
    private readonly Func<IReadOnlyList<HeaderInjection>> _headers;
    private readonly byte[] _buffer;
    private int _start;
    private int _end;

    /// <summary>
    /// Creates the forwarder for requests to <paramref name="name"/>; <paramref name="headers"/> gives the headers to
    /// add, asked per request so a policy change reaches the next request on a kept-alive connection.
    /// <paramref name="buffer"/> (at least <paramref name="maxHead"/> bytes) becomes the forwarder's, holding
    /// <paramref name="length"/> bytes already read from the sandbox.
    /// </summary>
    public HttpRequestForwarder(string name, Func<IReadOnlyList<HeaderInjection>> headers, int maxHead, byte[] buffer, int length)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(buffer.Length, maxHead);
        _name = name;
        _headers = headers;
        _maxHead = maxHead;
        _buffer = buffer;
        _end = length;
    }

    /// <summary>Forwards requests from <paramref name="from"/> to <paramref name="to"/> until the sandbox ends its side or breaks the rules.</summary>
    public async Task ForwardAsync(Stream from, RelayEnd to, RelayActivity activity, CancellationToken cancellationToken)
    {
        int index = 0;
        while (true)
        {
            HttpRequestHead? head;
            while (true)
            {
                var status = HttpRequestHead.TryParse(_buffer.AsSpan(_start, _end - _start), _maxHead, out head, out var error);
                if (status == HttpHeadStatus.Complete)
                {
                    break;
                }
                if (status != HttpHeadStatus.NeedMore)
                {
                    activity.Deny(status == HttpHeadStatus.NotHttp
                        ? $"request {index + 1} on the connection is not HTTP/1.x"
                        : $"request {index + 1} on the connection is malformed: {error}");
                    return;
                }
                if (!await FillAsync(from, cancellationToken).ConfigureAwait(false))
                {
                    if (_end == _start)
                    {
                        await to.CompleteWritesAsync().ConfigureAwait(false);
                        return;
                    }
                    activity.Deny("the connection closed inside a request head");
                    return;
                }
            }
            index++;

            if (head!.IsConnect)
            {
                activity.Deny("CONNECT inside an egress connection");
                return;
            }
            if (head.Authority is { } authority && (authority.Name != _name || authority.Address is not null))
            {
                activity.Deny($"request {index} on the connection is for {authority}, not {_name}");
                return;
            }

            var rewritten = Rewrite(_buffer.AsSpan(_start, head.Length), head, _headers());
            await to.Stream.WriteAsync(rewritten, cancellationToken).ConfigureAwait(false);
            activity.Up(rewritten.Length);
            _start += head.Length;

            switch (head.Body)
            {
                case HttpBodyKind.ContentLength:
                    if (!await CopyExactAsync(from, to, head.ContentLength, activity, cancellationToken).ConfigureAwait(false))
                    {
                        activity.Deny("the connection closed inside a request body");
                        return;
                    }
                    break;
                case HttpBodyKind.Chunked:
                    if (await CopyChunkedAsync(from, to, activity, cancellationToken).ConfigureAwait(false) is { } problem)
                    {
                        activity.Deny(problem);
                        return;
                    }
                    break;
            }

            if (head.IsUpgrade)
            {
                await FlushBufferedAsync(to, activity, cancellationToken).ConfigureAwait(false);
                await StreamRelay.CopyAsync(from, to, _buffer.Length, activity.Up, cancellationToken).ConfigureAwait(false);
                return;
            }
        }
    }

    /// <summary>
    /// The head with every header named like an injected one removed (so the sandbox's own value is replaced, never
    /// duplicated) and the injected ones appended. Other lines are kept byte for byte.
    /// </summary>
    internal static byte[] Rewrite(ReadOnlySpan<byte> raw, HttpRequestHead head, IReadOnlyList<HeaderInjection> injections)
    {
        int size = head.RequestLineLength + 2;
        foreach (var line in head.Headers)
        {
            size += IsInjected(line.Name, injections) ? 0 : line.Length;
        }
        foreach (var injection in injections)
        {
            size += injection.LineLength;
        }

        var result = new byte[size];
        var output = result.AsSpan();
        raw[..head.RequestLineLength].CopyTo(output);
        int offset = head.RequestLineLength;
        foreach (var line in head.Headers)
        {
            if (!IsInjected(line.Name, injections))
            {
                raw.Slice(line.Start, line.Length).CopyTo(output[offset..]);
                offset += line.Length;
            }
        }
        foreach (var injection in injections)
        {
            injection.CopyTo(output[offset..]);
            offset += injection.LineLength;
        }
        output[offset] = (byte)'\r';
        output[offset + 1] = (byte)'\n';
        return result;
    }

    private static bool IsInjected(string name, IReadOnlyList<HeaderInjection> injections)
    {
        foreach (var injection in injections)
        {
            if (string.Equals(injection.Name, name, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }
        return false;
    }

    private async Task<bool> FillAsync(Stream from, CancellationToken cancellationToken)
    {
        if (_start > 0)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        if (_end == _buffer.Length)
        {
            return true; // full: the parser's size bound decides
        }
        int read = await from.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
        _end += read;
        return read > 0;
    }

    private async Task FlushBufferedAsync(RelayEnd to, RelayActivity activity, CancellationToken cancellationToken)
    {
        if (_end > _start)
        {
            await to.Stream.WriteAsync(_buffer.AsMemory(_start, _end - _start), cancellationToken).ConfigureAwait(false);
            activity.Up(_end - _start);
        }
        _start = _end = 0;
    }

    private async Task<bool> CopyExactAsync(Stream from, RelayEnd to, long remaining, RelayActivity activity, CancellationToken cancellationToken)
    {
        while (remaining > 0)
        {
            if (_end == _start)
            {
                _start = _end = 0;
                int read = await from.ReadAsync(_buffer.AsMemory(0, (int)Math.Min(_buffer.Length, remaining)), cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    return false;
                }
                _end = read;
            }
            int count = (int)Math.Min(remaining, _end - _start);
            await to.Stream.WriteAsync(_buffer.AsMemory(_start, count), cancellationToken).ConfigureAwait(false);
            activity.Up(count);
            _start += count;
            remaining -= count;
        }
        return true;
    }

    // Chunked framing forwarded verbatim (sizes, extensions, trailers); parsed only to know where the body ends.
    private async Task<string?> CopyChunkedAsync(Stream from, RelayEnd to, RelayActivity activity, CancellationToken cancellationToken)
    {
        while (true)
        {
            int lineLength = await ReadLineAsync(from, cancellationToken).ConfigureAwait(false);
            if (lineLength < 0)
            {
                return lineLength == -1 ? "the connection closed inside a chunked body" : "a chunk size line is too long";
            }
            if (!TryParseChunkSize(_buffer.AsSpan(_start, lineLength - 2), out long size))
            {
                return "a malformed chunk size";
            }
            await WriteBufferedAsync(to, lineLength, activity, cancellationToken).ConfigureAwait(false);

            if (size == 0)
            {
                int trailers = 0;
                while (true)
                {
                    int trailer = await ReadLineAsync(from, cancellationToken).ConfigureAwait(false);
                    if (trailer < 0 || (trailers += trailer) > MaxTrailerBytes)
                    {
                        return "malformed or oversized chunked trailers";
                    }
                    await WriteBufferedAsync(to, trailer, activity, cancellationToken).ConfigureAwait(false);
                    if (trailer == 2)
                    {
                        return null;
                    }
                }
            }

            if (!await CopyExactAsync(from, to, size, activity, cancellationToken).ConfigureAwait(false))
            {
                return "the connection closed inside a chunk";
            }
            int end = await ReadLineAsync(from, cancellationToken).ConfigureAwait(false);
            if (end != 2)
            {
                return "a chunk is not followed by CRLF";
            }
            await WriteBufferedAsync(to, 2, activity, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task WriteBufferedAsync(RelayEnd to, int count, RelayActivity activity, CancellationToken cancellationToken)
    {
        await to.Stream.WriteAsync(_buffer.AsMemory(_start, count), cancellationToken).ConfigureAwait(false);
        activity.Up(count);
        _start += count;
    }

    // Length of the CRLF-terminated line at _start (CRLF included); -1 at end of stream, -2 when too long or not CRLF.
    private async Task<int> ReadLineAsync(Stream from, CancellationToken cancellationToken)
    {
        while (true)
        {
            int newline = _buffer.AsSpan(_start, _end - _start).IndexOf((byte)'\n');
            if (newline >= 0)
            {
                return newline >= 1 && _buffer[_start + newline - 1] == '\r' && newline < MaxChunkLine ? newline + 1 : -2;
            }
            if (_end - _start >= MaxChunkLine)
            {
                return -2;
            }
            if (!await FillAsync(from, cancellationToken).ConfigureAwait(false))
            {
                return -1;
            }
        }
    }

    private static bool TryParseChunkSize(ReadOnlySpan<byte> line, out long size)
    {
        size = 0;
        int i = 0;
        for (; i < line.Length && char.IsAsciiHexDigit((char)line[i]); i++)
        {
            if (i >= 15)
            {
                return false; // beyond 2^60 bytes: an overflow attempt, not a body
            }
            byte c = line[i];
            size = (size << 4) | (long)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
        }
        if (i == 0)
        {
            return false;
        }
        var rest = line[i..].TrimStart(" \t"u8);
        // chunk-ext: ';' then anything visible; bare garbage after the size is refused.
        if (!rest.IsEmpty && rest[0] != ';')
        {
            return false;
        }
        foreach (byte b in rest)
        {
            if (b is < 0x20 and not (byte)'\t' or 0x7F)
            {
                return false;
            }
        }
        return true;
    }
}
