namespace SandboxKit.Agent;

/// <summary>Something registered with the event loop for a descriptor's readiness.</summary>
internal interface IPollable
{
    /// <summary>Called on the loop thread with the epoll events that are ready.</summary>
    void OnEvents(uint events);
}

/// <summary>Work finished on another thread (reaper, file workers), completed on the loop thread.</summary>
internal interface ICompletion
{
    /// <summary>Called on the loop thread.</summary>
    void Complete();
}

/// <summary>A one-shot timer of the event loop.</summary>
internal sealed class LoopTimer
{
    internal LoopTimer(long dueNs, Action callback)
    {
        DueNs = dueNs;
        Callback = callback;
    }

    internal long DueNs { get; }

    internal Action Callback { get; }

    internal bool Cancelled { get; private set; }

    /// <summary>The callback will not run (lazy removal: the entry is dropped when it comes due).</summary>
    internal void Cancel() => Cancelled = true;
}

/// <summary>
/// The supervisor's single-threaded event loop: epoll over non-blocking descriptors (socket, pipes), one timerfd
/// for every timer, and one eventfd through which other threads post completions. Everything that touches
/// protocol state runs here, so that state needs no locks. A handler that throws is logged and the loop goes on.
/// </summary>
internal sealed unsafe class EventLoop
{
    private const int MaxEvents = 128;

    private readonly int _epoll;
    private readonly int _wakeFd;
    private readonly int _timerFd;
    private readonly Dictionary<int, Registration> _handlers = [];
    private readonly HashSet<int> _removedThisRound = [];
    private readonly PriorityQueue<LoopTimer, long> _timers = new();
    private readonly Lock _postLock = new();
    private Queue<ICompletion> _posted = new();
    private Queue<ICompletion> _draining = new();
    private bool _wakePending;
    private List<Action> _deferred = [];
    private List<Action> _deferredRunning = [];
    private List<Action> _afterFlush = [];
    private List<Action> _afterFlushRunning = [];
    private long _armedNs = long.MaxValue;
    private bool _stop;
    private long _allocatedAtLastCollection;

    /// <summary>
    /// Allocation (on the loop thread) after which the loop collects gen0 itself before it waits. The workstation GC's
    /// own gen0 budget follows the CPU cache size (12 MiB here), and every page of it stays dirty in a process that
    /// lives as long as the container; collecting after 1 MiB keeps the heap's high-water mark there, for about 0.2 ms
    /// per collection (a few hundred commands apart).
    /// </summary>
    private const long CollectAfterBytes = 1 << 20;

    /// <summary>
    /// Quiet time after which the loop compacts the whole heap and gives its free pages back to the kernel: an idle
    /// session then costs the host only what its data needs (every idle session pays this in host memory).
    /// </summary>
    private const double IdleTrimMs = 2000;

    /// <summary>Allocation within <see cref="IdleTrimMs"/> that still counts as quiet (timers, pings).</summary>
    private const long QuietBytes = 64 * 1024;

    private LoopTimer? _trimTimer;
    private long _allocatedAtTrimCheck;
    private long _allocatedAtLastTrim;

    private sealed class Registration(IPollable handler, uint events)
    {
        internal IPollable Handler { get; } = handler;
        internal uint Events { get; set; } = events;
    }

    internal EventLoop()
    {
        _epoll = SysException.Check(Native.EpollCreate(), "epoll_create1");
        _wakeFd = SysException.Check(Native.EventFd(), "eventfd");
        _timerFd = SysException.Check(Native.TimerFd(), "timerfd_create");
        SysException.Check(Native.EpollCtl(_epoll, Native.EpollCtlAdd, _wakeFd, Native.EpollIn), "epoll_ctl(eventfd)");
        SysException.Check(Native.EpollCtl(_epoll, Native.EpollCtlAdd, _timerFd, Native.EpollIn), "epoll_ctl(timerfd)");
    }

