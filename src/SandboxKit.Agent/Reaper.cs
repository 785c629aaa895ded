namespace SandboxKit.Agent;

/// <summary>A process the supervisor started and wants the exit of.</summary>
internal interface IChildOwner
{
    /// <summary>Set by the reaper (under <see cref="Reaper.SpawnLock"/>) when the pid is reaped: from then on the pid may be reused.</summary>
    bool Reaped { get; set; }

    /// <summary>Loop thread: the process exited.</summary>
    void OnExit(in ChildExit exit);
}

/// <summary>How a child ended, with its rusage (which includes every child it waited for).</summary>
internal readonly record struct ChildExit(int Pid, bool Exited, int Code, double UserMs, double SystemMs, long MaxRssBytes, long AtNs)
{
    /// <summary>Exit status as a shell reports it: the code, or 128 + signal.</summary>
    internal int ExitCode => Exited ? Code : 128 + Code;

    internal int? Signal => Exited ? null : Code;
}

/// <summary>
/// PID 1's reaper: one thread owns every wait. It peeks at any exited child with <c>waitid(P_ALL, WNOWAIT)</c>,
/// then, holding <see cref="SpawnLock"/> (which the spawner holds from before <c>clone</c> until the pid is
/// registered), reaps exactly that pid with its rusage and hands the exit to the registered owner through the loop;
/// unregistered pids are orphans and are discarded. So no exit status is ever stolen from its command, and a pid is
/// never reaped (hence reusable) while the loop holds the lock to signal it.
/// </summary>
internal sealed unsafe class Reaper
{
    private readonly EventLoop _loop;
    private readonly Dictionary<int, IChildOwner> _owners = [];
    private readonly object _childrenChanged = new();
    private long _spawns;
    private long _orphansReaped;

    internal Reaper(EventLoop loop)
    {
        _loop = loop;
    }

    /// <summary>Held while spawning and registering, while reaping, and while signalling process trees.</summary>
    internal Lock SpawnLock { get; } = new();

    /// <summary>Orphans (unregistered children, e.g. reparented background processes) reaped so far.</summary>
    internal long OrphansReaped => Interlocked.Read(ref _orphansReaped);

    internal void Start()
    {
        var thread = new Thread(Run, 256 * 1024) { IsBackground = true, Name = "reaper" };
        thread.Start();
    }

    /// <summary>Caller holds <see cref="SpawnLock"/>: the pid just returned by a spawn belongs to <paramref name="owner"/>.</summary>
    internal void Register(int pid, IChildOwner owner) => _owners[pid] = owner;

    /// <summary>After any spawn (also a failed one, whose exited child must be reaped): wakes a reaper that had no children.</summary>
    internal void NotifySpawned()
    {
        lock (_childrenChanged)
        {
            _spawns++;
            Monitor.PulseAll(_childrenChanged);
        }
    }

    private void Run()
    {
        while (true)
        {
            long seen;
            lock (_childrenChanged)
            {
                seen = _spawns;
            }
            var pid = Native.WaitPeek();
            if (pid == -Errno.ECHILD)
            {
                lock (_childrenChanged)
                {
                    while (_spawns == seen)
                    {
                        Monitor.Wait(_childrenChanged);
                    }
                }
                continue;
            }
            if (pid < 0)
            {
                Log.Error($"waitid: {Errno.Describe(-pid)}");
                Thread.Sleep(100);
                continue;
            }
            Native.ExitStatus status;
            IChildOwner? owner;
            int rc;
            var at = EventLoop.NowNs;
            lock (SpawnLock)
            {
                rc = Native.Reap(pid, &status);
                if (_owners.Remove(pid, out owner))
                {
                    owner.Reaped = true;
                }
            }
            if (rc < 0)
            {
                Log.Error($"wait4({pid}): {Errno.Describe(-rc)}");
                continue;
            }
            if (owner is null)
            {
                Interlocked.Increment(ref _orphansReaped);
                continue;
            }
            var exit = new ChildExit(pid, status.Exited != 0, status.Code, status.UserMicroseconds / 1000.0,
                status.SystemMicroseconds / 1000.0, status.MaxRssKib * 1024, at);
            _loop.Post(new ExitCompletion(owner, exit));
        }
    }

    private sealed class ExitCompletion(IChildOwner owner, ChildExit exit) : ICompletion
    {
        public void Complete() => owner.OnExit(exit);
    }
}
