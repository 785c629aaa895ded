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
/// Our write end of a command's stdin pipe (non-blocking): queued bytes are written as the pipe takes them, and
/// reported through <see cref="Consumed"/> (credit goes back to the server). When the command closes its stdin, the
/// rest is dropped (and reported as consumed).
/// </summary>
internal sealed unsafe class StdinPipe(EventLoop loop, int fd) : IPollable
{
    /// <summary>At most this many bytes wait in the queue (job stdin ops; commands are bounded by credit).</summary>
    internal const int MaxQueued = 8 * 1024 * 1024;

    private readonly Queue<(ReadOnlyMemory<byte> Data, bool Credited)> _pending = new();
    private int _fd = fd;
    private bool _registered;
    private bool _closeRequested;
    private int _headOffset;

    /// <summary>(bytes, drained): bytes of <c>I</c> frames left the queue (written or dropped); drained when nothing
    /// is queued now. Bytes queued without credit (stdinText, job stdin ops) are not reported.</summary>
    internal Action<int, bool>? Consumed { get; set; }

    internal bool Closed => _fd < 0;

    /// <summary>Close was asked for or the pipe is closed: nothing more may be queued.</summary>
    internal bool Closing => _closeRequested || _fd < 0;

    internal long Queued { get; private set; }

    public void OnEvents(uint events) => TryWrite();

    internal void Enqueue(ReadOnlyMemory<byte> data, bool credited = true)
    {
        if (Closing)
        {
            if (credited)
            {
                Consumed?.Invoke(data.Length, _pending.Count == 0);
            }
            return;
        }
        if (data.Length > 0)
        {
            _pending.Enqueue((data, credited));
            Queued += data.Length;
        }
        TryWrite();
    }

    private void Report(int bytes, bool credited, bool drained)
    {
        if (credited && bytes > 0)
        {
            Consumed?.Invoke(bytes, drained);
        }
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
                // EPIPE: the command closed its stdin (or exited); the rest can never be read.
                DropAll();
                Close();
                return;
            }
            Queued -= n;
            if (n < rest.Length)
            {
                _headOffset += (int)n;
                Report((int)n, head.Credited, drained: false);
                continue;
            }
            _pending.Dequeue();
            _headOffset = 0;
            Report((int)n, head.Credited, _pending.Count == 0);
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
        var dropped = 0;
        var first = true;
        while (_pending.TryDequeue(out var item))
        {
            if (item.Credited)
            {
                dropped += item.Data.Length - (first ? _headOffset : 0);
            }
            first = false;
        }
        _headOffset = 0;
        Queued = 0;
        Report(dropped, credited: true, drained: true);
    }

    /// <summary>Closes the pipe; queued bytes are dropped.</summary>
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
