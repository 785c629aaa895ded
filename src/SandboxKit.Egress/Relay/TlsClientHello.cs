using System.Buffers;
using System.Buffers.Binary;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Relay;

/// <summary>Outcome of parsing what may be a TLS ClientHello.</summary>
internal enum ClientHelloStatus
{
    /// <summary>Consistent so far; more bytes are needed.</summary>
    NeedMore,

    /// <summary>A complete, well-formed ClientHello.</summary>
    Complete,

    /// <summary>Not a well-formed ClientHello.</summary>
    Invalid,
}

/// <summary>
/// A bounded, allocation-light parser of the first TLS handshake message, written for untrusted input: every length
/// is checked against what contains it, the message may be split over several records (fragmentation), and nothing
/// beyond <c>maxBytes</c> is ever considered.
/// </summary>
/// <remarks>
/// An Encrypted ClientHello extension is not refused: browsers send a GREASE one by default. The name checked is then
/// the outer SNI, and the connection goes to that name's addresses, never to a name hidden inside.
/// </remarks>
internal static class TlsClientHello
{
    private const byte HandshakeRecord = 22;
    private const byte ClientHelloType = 1;
    private const ushort ServerNameExtension = 0;
    private const int MaxRecordPayload = 16384 + 2048;

    /// <summary>
    /// Parses the ClientHello at the start of <paramref name="data"/>. On <see cref="ClientHelloStatus.Complete"/>,
    /// <paramref name="serverName"/> is the normalised SNI host name, or null when the hello has none.
    /// </summary>
    public static ClientHelloStatus TryParse(ReadOnlySpan<byte> data, int maxBytes, out string? serverName, out string? error)
    {
        serverName = null;
        error = null;
        byte[] rented = ArrayPool<byte>.Shared.Rent(maxBytes);
        try
        {
            // Gather handshake bytes from consecutive handshake records until the message's declared length is in.
            int gathered = 0, offset = 0;
            int needed = -1;
            while (needed < 0 || gathered < needed)
            {
                if (data.Length - offset < 5)
                {
                    return ClientHelloStatus.NeedMore;
                }
                var header = data.Slice(offset, 5);
                if (header[0] != HandshakeRecord)
                {
                    error = offset == 0 ? "not a TLS handshake record" : "the ClientHello is interrupted by a non-handshake record";
                    return ClientHelloStatus.Invalid;
                }
                if (header[1] != 3 || header[2] > 4)
                {
                    error = "unknown TLS record version";
                    return ClientHelloStatus.Invalid;
                }
                int length = BinaryPrimitives.ReadUInt16BigEndian(header[3..]);
                if (length == 0 || length > MaxRecordPayload)
                {
                    error = "invalid TLS record length";
                    return ClientHelloStatus.Invalid;
                }
                if (offset + 5 + length > maxBytes || gathered + length > maxBytes)
                {
                    error = $"the ClientHello is larger than {maxBytes} bytes";
                    return ClientHelloStatus.Invalid;
                }
                if (data.Length - offset - 5 < length)
                {
                    return ClientHelloStatus.NeedMore;
                }
                data.Slice(offset + 5, length).CopyTo(rented.AsSpan(gathered));
                gathered += length;
                offset += 5 + length;

                if (needed < 0 && gathered >= 4)
                {
                    if (rented[0] != ClientHelloType)
                    {
                        error = "the first handshake message is not a ClientHello";
                        return ClientHelloStatus.Invalid;
                    }
                    int bodyLength = (rented[1] << 16) | (rented[2] << 8) | rented[3];
                    if (bodyLength < 38)
                    {
                        error = "invalid ClientHello length";
                        return ClientHelloStatus.Invalid;
                    }
                    if (bodyLength + 4 > maxBytes)
                    {
                        error = $"the ClientHello is larger than {maxBytes} bytes";
                        return ClientHelloStatus.Invalid;
                    }
                    needed = bodyLength + 4;
                }
            }
            return ParseBody(rented.AsSpan(4, needed - 4), out serverName, out error);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static ClientHelloStatus ParseBody(ReadOnlySpan<byte> body, out string? serverName, out string? error)
    {
        serverName = null;
        var reader = new SpanReader(body);
        if (!reader.Skip(2 + 32) // legacy_version, random
            || !reader.TryReadVector8(out _, maxLength: 32) // legacy_session_id
            || !reader.TryReadVector16(out var suites) || suites.Length < 2 || suites.Length % 2 != 0
            || !reader.TryReadVector8(out var compression) || compression.Length < 1)
        {
            error = "malformed ClientHello";
            return ClientHelloStatus.Invalid;
        }
        if (reader.Remaining == 0)
        {
            error = null; // no extensions at all (old clients): no SNI
            return ClientHelloStatus.Complete;
        }
        if (!reader.TryReadVector16(out var extensions) || reader.Remaining != 0)
        {
            error = "malformed ClientHello extensions";
            return ClientHelloStatus.Invalid;
        }

        var seen = new HashSet<ushort>();
        var ext = new SpanReader(extensions);
        while (ext.Remaining > 0)
        {
            if (!ext.TryReadUInt16(out ushort type) || !ext.TryReadVector16(out var value))
            {
                error = "malformed ClientHello extension";
                return ClientHelloStatus.Invalid;
            }
            if (!seen.Add(type))
            {
                // RFC 8446 4.2: duplicate extensions are illegal; two SNIs could mean two different things.
                error = "duplicate ClientHello extension";
                return ClientHelloStatus.Invalid;
            }
            if (type != ServerNameExtension)
            {
                continue;
            }
            var sni = new SpanReader(value);
            if (!sni.TryReadVector16(out var list) || sni.Remaining != 0 || list.Length == 0)
            {
                error = "malformed server_name extension";
                return ClientHelloStatus.Invalid;
            }
            var entries = new SpanReader(list);
            while (entries.Remaining > 0)
            {
                if (!entries.TryReadByte(out byte nameType) || !entries.TryReadVector16(out var name))
                {
                    error = "malformed server_name entry";
                    return ClientHelloStatus.Invalid;
                }
                if (nameType != 0)
                {
                    continue; // unknown name types are skipped (RFC 6066)
                }
                if (serverName is not null)
                {
                    error = "more than one host_name in server_name";
                    return ClientHelloStatus.Invalid;
                }
                if (!HostName.TryNormalizeWire(name, out serverName) || serverName is null)
                {
                    error = "the SNI is not a valid host name";
                    return ClientHelloStatus.Invalid;
                }
            }
        }
        error = null;
        return ClientHelloStatus.Complete;
    }

    /// <summary>A forward-only reader over a span that never reads past its end.</summary>
    private ref struct SpanReader(ReadOnlySpan<byte> span)
    {
        private ReadOnlySpan<byte> _span = span;

        public readonly int Remaining => _span.Length;

        public bool Skip(int count)
        {
            if (_span.Length < count)
            {
                return false;
            }
            _span = _span[count..];
            return true;
        }

        public bool TryReadByte(out byte value)
        {
            value = 0;
            if (_span.Length < 1)
            {
                return false;
            }
            value = _span[0];
            _span = _span[1..];
            return true;
        }

        public bool TryReadUInt16(out ushort value)
        {
            value = 0;
            if (_span.Length < 2)
            {
                return false;
            }
            value = BinaryPrimitives.ReadUInt16BigEndian(_span);
            _span = _span[2..];
            return true;
        }

        public bool TryReadVector8(out ReadOnlySpan<byte> value, int maxLength = 255)
        {
            value = default;
            if (!TryReadByte(out byte length) || length > maxLength || _span.Length < length)
            {
                return false;
            }
            value = _span[..length];
            _span = _span[length..];
            return true;
        }

        public bool TryReadVector16(out ReadOnlySpan<byte> value)
        {
            value = default;
            if (!TryReadUInt16(out ushort length) || _span.Length < length)
            {
                return false;
            }
            value = _span[..length];
            _span = _span[length..];
            return true;
        }
    }
}