    /// <summary>Runs before every wait, after the deferred actions (the connection flushes its output here).</summary>
    internal Action? BeforeWait { get; set; }

    /// <summary>Monotonic clock, nanoseconds.</summary>
    internal static long NowNs => Native.MonotonicNs();

    /// <summary>Registers <paramref name="fd"/> (level-triggered).</summary>
    internal void Add(int fd, uint events, IPollable handler)
    {
        SysException.Check(Native.EpollCtl(_epoll, Native.EpollCtlAdd, fd, events), "epoll_ctl(add)");
        _handlers[fd] = new Registration(handler, events);
        _removedThisRound.Remove(fd);
    }

    /// <summary>Changes the events of a registered descriptor (no system call when unchanged).</summary>
    internal void Modify(int fd, uint events)
    {
        if (!_handlers.TryGetValue(fd, out var registration) || registration.Events == events)
        {
            return;
        }
        SysException.Check(Native.EpollCtl(_epoll, Native.EpollCtlMod, fd, events), "epoll_ctl(mod)");
        registration.Events = events;
    }

    /// <summary>Unregisters <paramref name="fd"/>; call before closing it. Events already fetched for it are dropped.</summary>
    internal void Remove(int fd)
    {
        if (_handlers.Remove(fd))
        {
            _ = Native.EpollCtl(_epoll, Native.EpollCtlDel, fd, 0);
            _removedThisRound.Add(fd);
        }
    }

    internal bool IsRegistered(int fd) => _handlers.ContainsKey(fd);

    /// <summary>Runs <paramref name="callback"/> on the loop after <paramref name="delayMs"/>.</summary>
    internal LoopTimer Schedule(double delayMs, Action callback)
    {
        var timer = new LoopTimer(NowNs + (long)(delayMs * 1_000_000), callback);
        _timers.Enqueue(timer, timer.DueNs);
        return timer;
    }

    /// <summary>Runs <paramref name="action"/> on the loop once the current event is handled (before the next wait).</summary>
    internal void Defer(Action action) => _deferred.Add(action);

    /// <summary>
    /// Runs <paramref name="action"/> on the loop after this round's output was flushed (before the next wait): for
    /// work that must not delay the frames just queued, such as spawning the next warm shell after an <c>x</c>.
    /// </summary>
    internal void DeferAfterFlush(Action action) => _afterFlush.Add(action);

    /// <summary>Any thread: queues a completion and wakes the loop.</summary>
    internal void Post(ICompletion completion)
    {
        bool wake;
        lock (_postLock)
        {
            _posted.Enqueue(completion);
            wake = !_wakePending;
            _wakePending = true;
        }
        if (wake)
        {
            Signal();
        }
    }

    private void Signal()
    {
        ulong one = 1;
        _ = Native.Write(_wakeFd, (byte*)&one, sizeof(ulong));
    }

    private void TrimIfIdle()
    {
        _trimTimer = null;
        var allocated = GC.GetAllocatedBytesForCurrentThread();
        if (allocated - _allocatedAtTrimCheck > QuietBytes)
        {
            return; // busy: the next round schedules another check
        }
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        _allocatedAtLastTrim = GC.GetAllocatedBytesForCurrentThread();
        _allocatedAtLastCollection = _allocatedAtLastTrim;
    }

    /// <summary>The loop ends after the current round.</summary>
    internal void Stop() => _stop = true;

