using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Dns;

/// <summary>How a DNS message arrived from the sandbox, and how its answer is framed.</summary>
internal enum DnsTransport
{
    /// <summary>A bare message, as in a UDP datagram.</summary>
    Udp,

    /// <summary>A message preceded by its two-byte big-endian length, as on a TCP connection.</summary>
    Tcp,
}

/// <summary>DNS response codes the gateway answers with.</summary>
internal enum DnsResponseCode : byte
{
    /// <summary>No error.</summary>
    NoError = 0,

    /// <summary>The query could not be parsed.</summary>
    FormatError = 1,

    /// <summary>The server failed (resolution timed out, pool exhausted).</summary>
    ServerFailure = 2,

    /// <summary>The name does not exist, or is not allowed.</summary>
    NameError = 3,

    /// <summary>The opcode is not supported.</summary>
    NotImplemented = 4,

    /// <summary>The query is refused (a class other than IN).</summary>
    Refused = 5,
}

/// <summary>DNS record types the gateway distinguishes.</summary>
internal static class DnsType
{
    /// <summary>IPv4 address.</summary>
    public const ushort A = 1;

    /// <summary>IPv6 address.</summary>
    public const ushort AAAA = 28;

    /// <summary>The name of a type for the decision log.</summary>
    public static string Name(ushort type) => type switch
    {
        A => "A",
        AAAA => "AAAA",
        5 => "CNAME",
        15 => "MX",
        16 => "TXT",
        33 => "SRV",
        65 => "HTTPS",
        255 => "ANY",
        _ => "TYPE" + type.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}

/// <summary>A parsed DNS query: its header fields and its one question.</summary>
internal sealed class DnsQuery
{
    /// <summary>Message id, echoed in the answer.</summary>
    public ushort Id { get; init; }

    /// <summary>Header flags of the query.</summary>
    public ushort Flags { get; init; }

    /// <summary>The question exactly as sent (name, type, class), echoed in the answer; empty when it did not parse.</summary>
    public byte[] Question { get; init; } = [];

    /// <summary>The question's name normalised, or null when it is not a valid host name.</summary>
    public string? Name { get; init; }

    /// <summary>The question's name as text for logs (bounded, control characters replaced).</summary>
    public string DisplayName { get; init; } = "";

    /// <summary>Question type.</summary>
    public ushort Type { get; init; }

    /// <summary>Question class.</summary>
    public ushort Class { get; init; }
}

/// <summary>Parsing of sandbox DNS queries and building of answers, bounded and without exceptions on bad input.</summary>
internal static class DnsWire
{
    /// <summary>Largest message accepted (EDNS's common 4096-byte UDP size).</summary>
    public const int MaxMessageBytes = 4096;

    private const int HeaderBytes = 12;
    private const ushort FlagResponse = 0x8000;
    private const ushort FlagAuthoritative = 0x0400;
    private const ushort FlagRecursionDesired = 0x0100;
    private const ushort FlagRecursionAvailable = 0x0080;
    private const int OpcodeMask = 0x7800;

    /// <summary>
    /// Strips the framing of <paramref name="transport"/>. False when the framing is wrong; the bytes are then not a
    /// message at all and get no answer.
    /// </summary>
    public static bool TryUnframe(ReadOnlySpan<byte> packet, DnsTransport transport, out ReadOnlySpan<byte> message)
    {
        message = default;
        if (transport == DnsTransport.Udp)
        {
            message = packet;
            return true;
        }
        if (packet.Length < 2 || BinaryPrimitives.ReadUInt16BigEndian(packet) != packet.Length - 2)
        {
            return false;
        }
        message = packet[2..];
        return true;
    }

