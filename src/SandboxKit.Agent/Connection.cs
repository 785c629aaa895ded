using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// One server connection on the Unix socket (loop thread only): decodes frames (bounded by the shared
/// <see cref="FrameDecoder"/>), holds outgoing frames in one buffer and writes them together. Frames are held up to
/// 5 ms (a command that ends quickly costs one write); final and control frames, and 64 KiB of held data, flush at
/// the end of the loop round. Everything pending is bounded: data by credit, control frames by channels; a server
/// that stops reading for 64 MiB of frames is dropped.
/// </summary>
internal sealed unsafe class Connection : IPollable
{
    private const int HoldMs = 5;
    private const int FlushThreshold = 64 * 1024;
    private const int MaxPending = 64 * 1024 * 1024;
    private const int ReadsPerRound = 8;

    private readonly EventLoop _loop;
    private readonly Supervisor _supervisor;
    private readonly FrameDecoder _decoder = new(FrameLimits.MaxPayload, 16 * 1024);
    private byte[] _out = new byte[16 * 1024];
    private int _outStart;
    private int _outEnd;
    private bool _flushRequested;
    private LoopTimer? _holdTimer;
    private bool _wantWrite;
    private readonly Action _holdExpired;

    internal Connection(EventLoop loop, Supervisor supervisor, int fd, long number)
    {
        _loop = loop;
        _supervisor = supervisor;
        Fd = fd;
        Number = number;
        _holdExpired = () =>
        {
            _holdTimer = null;
            Flush();
        };
        _loop.Add(fd, Native.EpollIn | Native.EpollRdHup, this);
    }

    internal int Fd { get; private set; }

    internal EventLoop Loop => _loop;

    /// <summary>Which accepted connection this is (1 for the first).</summary>
    internal long Number { get; }

    internal bool Closed { get; private set; }

    /// <summary>The server's <c>H</c> was received (and <c>h</c> sent).</summary>
    internal bool HelloDone { get; set; }

    /// <summary>Flow-control window per channel and direction, from the hello.</summary>
    internal int Window { get; set; } = FrameLimits.DefaultWindow;

    /// <summary>Open channels of this connection.</summary>
    internal Dictionary<uint, Channel> Channels { get; } = [];

    public void OnEvents(uint events)
    {
        if ((events & Native.EpollOut) != 0)
        {
            Flush();
        }
        if (!Closed && (events & (Native.EpollIn | Native.EpollHup | Native.EpollErr | Native.EpollRdHup)) != 0)
        {
            ReadFrames();
        }
    }

    private void ReadFrames()
    {
        for (var round = 0; round < ReadsPerRound && !Closed; round++)
        {
            var buffer = _decoder.GetReadBuffer();
            nint n;
            fixed (byte* p = buffer.Span)
            {
                n = Native.Read(Fd, p, buffer.Length);
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n <= 0)
            {
                Close(n == 0 ? "end of stream" : $"read: {Errno.Describe((int)-n)}");
                return;
            }
            _decoder.Advance((int)n);
            try
            {
                while (!Closed && _decoder.TryRead(out var frame))
                {
                    _supervisor.HandleFrame(this, frame);
                }
            }
            catch (ProtocolViolationException e)
            {
                Log.Warn($"connection {Number}: protocol violation: {e.Message}");
                Close("protocol violation");
                return;
            }
        }
    }

    /// <summary>Queues a frame. <paramref name="urgent"/> frames (finals, control) flush at the end of this round.</summary>
    internal void Send(byte type, uint channel, ReadOnlySpan<byte> payload, bool urgent)
    {
        if (Closed)
        {
            return;
        }
        var needed = FrameLimits.HeaderSize + payload.Length;
        if (_outEnd + needed > _out.Length)
        {
            if (_outStart > 0)
            {
                Buffer.BlockCopy(_out, _outStart, _out, 0, _outEnd - _outStart);
                _outEnd -= _outStart;
                _outStart = 0;
            }
            if (_outEnd + needed > _out.Length)
            {
                if (_outEnd + needed > MaxPending)
                {
                    Log.Warn($"connection {Number}: the server is not reading ({_outEnd} bytes pending); closing it");
                    Close("server not reading");
                    return;
                }
                var size = _out.Length;
                while (size < _outEnd + needed)
                {
                    size *= 2;
                }
                Array.Resize(ref _out, size);
            }
        }
        FrameEncoder.WriteHeader(_out.AsSpan(_outEnd), type, channel, payload.Length);
        payload.CopyTo(_out.AsSpan(_outEnd + FrameLimits.HeaderSize));
        _outEnd += needed;
        if (urgent || _outEnd - _outStart >= FlushThreshold)
        {
            _flushRequested = true;
        }
        else
        {
            _holdTimer ??= _loop.Schedule(HoldMs, _holdExpired);
        }
    }

    internal void SendJson<T>(byte type, uint channel, T value, JsonTypeInfo<T> info, bool urgent = true)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(value, info);
        Send(type, channel, bytes, urgent);
    }

    internal void SendError(uint channel, string code, string message) =>
        SendJson(FrameType.Error, channel, new ErrorReply { Code = code, Message = message }, ProtocolJsonContext.Default.ErrorReply);

    /// <summary>Called before every wait of the loop.</summary>
    internal void FlushIfRequested()
    {
        if (_flushRequested)
        {
            Flush();
        }
    }

    /// <summary>Writes what is pending without blocking; the rest waits for EPOLLOUT.</summary>
    internal void Flush()
    {
        _flushRequested = false;
        _holdTimer?.Cancel();
        _holdTimer = null;
        if (Closed)
        {
            return;
        }
        while (_outStart < _outEnd)
        {
            nint n;
            fixed (byte* p = _out)
            {
                n = Native.Send(Fd, p + _outStart, _outEnd - _outStart);
            }
            if (n == -Errno.EAGAIN)
            {
                break;
            }
            if (n < 0)
            {
                Close($"write: {Errno.Describe((int)-n)}");
                return;
            }
            _outStart += (int)n;
        }
        if (_outStart == _outEnd)
        {
            _outStart = _outEnd = 0;
            if (_out.Length > 256 * 1024)
            {
                _out = new byte[16 * 1024]; // give a burst's buffer back
            }
        }
        var wantWrite = _outStart < _outEnd;
        if (wantWrite != _wantWrite)
        {
            _wantWrite = wantWrite;
            _loop.Modify(Fd, Native.EpollIn | Native.EpollRdHup | (wantWrite ? Native.EpollOut : 0));
        }
    }

    /// <summary>Ends the connection (idempotent): its channels are told, the supervisor forgets it.</summary>
    internal void Close(string reason)
    {
        if (Closed)
        {
            return;
        }
        Closed = true;
        _holdTimer?.Cancel();
        _holdTimer = null;
        _loop.Remove(Fd);
        var fd = Fd;
        Native.CloseQuietly(ref fd);
        Fd = -1;
        Log.Info($"connection {Number} ended: {reason}");
        foreach (var channel in Channels.Values.ToArray())
        {
            try
            {
                channel.OnConnectionLost();
            }
            catch (Exception e)
            {
                Log.Error($"channel {channel.Id} cleanup: {e.GetType().Name}: {e.Message}");
            }
        }
        Channels.Clear();
        _supervisor.ConnectionEnded(this);
    }
}
