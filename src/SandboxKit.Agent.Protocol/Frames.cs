using System.Buffers.Binary;

namespace SandboxKit.Agent.Protocol;

/// <summary>Frame type bytes (docs/supervisor-protocol.md). Upper case travels server → supervisor, lower case back.</summary>
public static class FrameType
{
    // ---- server → supervisor -------------------------------------------------------------
    /// <summary>Connection hello (channel 0), the first frame of every connection.</summary>
    public const byte Hello = (byte)'H';
    /// <summary>Ping (channel 0); answered with <see cref="Pong"/> carrying the same bytes.</summary>
    public const byte Ping = (byte)'P';
    /// <summary>Run a command (opens a channel).</summary>
    public const byte Run = (byte)'R';
    /// <summary>Write a file (opens a channel; data follows as <see cref="Data"/>, then <see cref="Close"/>).</summary>
    public const byte WriteFile = (byte)'W';
    /// <summary>Read a file (opens a channel).</summary>
    public const byte ReadFile = (byte)'G';
    /// <summary>List a directory (opens a channel).</summary>
    public const byte ListDirectory = (byte)'L';
    /// <summary>Delete a path (opens a channel).</summary>
    public const byte Delete = (byte)'D';
    /// <summary>Make a directory (opens a channel).</summary>
    public const byte MakeDirectory = (byte)'M';
    /// <summary>Stat a path (opens a channel).</summary>
    public const byte Stat = (byte)'T';
    /// <summary>An operation on supervisor-owned jobs (background processes): list, read, attach, stdin, signal, forget.</summary>
    public const byte Job = (byte)'J';
    /// <summary>Stdin bytes of a command, or file bytes of a write.</summary>
    public const byte Data = (byte)'I';
    /// <summary>End of stdin, or commit of a file write.</summary>
    public const byte Close = (byte)'C';
    /// <summary>Signal a command's process tree; cancels a file transfer or an attach.</summary>
    public const byte Kill = (byte)'K';
    /// <summary>Flow-control credit: the sender may send that many more data bytes on the channel (both directions).</summary>
    public const byte Credit = (byte)'A';
    /// <summary>An operation on interpreter contexts (the code interpreter): create, list, get, restart, delete, run, interrupt.</summary>
    public const byte Context = (byte)'X';
    /// <summary>Connect to a TCP port inside the sandbox (preview URLs): a byte stream both ways.</summary>
    public const byte Connect = (byte)'N';
    /// <summary>Session-level settings: environment changes, the egress relay.</summary>
    public const byte Configure = (byte)'S';
    /// <summary>The server's answer to a supervisor's DNS query (<see cref="DnsQuery"/>); ends that channel.</summary>
    public const byte DnsAnswer = (byte)'Q';

    // ---- supervisor → server -------------------------------------------------------------
    /// <summary>The supervisor's answer to <see cref="Hello"/> (channel 0).</summary>
    public const byte HelloReply = (byte)'h';
    /// <summary>Answer to <see cref="Ping"/>.</summary>
    public const byte Pong = (byte)'p';
    /// <summary>A log line of the supervisor (channel 0), rate-limited at the source.</summary>
    public const byte Log = (byte)'l';
    /// <summary>What the image offers, once probed (channel 0).</summary>
    public const byte Capabilities = (byte)'c';
    /// <summary>A command started.</summary>
    public const byte Started = (byte)'s';
    /// <summary>Standard output bytes (also file bytes of a read).</summary>
    public const byte Stdout = (byte)'o';
    /// <summary>Standard error bytes.</summary>
    public const byte Stderr = (byte)'e';
    /// <summary>A command ended (final frame of its channel).</summary>
    public const byte Exited = (byte)'x';
    /// <summary>Result of a file or job operation (final frame).</summary>
    public const byte Result = (byte)'f';
    /// <summary>An error (final frame).</summary>
    public const byte Error = (byte)'r';
    /// <summary>An event of a job attach that is not output: output dropped before it could be sent.</summary>
    public const byte Dropped = (byte)'d';
    /// <summary>A chunk of an interpreter event (JSON, split in data frames of at most 64 KiB; counts against credit).</summary>
    public const byte EventChunk = (byte)'v';
    /// <summary>The end of an interpreter event: the chunks since the last one form one JSON object.</summary>
    public const byte EventEnd = (byte)'w';
    /// <summary>Opens a supervisor-initiated channel for an outbound TCP connection from the sandbox (egress).</summary>
    public const byte Outbound = (byte)'n';
    /// <summary>Opens a supervisor-initiated channel for a DNS query from the sandbox (egress).</summary>
    public const byte DnsQuery = (byte)'q';
    /// <summary>The sandbox side of a byte stream (<c>N</c> or <c>n</c>) closed its write half.</summary>
    public const byte HalfClose = (byte)'z';