    /// <summary>Frames an answer for <paramref name="transport"/>.</summary>
    public static byte[] Frame(byte[] message, DnsTransport transport)
    {
        if (transport == DnsTransport.Udp)
        {
            return message;
        }
        var framed = new byte[message.Length + 2];
        BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)message.Length);
        message.CopyTo(framed.AsSpan(2));
        return framed;
    }

    /// <summary>
    /// Parses a query. Returns null when the bytes get no answer at all (shorter than a header, or a response rather
    /// than a query: answering those could start a loop); otherwise the query and the response code a malformed or
    /// unsupported one gets (<see cref="DnsResponseCode.NoError"/> when it is fine).
    /// </summary>
    public static DnsQuery? Parse(ReadOnlySpan<byte> message, out DnsResponseCode problem, out string? reason)
    {
        problem = DnsResponseCode.NoError;
        reason = null;
        if (message.Length < HeaderBytes)
        {
            reason = "shorter than a DNS header";
            return null;
        }
        ushort id = BinaryPrimitives.ReadUInt16BigEndian(message);
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(message[2..]);
        if ((flags & FlagResponse) != 0)
        {
            reason = "a DNS response, not a query";
            return null;
        }
        var header = new DnsQuery { Id = id, Flags = flags };
        if (message.Length > MaxMessageBytes)
        {
            problem = DnsResponseCode.FormatError;
            reason = $"longer than {MaxMessageBytes} bytes";
            return header;
        }
        if ((flags & OpcodeMask) != 0)
        {
            problem = DnsResponseCode.NotImplemented;
            reason = "not a standard query (opcode " + ((flags & OpcodeMask) >> 11) + ")";
            return header;
        }
        if (BinaryPrimitives.ReadUInt16BigEndian(message[4..]) != 1)
        {
            problem = DnsResponseCode.FormatError;
            reason = "question count is not 1";
            return header;
        }

        // The question name: uncompressed labels (a compression pointer in a query's only question could only point
        // into the header, so it is malformed), at most 255 octets.
        int offset = HeaderBytes;
        Span<byte> text = stackalloc byte[HostName.MaxLength + 2];
        int textLength = 0;
        bool printable = true;
        while (true)
        {
            if (offset >= message.Length)
            {
                problem = DnsResponseCode.FormatError;
                reason = "question name is truncated";
                return header;
            }
            int length = message[offset];
            if (length == 0)
            {
                offset++;
                break;
            }
            if (length > HostName.MaxLabelLength)
            {
                problem = DnsResponseCode.FormatError;
                reason = (length & 0xC0) == 0xC0 ? "question name uses compression" : "question name has a label longer than 63 octets";
                return header;
            }
            if (offset + 1 + length > message.Length || offset - HeaderBytes + 1 + length > 254)
            {
                problem = DnsResponseCode.FormatError;
                reason = offset + 1 + length > message.Length ? "question name is truncated" : "question name is longer than 255 octets";
                return header;
            }
            if (textLength > 0)
            {
                text[textLength++] = (byte)'.';
            }
            foreach (byte b in message.Slice(offset + 1, length))
            {
                // A label may hold any octet; one that is not a host name character makes the name no host name.
                printable &= b is > 0x20 and < 0x7F && b != '.';
                text[textLength++] = b;
            }
            offset += 1 + length;
        }
        if (offset + 4 > message.Length)
        {
            problem = DnsResponseCode.FormatError;
            reason = "question type or class is truncated";
            return header;
        }

        var nameBytes = text[..textLength];
        string? name = null;
        if (printable && textLength > 0)
        {
            HostName.TryNormalizeWire(nameBytes, out name);
        }
        var display = new char[Math.Min(textLength, 80)];
        for (int i = 0; i < display.Length; i++)
        {
            display[i] = nameBytes[i] is > 0x20 and < 0x7F ? (char)nameBytes[i] : '?';
        }

        ushort type = BinaryPrimitives.ReadUInt16BigEndian(message[offset..]);
        ushort @class = BinaryPrimitives.ReadUInt16BigEndian(message[(offset + 2)..]);
        var query = new DnsQuery
        {
            Id = id,
            Flags = flags,
            Question = message[HeaderBytes..(offset + 4)].ToArray(),
            Name = name,
            DisplayName = textLength == 0 ? "." : new string(display) + (textLength > display.Length ? "..." : ""),
            Type = type,
            Class = @class,
        };
        // Answer, authority and additional sections (an EDNS OPT record, typically) are ignored: they change nothing
        // about a synthetic answer, and the answer carries no OPT, which RFC 6891 allows.
        if (@class != 1)
        {
            problem = DnsResponseCode.Refused;
            reason = "class is not IN";
        }
        return query;
    }

    /// <summary>
    /// Builds the answer to <paramref name="query"/>: the question echoed (when it parsed), and one A record for
    /// <paramref name="address"/> when given.
    /// </summary>
    public static byte[] BuildResponse(DnsQuery query, DnsResponseCode code, IPAddress? address, uint ttl)
    {
        bool withAnswer = address is not null && code == DnsResponseCode.NoError;
        int addressLength = address?.AddressFamily == AddressFamily.InterNetworkV6 ? 16 : 4;
        var response = new byte[HeaderBytes + query.Question.Length + (withAnswer ? 12 + addressLength : 0)];
        var span = response.AsSpan();
        BinaryPrimitives.WriteUInt16BigEndian(span, query.Id);
        ushort flags = (ushort)(FlagResponse | (query.Flags & (OpcodeMask | FlagRecursionDesired)) | FlagRecursionAvailable | (byte)code);
        if (code is DnsResponseCode.NoError or DnsResponseCode.NameError)
        {
            // The gateway is the authority on what this sandbox may resolve.
            flags |= FlagAuthoritative;
        }
        BinaryPrimitives.WriteUInt16BigEndian(span[2..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], (ushort)(query.Question.Length > 0 ? 1 : 0));
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)(withAnswer ? 1 : 0));
        query.Question.CopyTo(span[HeaderBytes..]);
        if (withAnswer)
        {
            var answer = span[(HeaderBytes + query.Question.Length)..];
            BinaryPrimitives.WriteUInt16BigEndian(answer, 0xC000 | HeaderBytes); // pointer to the question's name
            BinaryPrimitives.WriteUInt16BigEndian(answer[2..], addressLength == 4 ? DnsType.A : DnsType.AAAA);
            BinaryPrimitives.WriteUInt16BigEndian(answer[4..], 1);
            BinaryPrimitives.WriteUInt32BigEndian(answer[6..], ttl);
            BinaryPrimitives.WriteUInt16BigEndian(answer[10..], (ushort)addressLength);
            address!.TryWriteBytes(answer[12..], out _);
        }
        return response;
    }
}
