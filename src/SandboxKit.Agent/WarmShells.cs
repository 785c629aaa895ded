namespace SandboxKit.Agent;

/// <summary>
/// A shell spawned ahead of time for the session state of that moment (docs: "Warm shells"), blocked in a builtin
/// <c>read</c> on its wake pipe (fd 101) until it is handed a script through a memfd (fd 102). Used at most once.
/// </summary>
internal sealed unsafe class WarmShell : IChildOwner
{
    /// <summary>The bootstrap (the shell's <c>-c</c> text, one line so the script's line numbers start at 1): what the
    /// prelude does for a cold shell, then wait for the wake pipe's EOF, read the script into BASH_EXECUTION_STRING
    /// (which <c>bash -c SCRIPT</c> sets to SCRIPT anyway), close both descriptors, restart SECONDS and end with the
    /// prelude's last command (so <c>$_</c> matches), then <c>eval</c> it.</summary>
    internal const string Bootstrap =
        "{ builtin echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null; " +
        "trap -- '{ builtin set +eux; } 2>/dev/null; { builtin printf \"%s\\0\" \"$PWD\"; builtin export -p; builtin printf \"\\0\"; } >&100 2>/dev/null' EXIT; " +
        "read -r BASH_EXECUTION_STRING <&101; " +
        "IFS= read -r -d \"\" BASH_EXECUTION_STRING <&102; " +
        "exec 101<&- 102<&-; SECONDS=0; unset BASH_ENV; " +
        "eval \"$BASH_EXECUTION_STRING\"";

    private int _stdout;
    private int _stderr;
    private int _state;
    private int _wake;
    private int _script;

    internal WarmShell(long version, string cwd, long dev, long ino, EnvSnapshot env, int stdout, int stderr, int state, int wake, int script)
    {
        Version = version;
        Cwd = cwd;
        Dev = dev;
        Ino = ino;
        Env = env;
        _stdout = stdout;
        _stderr = stderr;
        _state = state;
        _wake = wake;
        _script = script;
    }

    internal int Pid { get; set; }

    public bool Reaped { get; set; }

    internal long Version { get; }

    internal string Cwd { get; }

    internal long Dev { get; }

    internal long Ino { get; }

    internal EnvSnapshot Env { get; }

    /// <summary>The command running in it, once taken.</summary>
    internal Command? TakenBy { get; private set; }

    /// <summary>It died while idle (the reaper reported it).</summary>
    internal bool Dead { get; private set; }

    internal Action<WarmShell>? DiedIdle { get; set; }

    public void OnExit(in ChildExit exit)
    {
        if (TakenBy is { } command)
        {
            command.OnExit(exit);
            return;
        }
        Dead = true;
        CloseAll();
        DiedIdle?.Invoke(this);
    }

    /// <summary>Writes the script into the memfd and closes the wake pipe: the shell runs it at once. Returns the pipes for the command.</summary>
    internal (int Stdout, int Stderr, int State) HandOver(Command command, ReadOnlySpan<byte> script)
    {
        var done = 0;
        fixed (byte* p = script)
        {
            while (done < script.Length)
            {
                var n = Native.PWrite(_script, p + done, script.Length - done, done);
                if (n < 0)
                {
                    throw new SysException((int)-n, "warm shell script");
                }
                done += (int)n;
            }
        }
        Native.CloseQuietly(ref _script);
        TakenBy = command;
        Native.CloseQuietly(ref _wake); // EOF on fd 101: the shell goes on
        var pipes = (_stdout, _stderr, _state);
        _stdout = _stderr = _state = -1;
        return pipes;
    }

    internal void CloseAll()
    {
        Native.CloseQuietly(ref _stdout);
        Native.CloseQuietly(ref _stderr);
        Native.CloseQuietly(ref _state);
        Native.CloseQuietly(ref _wake);
        Native.CloseQuietly(ref _script);
    }
}