    /// <summary>True for the frames that end a channel.</summary>
    public static bool IsFinal(byte type) => type is Exited or Result or Error;

    /// <summary>True for the frames whose payload counts against the channel's flow-control window.</summary>
    public static bool IsData(byte type) => type is Stdout or Stderr or Data or EventChunk;

    /// <summary>Channels the supervisor opens (egress) have the high bit set; the server's never do.</summary>
    public const uint SupervisorChannelBit = 0x8000_0000;

    /// <summary>The letter, for messages.</summary>
    public static string Name(byte type) => type is >= 0x21 and < 0x7f ? ((char)type).ToString() : $"0x{type:x2}";
}

/// <summary>Bounds every frame is checked against, both ways.</summary>
public static class FrameLimits
{
    /// <summary>Type and channel id; the length field counts them.</summary>
    public const int HeaderAfterLength = 5;

    /// <summary>Length field, type and channel id.</summary>
    public const int HeaderSize = 9;

    /// <summary>Largest payload of any frame (JSON requests and results).</summary>
    public const int MaxPayload = 1 << 20;

    /// <summary>Largest payload of a data frame (<c>o</c>, <c>e</c>, <c>I</c>).</summary>
    public const int MaxDataPayload = 64 * 1024;

    /// <summary>The flow-control window each channel starts with, in each direction, unless the hello says otherwise.</summary>
    public const int DefaultWindow = 256 * 1024;

    /// <summary>The protocol number both sides must speak.</summary>
    public const int ProtocolVersion = 2;
}

/// <summary>One decoded frame. The payload is the frame's own copy.</summary>
/// <param name="Type">The type byte (<see cref="FrameType"/>).</param>
/// <param name="Channel">The channel id; 0 is control.</param>
/// <param name="Payload">The payload bytes.</param>
public readonly record struct Frame(byte Type, uint Channel, ReadOnlyMemory<byte> Payload);

/// <summary>Encodes frames.</summary>
public static class FrameEncoder
{
    /// <summary>Writes the 9-byte header for a payload of <paramref name="payloadLength"/> bytes.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The payload is larger than <see cref="FrameLimits.MaxPayload"/>.</exception>
    public static void WriteHeader(Span<byte> destination, byte type, uint channel, int payloadLength)
    {
        if ((uint)payloadLength > FrameLimits.MaxPayload)
        {
            throw new ArgumentOutOfRangeException(nameof(payloadLength), payloadLength, $"A frame payload is at most {FrameLimits.MaxPayload} bytes.");
        }
        BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)(payloadLength + FrameLimits.HeaderAfterLength));
        destination[4] = type;
        BinaryPrimitives.WriteUInt32BigEndian(destination[5..], channel);
    }

    /// <summary>A whole frame in a new array.</summary>
    public static byte[] Encode(byte type, uint channel, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[FrameLimits.HeaderSize + payload.Length];
        WriteHeader(frame, type, channel, payload.Length);
        payload.CopyTo(frame.AsSpan(FrameLimits.HeaderSize));
        return frame;
    }
}