    /// <summary>Runs until <see cref="Stop"/>.</summary>
    internal void Run()
    {
        var events = stackalloc Native.Event[MaxEvents];
        while (!_stop)
        {
            RunDeferred();
            Guard(BeforeWait);
            if (_afterFlush.Count > 0)
            {
                (_afterFlush, _afterFlushRunning) = (_afterFlushRunning, _afterFlush);
                foreach (var action in _afterFlushRunning)
                {
                    Guard(action);
                }
                _afterFlushRunning.Clear();
                RunDeferred();
                Guard(BeforeWait);
            }
            var allocated = GC.GetAllocatedBytesForCurrentThread();
            if (allocated - _allocatedAtLastCollection > CollectAfterBytes)
            {
                GC.Collect(0, GCCollectionMode.Forced, blocking: true, compacting: true);
                _allocatedAtLastCollection = allocated;
            }
            if (_trimTimer is null && allocated - _allocatedAtLastTrim > QuietBytes)
            {
                _allocatedAtTrimCheck = allocated;
                _trimTimer = Schedule(IdleTrimMs, TrimIfIdle);
            }
            ArmTimer();
            var n = Native.EpollWait(_epoll, events, MaxEvents, -1);
            if (n < 0)
            {
                Log.Error($"epoll_wait: {Errno.Describe(-n)}");
                continue;
            }
            _removedThisRound.Clear();
            for (var i = 0; i < n; i++)
            {
                var fd = events[i].Fd;
                if (fd == _wakeFd)
                {
                    ulong count;
                    _ = Native.Read(_wakeFd, (byte*)&count, sizeof(ulong));
                    DrainPosted();
                }
                else if (fd == _timerFd)
                {
                    ulong expirations;
                    _ = Native.Read(_timerFd, (byte*)&expirations, sizeof(ulong));
                    _armedNs = long.MaxValue;
                }
                else if (!_removedThisRound.Contains(fd) && _handlers.TryGetValue(fd, out var registration))
                {
                    try
                    {
                        registration.Handler.OnEvents(events[i].Events);
                    }
                    catch (Exception e)
                    {
                        Log.Error($"handler of fd {fd}: {e.GetType().Name}: {e.Message}");
                    }
                }
            }
            RunDueTimers();
        }
    }

    private void DrainPosted()
    {
        lock (_postLock)
        {
            (_posted, _draining) = (_draining, _posted);
            _wakePending = false;
        }
        while (_draining.TryDequeue(out var completion))
        {
            try
            {
                completion.Complete();
            }
            catch (Exception e)
            {
                Log.Error($"completion {completion.GetType().Name}: {e.GetType().Name}: {e.Message}");
            }
        }
    }

    private void RunDueTimers()
    {
        var now = NowNs;
        while (_timers.TryPeek(out var timer, out var due) && due <= now)
        {
            _timers.Dequeue();
            if (!timer.Cancelled)
            {
                try
                {
                    timer.Callback();
                }
                catch (Exception e)
                {
                    Log.Error($"timer: {e.GetType().Name}: {e.Message}");
                }
            }
        }
    }

    private void RunDeferred()
    {
        // Deferred actions may defer more: run rounds until none are left (bounded, to stay responsive).
        for (var round = 0; round < 16 && _deferred.Count > 0; round++)
        {
            (_deferred, _deferredRunning) = (_deferredRunning, _deferred);
            foreach (var action in _deferredRunning)
            {
                Guard(action);
            }
            _deferredRunning.Clear();
        }
    }

    private static void Guard(Action? action)
    {
        if (action is null)
        {
            return;
        }
        try
        {
            action();
        }
        catch (Exception e)
        {
            Log.Error($"deferred: {e.GetType().Name}: {e.Message}");
        }
    }

    private void ArmTimer()
    {
        while (_timers.TryPeek(out var timer, out _) && timer.Cancelled)
        {
            _timers.Dequeue();
        }
        var next = _timers.TryPeek(out _, out var due) ? due : long.MaxValue;
        if (_deferred.Count > 0 || _afterFlush.Count > 0)
        {
            next = Math.Min(next, NowNs); // work left over: come back at once
        }
        if (next == _armedNs)
        {
            return;
        }
        _armedNs = next;
        // 0 would disarm; a deadline in the past fires at once.
        _ = Native.TimerFdSet(_timerFd, next == long.MaxValue ? 0 : Math.Max(next, 1));
    }
}
