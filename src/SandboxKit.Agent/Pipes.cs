namespace SandboxKit.Agent;

/// <summary>Our read end of a command's stdout or stderr pipe (non-blocking). Paused (out of epoll) while there is no credit.</summary>
internal sealed class OutputPipe(EventLoop loop, int fd, byte frameType, Command owner) : IPollable
{
    private int _fd = fd;

    internal int Fd => _fd;

    /// <summary><c>o</c> or <c>e</c>.</summary>
    internal byte FrameType { get; } = frameType;

    internal bool Closed => _fd < 0;

    internal bool Registered { get; private set; }

    /// <summary>After the shell's exit: bytes still to read (what was in the pipe then); -1 before.</summary>
    internal long Remaining { get; set; } = -1;

    /// <summary>A terminal's master: after the exit it is read until it is empty (a non-blocking read of a master
    /// first flushes what the kernel has not moved into it yet, which <c>FIONREAD</c> does not count), at most
    /// <see cref="Remaining"/> bytes.</summary>
    internal bool EndsWhenEmpty { get; init; }

    public void OnEvents(uint events) => owner.Pump(this);

    internal void Resume()
    {
        if (!Closed && !Registered)
        {
            loop.Add(_fd, Native.EpollIn, this);
            Registered = true;
        }
    }

    /// <summary>Out of epoll: with level-triggered epoll a hung-up pipe would report EPOLLHUP even with no events asked.</summary>
    internal void Pause()
    {
        if (Registered)
        {
            loop.Remove(_fd);
            Registered = false;
        }
    }

    internal void Close()
    {
        Pause();
        Native.CloseQuietly(ref _fd);
    }
}

/// <summary>
/// Our read end of the state pipe (fd 100 of the shell): the EXIT trap's dump, read as it comes so a dump bigger
/// than the pipe never blocks the shell, kept up to 4 MiB (beyond that it is drained and ignored).
/// </summary>
internal sealed unsafe class StatePipe(EventLoop loop, int fd) : IPollable
{
    internal const int MaxDump = 4 * 1024 * 1024;

    private int _fd = fd;
    private byte[] _data = new byte[4096];
    private int _length;
    private bool _overflow;
    private bool _registered;

    internal ReadOnlySpan<byte> Data => _overflow ? [] : _data.AsSpan(0, _length);

    internal bool Overflowed => _overflow;

    internal void Start()
    {
        loop.Add(_fd, Native.EpollIn, this);
        _registered = true;
    }

    public void OnEvents(uint events) => ReadAvailable(int.MaxValue);

    /// <summary>Reads what the pipe holds now (after the exit: exactly that, since background children may keep it open).</summary>
    internal void DrainAndClose()
    {
        if (_fd < 0)
        {
            return;
        }
        var available = Native.FionRead(_fd);
        if (available > 0)
        {
            ReadAvailable(available);
        }
        Close();
    }

    private void ReadAvailable(int limit)
    {
        Span<byte> scratch = stackalloc byte[16 * 1024];
        var left = limit;
        while (left > 0 && _fd >= 0)
        {
            nint n;
            fixed (byte* p = scratch)
            {
                n = Native.Read(_fd, p, Math.Min(scratch.Length, left));
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n <= 0)
            {
                Close();
                return;
            }
            left -= (int)n;
            if (_overflow)
            {
                continue;
            }
            if (_length + n > MaxDump)
            {
                _overflow = true;
                _data = [];
                _length = 0;
                continue;
            }
            if (_length + n > _data.Length)
            {
                Array.Resize(ref _data, (int)Math.Min(MaxDump, Math.Max(_data.Length * 2, _length + n)));
            }
            scratch[..(int)n].CopyTo(_data.AsSpan(_length));
            _length += (int)n;
        }
    }

    internal void Close()
    {
        if (_registered)
        {
            loop.Remove(_fd);
            _registered = false;
        }
        Native.CloseQuietly(ref _fd);
    }
}