/// <summary>
/// Incremental decoder of a byte stream into frames, bounded: its buffer never holds more than one maximal frame
/// plus one read, and a length outside the limits is a <see cref="ProtocolViolationException"/> at once (before the
/// payload arrives), so a peer cannot make the reader allocate or wait for more than <see cref="FrameLimits.MaxPayload"/>.
/// </summary>
public sealed class FrameDecoder
{
    private readonly int _maxPayload;
    private byte[] _buffer;
    private int _start;
    private int _end;

    /// <summary>Creates a decoder.</summary>
    /// <param name="maxPayload">Largest payload accepted.</param>
    /// <param name="initialBuffer">Initial buffer size (grows up to one maximal frame).</param>
    public FrameDecoder(int maxPayload = FrameLimits.MaxPayload, int initialBuffer = 128 * 1024)
    {
        _maxPayload = maxPayload;
        _buffer = new byte[Math.Max(initialBuffer, FrameLimits.HeaderSize)];
    }

    /// <summary>Bytes received but not yet decoded into a frame.</summary>
    public int Buffered => _end - _start;

    /// <summary>Space to read into; call <see cref="Advance"/> with the count read.</summary>
    public Memory<byte> GetReadBuffer()
    {
        if (_end == _buffer.Length)
        {
            Compact();
            if (_end == _buffer.Length)
            {
                Array.Resize(ref _buffer, Math.Min(_buffer.Length * 2, FrameLimits.HeaderSize + _maxPayload + 64 * 1024));
            }
        }
        return _buffer.AsMemory(_end);
    }

    /// <summary>Records that <paramref name="count"/> bytes were read into <see cref="GetReadBuffer"/>.</summary>
    public void Advance(int count)
    {
        if (count < 0 || _end + count > _buffer.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(count));
        }
        _end += count;
    }

    /// <summary>Appends bytes (for callers that do not read into <see cref="GetReadBuffer"/>).</summary>
    public void Append(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            var room = GetReadBuffer().Span;
            var n = Math.Min(room.Length, data.Length);
            data[..n].CopyTo(room);
            Advance(n);
            data = data[n..];
        }
    }

    /// <summary>Takes the next complete frame, copying its payload out.</summary>
    /// <exception cref="ProtocolViolationException">The next frame's length is out of range.</exception>
    public bool TryRead(out Frame frame)
    {
        frame = default;
        var available = _end - _start;
        if (available < 4)
        {
            return false;
        }
        var length = BinaryPrimitives.ReadUInt32BigEndian(_buffer.AsSpan(_start));
        if (length < FrameLimits.HeaderAfterLength || length - FrameLimits.HeaderAfterLength > (uint)_maxPayload)
        {
            throw new ProtocolViolationException($"frame length {length} is outside 5..{_maxPayload + FrameLimits.HeaderAfterLength}");
        }
        var total = 4 + (int)length;
        if (available < total)
        {
            if (_buffer.Length - _start < total)
            {
                Compact();
                if (_buffer.Length < total)
                {
                    Array.Resize(ref _buffer, Math.Max(total, Math.Min(_buffer.Length * 2, FrameLimits.HeaderSize + _maxPayload + 64 * 1024)));
                }
            }
            return false;
        }
        var type = _buffer[_start + 4];
        var channel = BinaryPrimitives.ReadUInt32BigEndian(_buffer.AsSpan(_start + 5));
        var payloadLength = (int)length - FrameLimits.HeaderAfterLength;
        var payload = payloadLength == 0 ? [] : _buffer.AsSpan(_start + FrameLimits.HeaderSize, payloadLength).ToArray();
        _start += total;
        if (_start == _end)
        {
            _start = _end = 0;
        }
        frame = new Frame(type, channel, payload);
        return true;
    }

    private void Compact()
    {
        if (_start == 0)
        {
            return;
        }
        var pending = _end - _start;
        Buffer.BlockCopy(_buffer, _start, _buffer, 0, pending);
        _start = 0;
        _end = pending;
    }
}

/// <summary>The peer broke the protocol: the connection is over (never the process).</summary>
public sealed class ProtocolViolationException(string message) : Exception(message);
