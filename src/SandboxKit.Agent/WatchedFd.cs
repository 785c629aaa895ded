namespace SandboxKit.Agent;

/// <summary>
/// A non-blocking descriptor the loop watches for exactly the events its owner asks for at the moment (loop thread
/// only). With level-triggered epoll a hung-up pipe or socket reports EPOLLHUP even when no events are asked for, so
/// "nothing wanted" takes the descriptor out of epoll instead of registering it with an empty mask.
/// </summary>
internal sealed class WatchedFd : IPollable
{
    private readonly EventLoop _loop;
    private readonly Action<uint> _handler;
    private int _fd;
    private uint _watching;

    internal WatchedFd(EventLoop loop, int fd, Action<uint> handler)
    {
        _loop = loop;
        _fd = fd;
        _handler = handler;
    }

    internal int Fd => _fd;

    internal bool Closed => _fd < 0;

    public void OnEvents(uint events) => _handler(events);

    /// <summary>Watches for <paramref name="events"/> (0: not at all). No system call when nothing changes.</summary>
    internal void Watch(uint events)
    {
        if (_fd < 0 || events == _watching)
        {
            return;
        }
        if (events == 0)
        {
            _loop.Remove(_fd);
        }
        else if (_watching == 0)
        {
            _loop.Add(_fd, events, this);
        }
        else
        {
            _loop.Modify(_fd, events);
        }
        _watching = events;
    }

    /// <summary>Out of epoll and closed (idempotent).</summary>
    internal void Close()
    {
        Watch(0);
        Native.CloseQuietly(ref _fd);
    }

    /// <summary>Out of epoll; the caller takes the descriptor (e.g. to close it with a reset).</summary>
    internal int Release()
    {
        Watch(0);
        var fd = _fd;
        _fd = -1;
        return fd;
    }
}