/// <summary>
/// Our write end of a command's stdin pipe, or of a terminal's master (non-blocking): queued bytes are written as the
/// descriptor takes them, and each queued piece reports what left the queue (written, or dropped when the command
/// closed its stdin) to the credit sink it came with, so credit goes back to the channel that sent it (several attach
/// channels may feed one terminal). Bytes queued without a sink (stdinText, job stdin ops) are not reported.
/// </summary>
internal sealed unsafe class StdinPipe(EventLoop loop, int fd) : IPollable
{
    /// <summary>At most this many bytes wait in the queue (job stdin ops; channels are bounded by credit).</summary>
    internal const int MaxQueued = 8 * 1024 * 1024;

    private readonly Queue<(ReadOnlyMemory<byte> Data, Action<int, bool>? Sink)> _pending = new();
    private int _fd = fd;
    private bool _registered;
    private bool _closeRequested;
    private int _headOffset;

    /// <summary>The sink of <see cref="Enqueue(ReadOnlyMemory{byte}, bool)"/> with credit: (bytes, drained) where drained
    /// means nothing is queued now.</summary>
    internal Action<int, bool>? Consumed { get; set; }

    internal bool Closed => _fd < 0;

    /// <summary>Close was asked for or the pipe is closed: nothing more may be queued.</summary>
    internal bool Closing => _closeRequested || _fd < 0;

    internal long Queued { get; private set; }

    /// <summary>The descriptor (a terminal's master, for its window size), or -1 once closed.</summary>
    internal int Fd => _fd;

    public void OnEvents(uint events) => TryWrite();

    /// <summary>Queues bytes; <paramref name="credited"/> ones report to <see cref="Consumed"/>.</summary>
    internal void Enqueue(ReadOnlyMemory<byte> data, bool credited = true) => Enqueue(data, credited ? Consumed : null);

    /// <summary>Queues bytes whose consumption is reported to <paramref name="sink"/> (none: not reported).</summary>
    internal void Enqueue(ReadOnlyMemory<byte> data, Action<int, bool>? sink)
    {
        if (Closing)
        {
            sink?.Invoke(data.Length, _pending.Count == 0);
            return;
        }
        if (data.Length > 0)
        {
            _pending.Enqueue((data, sink));
            Queued += data.Length;
        }
        TryWrite();
    }

    internal void RequestClose()
    {
        _closeRequested = true;
        TryWrite();
    }

    private void TryWrite()
    {
        if (_fd < 0)
        {
            return;
        }
        while (_pending.TryPeek(out var head))
        {
            var rest = head.Data[_headOffset..];
            nint n;
            fixed (byte* p = rest.Span)
            {
                n = Native.Write(_fd, p, rest.Length);
            }
            if (n == -Errno.EAGAIN)
            {
                if (!_registered)
                {
                    loop.Add(_fd, Native.EpollOut, this);
                    _registered = true;
                }
                return;
            }
            if (n < 0)
            {
                // EPIPE (or EIO on a terminal): the command closed its input (or exited); the rest can never be read.
                DropAll();
                Close();
                return;
            }
            Queued -= n;
            if (n < rest.Length)
            {
                _headOffset += (int)n;
                if (n > 0)
                {
                    head.Sink?.Invoke((int)n, false);
                }
                continue;
            }
            _pending.Dequeue();
            _headOffset = 0;
            if (n > 0)
            {
                head.Sink?.Invoke((int)n, _pending.Count == 0);
            }
        }
        if (_registered)
        {
            loop.Remove(_fd);
            _registered = false;
        }
        if (_closeRequested)
        {
            Close();
        }
    }

    private void DropAll()
    {
        var first = true;
        while (_pending.TryDequeue(out var item))
        {
            var dropped = item.Data.Length - (first ? _headOffset : 0);
            first = false;
            if (dropped > 0)
            {
                item.Sink?.Invoke(dropped, _pending.Count == 0);
            }
        }
        _headOffset = 0;
        Queued = 0;
    }

    /// <summary>Closes the pipe; queued bytes are dropped (and reported).</summary>
    internal void Close()
    {
        if (_registered)
        {
            loop.Remove(_fd);
            _registered = false;
        }
        Native.CloseQuietly(ref _fd);
        DropAll();
    }
}
