using System.Buffers.Binary;

namespace SandboxKit.Server.Agent;

/// <summary>
/// One frame of the agent protocol (docs/agent-protocol.md): 4-byte big-endian length of what follows,
/// 1-byte type, 4-byte big-endian channel id, payload. Length framing means no byte a command prints can break it.
/// </summary>
internal readonly record struct AgentFrame(byte Type, uint Channel, ReadOnlyMemory<byte> Payload)
{
    public const int HeaderSize = 9;
    public const int MaxPayload = 16 << 20;

    public static byte[] Encode(byte type, uint channel, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[HeaderSize + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(frame, (uint)(payload.Length + 5));
        frame[4] = type;
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(5), channel);
        payload.CopyTo(frame.AsSpan(HeaderSize));
        return frame;
    }
}

/// <summary>Frame type bytes.</summary>
internal static class FrameType
{
    // server → agent
    public const byte Ping = (byte)'P';
    public const byte Run = (byte)'R';
    public const byte StdinData = (byte)'I';
    public const byte StdinClose = (byte)'C';
    public const byte Kill = (byte)'K';
    public const byte WriteFile = (byte)'W';
    public const byte ReadFile = (byte)'G';
    public const byte ListDir = (byte)'L';
    public const byte Delete = (byte)'D';
    public const byte MakeDir = (byte)'M';
    public const byte Stat = (byte)'T';

    // agent → server
    public const byte Pong = (byte)'p';
    public const byte Hello = (byte)'h';
    public const byte Started = (byte)'s';
    public const byte Stdout = (byte)'o';
    public const byte Stderr = (byte)'e';
    public const byte Exited = (byte)'x';
    public const byte FileResult = (byte)'f';
    public const byte Error = (byte)'r';
}

/// <summary>Incremental parser of the agent's output stream into frames.</summary>
internal sealed class FrameReader
{
    private byte[] _buffer = new byte[256 * 1024];
    private int _start;
    private int _end;

    /// <summary>Space to read into; call <see cref="Advance"/> with the count read.</summary>
    public Memory<byte> GetReadBuffer()
    {
        if (_end == _buffer.Length)
        {
            var pending = _end - _start;
            if (_start > 0)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, pending);
            }
            else
            {
                Array.Resize(ref _buffer, _buffer.Length * 2);
            }
            _start = 0;
            _end = pending;
        }
        return _buffer.AsMemory(_end);
    }

    public void Advance(int count) => _end += count;

    /// <summary>Takes the next complete frame; its payload is copied out so the buffer can be reused.</summary>
    public bool TryRead(out AgentFrame frame)
    {
        frame = default;
        var available = _end - _start;
        if (available < 4)
        {
            return false;
        }
        var length = BinaryPrimitives.ReadUInt32BigEndian(_buffer.AsSpan(_start));
        if (length < 5 || length > AgentFrame.MaxPayload + 5)
        {
            throw new InvalidDataException($"Agent frame length {length} is out of range; the channel is out of sync.");
        }
        if (available < 4 + length)
        {
            if (_start > 0 && _buffer.Length - _start < 4 + length)
            {
                // Make room for the whole frame.
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, available);
                _start = 0;
                _end = available;
            }
            if (_buffer.Length < 4 + length)
            {
                Array.Resize(ref _buffer, (int)Math.Max(_buffer.Length * 2L, 4 + length));
            }
            return false;
        }
        var type = _buffer[_start + 4];
        var channel = BinaryPrimitives.ReadUInt32BigEndian(_buffer.AsSpan(_start + 5));
        var payload = _buffer.AsSpan(_start + AgentFrame.HeaderSize, (int)length - 5).ToArray();
        _start += 4 + (int)length;
        if (_start == _end)
        {
            _start = _end = 0;
        }
        frame = new AgentFrame(type, channel, payload);
        return true;
    }
}