/// <summary>
/// Keeps at most one warm shell ready for the session's current state (loop thread only). It is spawned at start
/// and after each command (after the round's frames were flushed, so <c>x</c> is not delayed); <c>--warm 2</c> also
/// spawns the next one as soon as one is taken. A command takes the idle shell when it fits exactly the current
/// state (env snapshot, cwd path and the directory's device + inode) and is alive; when a spawn is due but has not
/// run yet, one command may have it spawned right away ("waits" for it); everything else runs cold.
/// </summary>
internal sealed class WarmShells
{
    private readonly Supervisor _supervisor;
    private readonly int _mode;
    private WarmShell? _idle;
    private bool _refreshPending;
    private bool _claimed;

    internal WarmShells(Supervisor supervisor, int mode)
    {
        _supervisor = supervisor;
        _mode = mode;
    }

    internal bool Enabled => _mode != 0;

    internal int? IdlePid => _idle?.Pid;

    /// <summary>The state may have changed: a warm shell for it is spawned after this round's flush.</summary>
    internal void RequestRefresh()
    {
        if (_mode == 0 || _refreshPending)
        {
            return;
        }
        _refreshPending = true;
        _supervisor.Loop.DeferAfterFlush(RunRefresh);
    }

    private void RunRefresh()
    {
        if (!_refreshPending)
        {
            return;
        }
        _refreshPending = false;
        _claimed = false;
        Refresh();
    }

    private void Refresh()
    {
        if (_idle is { } idle)
        {
            if (Fits(idle))
            {
                return;
            }
            Discard(idle);
        }
        if (!_supervisor.Session.Env.WarmSafe || _supervisor.ShuttingDown)
        {
            return;
        }
        _idle = _supervisor.SpawnWarm();
        if (_idle is not null)
        {
            _idle.DiedIdle = OnDiedIdle;
        }
    }

    /// <summary>The session state changed: an idle shell that no longer fits is killed now (nobody can take it after), and a new one follows.</summary>
    internal void OnStateChanged()
    {
        if (_idle is { } idle && !Fits(idle))
        {
            Discard(idle);
        }
        RequestRefresh();
    }

    /// <summary>The idle shell, if it fits the current state; null: run cold.</summary>
    internal WarmShell? Take()
    {
        if (_mode == 0 || !_supervisor.Session.Env.WarmSafe)
        {
            return null;
        }
        if (_idle is null && _refreshPending && !_claimed)
        {
            _claimed = true; // the one command that may wait for a spawn under way: spawn it now
            Refresh();
        }
        var shell = _idle;
        if (shell is null)
        {
            return null;
        }
        _idle = null;
        if (!Fits(shell))
        {
            Discard(shell); // e.g. killed while idle and not reaped yet: the command runs cold
            RequestRefresh();
            return null;
        }
        if (_mode == 2)
        {
            RequestRefresh();
        }
        return shell;
    }

    private bool Fits(WarmShell shell)
    {
        var session = _supervisor.Session;
        if (shell.Dead || shell.Version != session.Version || shell.Cwd != session.CurrentCwd())
        {
            return false;
        }
        if (Native.StatPath(shell.Cwd, nofollow: false, out var st) != 0 || st.Dev != shell.Dev || st.Ino != shell.Ino)
        {
            return false;
        }
        lock (_supervisor.Reaper.SpawnLock)
        {
            return !shell.Reaped && Native.HasExited(shell.Pid) == 0;
        }
    }

    private void Discard(WarmShell shell)
    {
        if (ReferenceEquals(_idle, shell))
        {
            _idle = null;
        }
        shell.DiedIdle = null;
        // It never got a script, so it has no children: its group is just itself. Signalled only while unreaped.
        lock (_supervisor.Reaper.SpawnLock)
        {
            if (!shell.Reaped)
            {
                _ = Native.Kill(-shell.Pid, Native.SigKill);
            }
        }
        shell.CloseAll();
    }

    private void OnDiedIdle(WarmShell shell)
    {
        if (ReferenceEquals(_idle, shell))
        {
            _idle = null;
            RequestRefresh();
        }
    }

    /// <summary>Supervisor shutdown: the idle shell goes.</summary>
    internal void DiscardIdle()
    {
        if (_idle is { } idle)
        {
            Discard(idle);
        }
    }
}
