namespace SandboxKit.Agent;

/// <summary>
/// File work done on a worker thread, completed on the loop (<see cref="ICompletion.Complete"/>).
/// <see cref="Execute"/> must not touch loop state; it reports through its own fields.
/// </summary>
internal abstract class FileTask : ICompletion
{
    /// <summary>A failure of <see cref="Execute"/>, for <see cref="Complete"/> to report.</summary>
    internal Exception? Failure { get; set; }

    /// <summary>Worker thread, with the command user's permissions.</summary>
    internal abstract void Execute();

    /// <summary>Loop thread.</summary>
    public abstract void Complete();
}

/// <summary>
/// The file workers: dedicated threads whose effective (so file-system) uid/gid are the command user's, set once per
/// thread with raw system calls (setfsuid is not implemented under gVisor; per-thread setresuid is, and leaves the
/// rest of the process root). Every file operation runs here, never on the loop, so a huge recursive delete
/// delays other file operations at most, never other channels. Two threads: one slow operation does not hold up
/// every other file request.
/// </summary>
internal sealed class FileWorkers
{
    private readonly EventLoop _loop;
    private readonly int _uid;
    private readonly int _gid;
    private readonly bool _becomeUser;
    private readonly Queue<FileTask> _queue = new();
    private readonly object _gate = new();
    private readonly int _threads;
    private int _started;

    internal FileWorkers(EventLoop loop, int uid, int gid, bool becomeUser, int threads = 2)
    {
        _loop = loop;
        _uid = uid;
        _gid = gid;
        _becomeUser = becomeUser;
        _threads = threads;
    }

    internal void Submit(FileTask task)
    {
        bool startThread;
        lock (_gate)
        {
            _queue.Enqueue(task);
            // Threads start lazily: the second only when work queues up behind the first.
            startThread = _started < _threads && (_started == 0 || _queue.Count > 1);
            if (startThread)
            {
                _started++;
            }
            Monitor.Pulse(_gate);
        }
        if (startThread)
        {
            var thread = new Thread(Run, 1024 * 1024) { IsBackground = true, Name = "file-worker" };
            thread.Start();
        }
    }

    private void Run()
    {
        var dropError = 0;
        if (_becomeUser)
        {
            var rc = Native.ThreadBecomeUser(_uid, _gid);
            if (rc < 0)
            {
                dropError = -rc;
                Log.Error($"file worker cannot take the user's ids ({Errno.Describe(dropError)}): file operations fail");
            }
        }
        while (true)
        {
            FileTask task;
            lock (_gate)
            {
                while (_queue.Count == 0)
                {
                    Monitor.Wait(_gate);
                }
                task = _queue.Dequeue();
            }
            if (dropError != 0)
            {
                // Never act as root for the user.
                task.Failure = new RequestException(Protocol.ErrorCodes.Internal, $"file worker has no user identity: {Errno.Describe(dropError)}");
            }
            else
            {
                try
                {
                    task.Execute();
                }
                catch (Exception e)
                {
                    task.Failure = e;
                }
            }
            _loop.Post(task);
        }
    }
}
