using System.Text;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>A validated <see cref="RunRequest"/>.</summary>
internal sealed class RunPlan
{
    internal const int DefaultKeepBytes = 1 << 20;
    internal const int MaxKeepBytes = 16 << 20;
    internal const int DefaultRingBytes = 1 << 20;
    internal const int MaxRingBytes = 16 << 20;

    internal required byte[] Script { get; init; }

    internal string? Code { get; init; }

    internal string? Language { get; init; }

    internal required string Display { get; init; }

    internal long TimeoutMs { get; init; }

    internal bool PipeStdin { get; init; }

    internal byte[]? StdinText { get; init; }

    internal bool Merge { get; init; }

    /// <summary>Per-command variables (keys are the names' bytes as Latin-1).</summary>
    internal required Dictionary<string, byte[]> Env { get; init; }

    internal string? Cwd { get; init; }

    internal bool Persist { get; init; }

    internal string? Key { get; init; }

    internal string? Fingerprint { get; init; }

    internal int KeepBytes { get; init; }

    internal bool Detach { get; init; }

    internal string? JobId { get; init; }

    internal int RingBytes { get; init; }

    /// <summary>A terminal job: the size of its pseudo-terminal.</summary>
    internal TerminalSize? Pty { get; init; }

    internal string Term { get; init; } = DefaultTerm;

    internal int RecordingBytes { get; init; }

    /// <summary>A terminal without <c>command</c> or <c>code</c>: the bundle's bash as an interactive login shell.</summary>
    internal bool LoginShell { get; init; }

    internal const string DefaultTerm = "xterm-256color";
    internal const int DefaultRecordingBytes = 4 << 20;
    internal const int MinRecordingBytes = 64 << 10;
    internal const int MaxRecordingBytes = 64 << 20;
    internal const int MaxTerminalCells = 1000;

    internal static RunPlan From(RunRequest request)
    {
        var loginShell = request.Pty is not null && request.Command is null && request.Code is null;
        if (!loginShell && (request.Command is null) == (request.Code is null))
        {
            throw RequestException.Invalid(request.Pty is null
                ? "exactly one of 'command' and 'code' is required"
                : "at most one of 'command' and 'code' (neither: an interactive shell)");
        }
        if (request.Pty is { } size)
        {
            if (!request.Detach)
            {
                throw RequestException.Invalid("'pty' needs 'detach' (a terminal is a job)");
            }
            CheckSize(size);
        }
        else if (request.Term is not null || request.RecordingBytes is not null)
        {
            throw RequestException.Invalid("'term' and 'recordingBytes' go with 'pty'");
        }
        if (request.Term is { } term && !IsTermName(term))
        {
            throw RequestException.Invalid("'term' must be 1-64 characters of [A-Za-z0-9._+-]");
        }
        if (request.RecordingBytes is < MinRecordingBytes or > MaxRecordingBytes)
        {
            throw RequestException.Invalid($"'recordingBytes' must be {MinRecordingBytes}..{MaxRecordingBytes}");
        }
        string? language = null;
        if (request.Code is not null)
        {
            language = request.Language ?? "python";
            if (language is not ("python" or "node" or "bash"))
            {
                throw RequestException.Invalid($"unknown language '{language}' (python, node or bash)");
            }
        }
        else if (request.Language is not null)
        {
            throw RequestException.Invalid("'language' goes with 'code'");
        }
        if (request.TimeoutMs < 0)
        {
            throw RequestException.Invalid("'timeoutMs' must not be negative");
        }
        if (request.Stdin is not (null or "closed" or "pipe"))
        {
            throw RequestException.Invalid("'stdin' must be 'closed' or 'pipe'");
        }
        var env = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var (name, value) in request.Env ?? new Dictionary<string, string>())
        {
            if (string.IsNullOrEmpty(name) || name.Contains('=') || name.Contains('\0') || value is null || value.Contains('\0'))
            {
                throw RequestException.Invalid("'env' must map variable names (no '=' or NUL) to strings without NUL");
            }
            env[EnvSnapshot.Key(name)] = Encoding.UTF8.GetBytes(value);
        }
        if (request.Cwd is { } cwd && (cwd.Length == 0 || cwd.Contains('\0')))
        {
            throw RequestException.Invalid("'cwd' must be a non-empty path without NUL");
        }
        if (request.Key is { } key && (key.Length is 0 or > 256))
        {
            throw RequestException.Invalid("'key' must have 1-256 characters");
        }
        if (request.Fingerprint is { Length: > 1024 })
        {
            throw RequestException.Invalid("'fingerprint' is too long");
        }
        if (request.KeepBytes is < 0 or > MaxKeepBytes)
        {
            throw RequestException.Invalid($"'keepBytes' must be 0..{MaxKeepBytes}");
        }
        if (request.RingBytes is < 1 or > MaxRingBytes)
        {
            throw RequestException.Invalid($"'ringBytes' must be 1..{MaxRingBytes}");
        }
        if (request.Detach && !IsJobId(request.JobId))
        {
            throw RequestException.Invalid("'jobId' must be 1-64 characters of [A-Za-z0-9_-]");
        }
        var text = request.Command ?? request.Code ?? "bash -l -i";
        return new RunPlan
        {
            Script = request.Command is null ? [] : Encoding.UTF8.GetBytes(request.Command),
            Code = request.Code,
            Language = language,
            Display = text.Length > 4096 ? text[..4096] : text,
            TimeoutMs = request.TimeoutMs,
            PipeStdin = request.Stdin == "pipe",
            StdinText = request.StdinText is null ? null : Encoding.UTF8.GetBytes(request.StdinText),
            Merge = request.MergeStderr,
            Env = env,
            Cwd = request.Cwd,
            Persist = request.PersistState ?? true,
            Key = request.Detach ? null : request.Key,
            Fingerprint = request.Fingerprint,
            KeepBytes = request.KeepBytes ?? DefaultKeepBytes,
            Detach = request.Detach,
            JobId = request.JobId,
            RingBytes = request.RingBytes ?? DefaultRingBytes,
            Pty = request.Pty,
            Term = request.Term ?? DefaultTerm,
            RecordingBytes = request.RecordingBytes ?? DefaultRecordingBytes,
            LoginShell = loginShell,
        };
    }

    /// <summary>A terminal size: 1 to 1000 columns and rows.</summary>
    internal static void CheckSize(TerminalSize size)
    {
        if (size.Cols is < 1 or > MaxTerminalCells || size.Rows is < 1 or > MaxTerminalCells)
        {
            throw RequestException.Invalid($"a terminal has 1-{MaxTerminalCells} columns and rows");
        }
    }

    private static bool IsTermName(string term)
    {
        if (term.Length is 0 or > 64)
        {
            return false;
        }
        foreach (var c in term)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '+' or '-'))
            {
                return false;
            }
        }
        return true;
    }

    internal static bool IsJobId(string? id)
    {
        if (id is null || id.Length is 0 or > 64)
        {
            return false;
        }
        foreach (var c in id)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Whether a warm shell (spawned with the session state, stdin /dev/null, separate stdout/stderr and the
    /// state trap) runs this exactly like <c>bash -c</c> would: no per-command settings, and a script under 100 KiB
    /// without NUL or \x01 (bash's internal quoting byte, mangled by <c>read</c>) that does not start with '-' or '+'
    /// (<c>bash -c</c> takes those as options).</summary>
    internal bool FitsWarm(byte[] script) =>
        !Detach && !PipeStdin && StdinText is null && !Merge && Env.Count == 0 && Cwd is null && Persist &&
        script.Length < Supervisor.InlineScriptMax && script.AsSpan().IndexOfAny((byte)0, (byte)1) < 0 &&
        !(script.Length > 0 && script[0] is (byte)'-' or (byte)'+');
}

/// <summary>
/// The directory for code runs' source files, <c>/tmp/.sandboxkit-UID</c>, created and checked by the file worker as
/// the user (mode 0700, owned by the user, not a symlink; otherwise a fresh one with a random suffix). Its descriptor
/// stays open, so the loop removes files through it (never through a path the user could redirect).
/// </summary>
internal sealed unsafe class CodeDirectory(int uid)
{
    private readonly Lock _gate = new();
    private int _fd = -1;
    private string? _path;

    /// <summary>Worker thread: the directory's path (created when needed).</summary>
    internal string Ensure()
    {
        lock (_gate)
        {
            if (_fd >= 0 && _path is not null && Native.StatPath(_path, nofollow: true, out var st) == 0 && st.IsDirectory)
            {
                Native.Stat held;
                if (Native.FStat(_fd, &held) == 0 && held.Ino == st.Ino && held.Dev == st.Dev)
                {
                    return _path;
                }
            }
            Native.CloseQuietly(ref _fd);
            var base_ = $"/tmp/.sandboxkit-{uid}";
            for (var attempt = 0; attempt < 8; attempt++)
            {
                var candidate = attempt == 0 ? base_ : $"{base_}-{Convert.ToHexStringLower(RandomBytes(4))}";
                fixed (byte* p = Native.Z(candidate))
                {
                    var rc = Native.MkdirAt(Native.AtFdCwd, p, 0x1C0);
                    if (rc < 0 && -rc != Errno.EEXIST)
                    {
                        throw RequestException.FromErrno(-rc, candidate);
                    }
                    var fd = Native.Open(p, Native.ORdOnly | Native.ODirectory | Native.ONoFollow, 0);
                    if (fd < 0)
                    {
                        continue; // a symlink or not a directory: someone else's; try another name
                    }
                    Native.Stat made;
                    if (Native.FStat(fd, &made) == 0 && made.Uid == (uint)Native.GetEuid() && (made.Mode & 0x3F) == 0)
                    {
                        _fd = fd;
                        _path = candidate;
                        return candidate;
                    }
                    _ = Native.Close(fd);
                }
            }
            throw new RequestException(ErrorCodes.Internal, $"no usable directory for code files under /tmp");
        }
    }

    /// <summary>Worker thread: writes a source file (0600) and returns its path.</summary>
    internal string Write(string name, ReadOnlySpan<byte> content)
    {
        var directory = Ensure();
        int fd;
        lock (_gate)
        {
            fixed (byte* p = Native.Z(name))
            {
                fd = Native.OpenAt(_fd, p, Native.OWrOnly | Native.OCreat | Native.OTrunc | Native.ONoFollow, 0x180);
            }
        }
        if (fd < 0)
        {
            throw RequestException.FromErrno(-fd, Session.CombinePath(directory, name));
        }
        try
        {
            var rc = Native.WriteAll(fd, content);
            if (rc < 0)
            {
                throw RequestException.FromErrno(-rc, Session.CombinePath(directory, name));
            }
        }
        finally
        {
            _ = Native.Close(fd);
        }
        return Session.CombinePath(directory, name);
    }

    /// <summary>Worker thread: removes a source file through the directory descriptor.</summary>
    internal void Remove(string name)
    {
        lock (_gate)
        {
            if (_fd < 0)
            {
                return;
            }
            fixed (byte* p = Native.Z(name))
            {
                _ = Native.UnlinkAt(_fd, p, 0);
            }
        }
    }

    private static byte[] RandomBytes(int n)
    {
        var buffer = new byte[n];
        fixed (byte* p = buffer)
        {
            _ = Native.GetRandom(p, n);
        }
        return buffer;
    }
}

internal sealed unsafe partial class Supervisor
{
    private static readonly Dictionary<string, (string Interpreter, string Extension)> Languages = new(StringComparer.Ordinal)
    {
        ["python"] = ("python3", ".py"),
        ["node"] = ("node", ".js"),
        ["bash"] = ("bash", ".sh"),
    };

    // ---- R ---------------------------------------------------------------------------------------------------

    private void OnRun(Connection connection, uint id, RunRequest request)
    {
        var plan = RunPlan.From(request);
        if (plan.Detach)
        {
            OnDetachedRun(connection, id, plan);
            return;
        }
        KeyedEntry? entry = null;
        if (plan.Key is { } key)
        {
            if (Keys.Find(key) is { } existing)
            {
                if (!string.Equals(existing.Fingerprint, plan.Fingerprint, StringComparison.Ordinal))
                {
                    throw new RequestException(ErrorCodes.Conflict, $"key '{key}' belongs to another request");
                }
                _ = new JoinChannel(connection, id, existing, existing.Pid);
                return;
            }
            entry = Keys.Create(key, plan.Fingerprint, plan.KeepBytes) ?? throw new RequestException(ErrorCodes.Busy, $"all {KeyedResults.MaxKeys} keyed commands are running");
        }
        var channel = new CommandChannel(this, connection, id);
        PrepareScript(plan, id, (script, codeFile) =>
        {
            if (channel.Ended && entry is null)
            {
                // The connection went while the code file was written: nobody wants this run.
                if (codeFile is not null)
                {
                    RemoveCodeFile(codeFile);
                }
                return;
            }
            Launch(channel.Ended ? null : channel, plan, script, codeFile, entry);
        }, failure =>
        {
            if (entry is not null)
            {
                Keys.Remove(entry);
            }
            if (!channel.Ended)
            {
                channel.Fail(failure.Code, failure.Message);
            }
        });
    }

    /// <summary>The script to run: the command, or (for code) the interpreter on the session PATH with the source file
    /// written as the user by a file worker. <paramref name="then"/> runs on the loop.</summary>
    private void PrepareScript(RunPlan plan, uint id, Action<byte[], string?> then, Action<RequestException> fail)
    {
        if (plan.Code is null)
        {
            then(plan.Script, null);
            return;
        }
        var (interpreter, extension) = Languages[plan.Language!];
        var path = (plan.Env.TryGetValue("PATH", out var p) ? Encoding.UTF8.GetString(p) : Session.Env.GetString("PATH")) ?? DefaultPath;
        var name = $"run-{_bootId}-{id}{extension}";
        var content = Encoding.UTF8.GetBytes(plan.Code);
        Files.Submit(new CodeFileTask(this, interpreter, path, name, content, then, fail));
    }

    private sealed class CodeFileTask(Supervisor supervisor, string interpreter, string path, string name, byte[] content,
        Action<byte[], string?> then, Action<RequestException> fail) : FileTask
    {
        private string? _file;

        internal override void Execute()
        {
            if (interpreter != "bash" && FileOps.FindOnPath(interpreter, path) is null)
            {
                throw new RequestException(ErrorCodes.NotInstalled, $"{interpreter} is not installed (not on the session PATH)");
            }
            _file = supervisor._codeDirectory.Write(name, content);
        }

        public override void Complete()
        {
            if (Failure is not null)
            {
                var (code, message) = Failures.Describe(Failure);
                fail(new RequestException(code, message));
                return;
            }
            // bash code runs with the bundle's bash (the image may have none); the others as the session PATH finds them.
            var command = interpreter == "bash"
                ? $"{Quote(supervisor.BashPath)} {Quote(_file!)}"
                : $"{interpreter} {Quote(_file!)}";
            then(Encoding.UTF8.GetBytes(command), name);
        }
    }

    private static string Quote(string text) => "'" + text.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    private void Launch(CommandChannel? channel, RunPlan plan, byte[] script, string? codeFile, KeyedEntry? entry)
    {
        Command command;
        try
        {
            command = plan.FitsWarm(script) && Warm.Take() is { } shell ? StartWarm(shell, plan, script) : StartCold(plan, script);
        }
        catch (RequestException e)
        {
            if (codeFile is not null)
            {
                RemoveCodeFile(codeFile);
            }
            if (entry is not null)
            {
                Keys.Remove(entry);
            }
            channel?.Fail(e.Code, e.Message);
            Warm.RequestRefresh();
            return;
        }
        command.CodeFile = codeFile;
        if (entry is not null)
        {
            command.Keyed = entry;
            entry.Command = command;
            entry.Pid = command.Pid;
        }
        channel?.Attach(command);
        command.Begin();
        if (plan.StdinText is { } text && command.Stdin is { } stdin)
        {
            stdin.Enqueue(text, credited: false);
        }
        if (!plan.PipeStdin)
        {
            command.Stdin?.RequestClose();
        }
    }

    private Command StartWarm(WarmShell shell, RunPlan plan, byte[] script)
    {
        var command = new Command(this, plan.Display, persist: true,
            new StatePolicy { BaseEnv = shell.Env, Keep = [], KeepCwd = false, ConfiguredAt = Session.ConfigureSerial }, plan.TimeoutMs, warm: true)
        {
            Pid = shell.Pid,
            ProcessOwner = shell,
            OomBefore = ReadOomKills(),
        };
        command.StartNs = EventLoop.NowNs; // durationMs counts from the hand-over
        (int stdout, int stderr, int state) pipes;
        try
        {
            pipes = shell.HandOver(command, script);
        }
        catch (SysException e)
        {
            Log.Warn($"warm hand-over failed ({e.Message}); running cold");
            lock (Reaper.SpawnLock)
            {
                if (!shell.Reaped)
                {
                    _ = Native.Kill(-shell.Pid, Native.SigKill);
                }
            }
            shell.CloseAll();
            return StartCold(plan, script);
        }
        command.Stdout = new OutputPipe(Loop, pipes.stdout, FrameType.Stdout, command);
        command.Stderr = new OutputPipe(Loop, pipes.stderr, FrameType.Stderr, command);
        command.StateDump = new StatePipe(Loop, pipes.state);
        return command;
    }

    /// <summary>argv and environment of a command shell: <c>bash --noprofile --norc -c SCRIPT</c>, or (over 100 KiB,
    /// or with NUL) the script from a memfd at fd 103 (<c>bash /dev/fd/103</c>), argv[0] <c>bash</c>.</summary>
    internal SpawnSpec ShellSpec(byte[] script, Dictionary<string, byte[]> env, string cwd, int scriptFd = -1)
    {
        List<byte[]> argv = [Spawner.Arg("bash"), Spawner.Arg("--noprofile"), Spawner.Arg("--norc")];
        if (scriptFd >= 0)
        {
            argv.Add(Spawner.Arg($"/dev/fd/{ColdScriptFd}"));
        }
        else
        {
            argv.Add(Spawner.Arg("-c"));
            argv.Add(script);
        }
        var spec = new SpawnSpec { Path = BashPath, Argv = argv, Env = EnvSnapshot.ToEntries(env), Cwd = cwd };
        if (scriptFd >= 0)
        {
            spec.Fds.Add((scriptFd, ColdScriptFd));
        }
        return spec;
    }

    private static (int Read, int Write) MakePipe()
    {
        var fds = stackalloc int[2];
        SysException.Check(Native.Pipe(fds, 0), "pipe");
        return (fds[0], fds[1]);
    }

    private Command StartCold(RunPlan plan, byte[] script, Job? job = null)
    {
        var baseEnv = Session.Env;
        var cwd = Session.CurrentCwd();
        if (plan.Cwd is { } relative)
        {
            cwd = Session.CombinePath(cwd, relative);
        }
        var env = baseEnv.Copy();
        foreach (var (name, value) in plan.Env)
        {
            env[name] = value;
        }
        var persist = plan.Persist && job is null;
        if (env.TryGetValue("BASH_ENV", out var userBashEnv))
        {
            env["__SBK_BASH_ENV"] = userBashEnv; // the prelude restores it and sources it, as bash would
        }
        env["BASH_ENV"] = Encoding.UTF8.GetBytes(Session.CombinePath(_bundleDir, persist ? "lib/prelude.sh" : "lib/prelude-nostate.sh"));

        var mine = new List<int>();   // our ends, closed if the spawn fails
        var theirs = new List<int>(); // the child's ends, closed once it has them
        try
        {
            var (outRead, outWrite) = MakePipe();
            mine.Add(outRead);
            theirs.Add(outWrite);
            var errRead = -1;
            var errWrite = outWrite;
            if (!plan.Merge)
            {
                (errRead, errWrite) = MakePipe();
                mine.Add(errRead);
                theirs.Add(errWrite);
            }
            var stateRead = -1;
            var stateWrite = -1;
            if (persist)
            {
                (stateRead, stateWrite) = MakePipe();
                mine.Add(stateRead);
                theirs.Add(stateWrite);
            }
            var stdinRead = DevNull;
            var stdinWrite = -1;
            if (plan.PipeStdin || plan.StdinText is not null)
            {
                (stdinRead, stdinWrite) = MakePipe();
                theirs.Add(stdinRead);
                mine.Add(stdinWrite);
            }
            var scriptFd = -1;
            if (script.Length >= InlineScriptMax || script.AsSpan().IndexOf((byte)0) >= 0)
            {
                fixed (byte* name = "sandboxkit-script\0"u8)
                {
                    scriptFd = SysException.Check(Native.MemFd(name), "memfd_create");
                }
                theirs.Add(scriptFd);
                var written = Native.WriteAll(scriptFd, script);
                if (written < 0)
                {
                    throw new SysException(-written, "script memfd");
                }
            }
            var spec = ShellSpec(script, env, cwd, scriptFd);
            spec.Fds.Add((stdinRead, 0));
            spec.Fds.Add((outWrite, 1));
            spec.Fds.Add((errWrite, 2));
            if (stateWrite >= 0)
            {
                spec.Fds.Add((stateWrite, StateFd));
            }

            var command = new Command(this, plan.Display, persist,
                new StatePolicy { BaseEnv = baseEnv, Keep = plan.Env.Keys.ToArray(), KeepCwd = plan.Cwd is not null, ConfiguredAt = Session.ConfigureSerial }, plan.TimeoutMs, warm: false)
            {
                OomBefore = ReadOomKills(),
                Job = job,
            };
            command.StartNs = EventLoop.NowNs;
            var outcome = Spawner.Spawn(spec, command);
            if (!outcome.Started && outcome.Step == SpawnOutcome.StepChdir && plan.Cwd is null && cwd != Session.Workdir)
            {
                // The session cwd was removed (or made unreachable) since: commands start in the workdir again.
                Log.Info($"cwd {cwd} cannot be entered ({Errno.Describe(outcome.Error)}); back to {Session.Workdir}");
                Session.CwdUnusable();
                Warm.OnStateChanged();
                spec.Cwd = cwd = Session.CurrentCwd();
                command.StartNs = EventLoop.NowNs;
                outcome = Spawner.Spawn(spec, command);
            }
            foreach (var fd in theirs)
            {
                _ = Native.Close(fd);
            }
            theirs.Clear();
            if (!outcome.Started)
            {
                throw outcome.Step == SpawnOutcome.StepChdir
                    ? new RequestException(outcome.Error == Errno.ENOENT ? ErrorCodes.NotFound : Errno.ToCode(outcome.Error), $"cwd {cwd}: {Errno.Describe(outcome.Error)}")
                    : new RequestException(ErrorCodes.Internal, $"cannot start the shell: {outcome.Describe()}");
            }
            mine.Clear();
            command.Pid = outcome.Pid;
            _ = Native.SetNonBlocking(outRead, 1);
            command.Stdout = new OutputPipe(Loop, outRead, FrameType.Stdout, command);
            if (errRead >= 0)
            {
                _ = Native.SetNonBlocking(errRead, 1);
                command.Stderr = new OutputPipe(Loop, errRead, FrameType.Stderr, command);
            }
            if (stateRead >= 0)
            {
                _ = Native.SetNonBlocking(stateRead, 1);
                command.StateDump = new StatePipe(Loop, stateRead);
            }
            if (stdinWrite >= 0)
            {
                _ = Native.SetNonBlocking(stdinWrite, 1);
                command.Stdin = new StdinPipe(Loop, stdinWrite);
            }
            return command;
        }
        catch (SysException e)
        {
            throw new RequestException(Errno.ToCode(e.Errno) == ErrorCodes.NoSpace ? ErrorCodes.NoSpace : ErrorCodes.Internal, e.Message);
        }
        finally
        {
            foreach (var fd in theirs)
            {
                _ = Native.Close(fd);
            }
            foreach (var fd in mine)
            {
                _ = Native.Close(fd);
            }
        }
    }

    /// <summary>A warm shell for the current state (stdin /dev/null, separate stdout/stderr, state trap), or null.</summary>
    internal WarmShell? SpawnWarm()
    {
        var cwd = Session.CurrentCwd();
        if (Native.StatPath(cwd, nofollow: false, out var st) != 0)
        {
            return null;
        }
        var mine = new List<int>();
        var theirs = new List<int>();
        try
        {
            var (outRead, outWrite) = MakePipe();
            mine.Add(outRead);
            theirs.Add(outWrite);
            var (errRead, errWrite) = MakePipe();
            mine.Add(errRead);
            theirs.Add(errWrite);
            var (stateRead, stateWrite) = MakePipe();
            mine.Add(stateRead);
            theirs.Add(stateWrite);
            var (wakeRead, wakeWrite) = MakePipe();
            theirs.Add(wakeRead);
            mine.Add(wakeWrite);
            int script;
            fixed (byte* name = "sandboxkit-script\0"u8)
            {
                script = SysException.Check(Native.MemFd(name), "memfd_create");
            }
            mine.Add(script);
            var env = Session.Env;
            var spec = ShellSpec(Encoding.UTF8.GetBytes(WarmShell.Bootstrap), env.Copy(), cwd);
            spec.Fds.Add((DevNull, 0));
            spec.Fds.Add((outWrite, 1));
            spec.Fds.Add((errWrite, 2));
            spec.Fds.Add((stateWrite, StateFd));
            spec.Fds.Add((wakeRead, WakeFd));
            spec.Fds.Add((script, WarmScriptFd));
            var shell = new WarmShell(Session.Version, cwd, st.Dev, st.Ino, env, outRead, errRead, stateRead, wakeWrite, script);
            var outcome = Spawner.Spawn(spec, shell);
            if (!outcome.Started)
            {
                Log.Warn($"warm shell: {outcome.Describe()}");
                return null;
            }
            mine.Clear();
            shell.Pid = outcome.Pid;
            foreach (var fd in new[] { outRead, errRead, stateRead })
            {
                _ = Native.SetNonBlocking(fd, 1);
            }
            return shell;
        }
        catch (SysException e)
        {
            Log.Warn($"warm shell: {e.Message}"); // e.g. EMFILE: commands run cold
            return null;
        }
        finally
        {
            foreach (var fd in theirs)
            {
                _ = Native.Close(fd);
            }
            foreach (var fd in mine)
            {
                _ = Native.Close(fd);
            }
        }
    }

    // ---- jobs --------------------------------------------------------------------------------------------

    private void OnDetachedRun(Connection connection, uint id, RunPlan plan)
    {
        var jobId = plan.JobId!;
        if (Jobs.Find(jobId) is { } existing)
        {
            if (existing.Running)
            {
                if (existing.CommandText != plan.Display)
                {
                    throw new RequestException(ErrorCodes.Conflict, $"job '{jobId}' runs another command");
                }
                // A retry of the same start: the job runs once.
                new ImmediateChannel(connection, id).Finish(new JobResult { Job = existing.Info() }, ProtocolJsonContext.Default.JobResult);
                return;
            }
            Jobs.Remove(existing);
        }
        if (!Jobs.MakeRoom())
        {
            throw new RequestException(ErrorCodes.Busy, $"{JobTable.MaxJobs} jobs are running");
        }
        var job = new Job(jobId, plan.Display, plan.RingBytes);
        Jobs.Add(job); // reserved now: a second start of the same id while the code file is written is a retry
        var channel = new ImmediateChannel(connection, id);
        PrepareScript(plan, id, (script, codeFile) =>
        {
            Command command;
            try
            {
                command = plan.Pty is null ? StartCold(plan, script, job) : StartTerminal(plan, script, job);
            }
            catch (RequestException e)
            {
                Jobs.Remove(job);
                if (codeFile is not null)
                {
                    RemoveCodeFile(codeFile);
                }
                if (!channel.Ended)
                {
                    channel.Fail(e.Code, e.Message);
                }
                return;
            }
            command.CodeFile = codeFile;
            job.Command = command;
            job.Owner = command.ProcessOwner;
            job.Pid = command.Pid;
            command.Begin();
            if (plan.StdinText is { } text)
            {
                command.Stdin?.Enqueue(text, credited: false);
            }
            if (!plan.PipeStdin && plan.Pty is null)
            {
                command.Stdin?.RequestClose(); // a terminal's input stays open: it is how keystrokes arrive
            }
            if (!channel.Ended)
            {
                channel.Finish(new JobResult { Job = job.Info() }, ProtocolJsonContext.Default.JobResult);
            }
        }, failure =>
        {
            Jobs.Remove(job);
            if (!channel.Ended)
            {
                channel.Fail(failure.Code, failure.Message);
            }
        });
    }

    private void OnJob(Connection connection, uint id, JobRequest request)
    {
        if (request.Op == "list")
        {
            new ImmediateChannel(connection, id).Finish(new JobResult { Jobs = Jobs.All.Select(j => j.Info()).ToList() }, ProtocolJsonContext.Default.JobResult);
            return;
        }
        if (request.Op is not ("get" or "read" or "attach" or "stdin" or "signal" or "forget" or "resize" or "recording"))
        {
            throw RequestException.Invalid($"unknown job op '{request.Op}'");
        }
        if (request.Id is null || Jobs.Find(request.Id) is not { } job)
        {
            throw new RequestException(ErrorCodes.NotFound, $"no job '{request.Id}'");
        }
        switch (request.Op)
        {
            case "get":
                new ImmediateChannel(connection, id).Finish(new JobResult { Job = job.Info() }, ProtocolJsonContext.Default.JobResult);
                break;
            case "read":
            {
                var since = Math.Max(0, request.Since ?? 0);
                var max = request.Max is { } m ? Math.Clamp(m, 0, connection.Window) : connection.Window;
                var channel = new ImmediateChannel(connection, id);
                var (from, next) = job.Ring.Read(since, max, (type, data) => channel.Data(type, data));
                channel.Finish(new JobResult { From = from, Next = next, Dropped = from > since, Job = job.Info() }, ProtocolJsonContext.Default.JobResult);
                break;
            }
            case "attach":
                _ = new AttachChannel(connection, id, job, Math.Max(0, request.Since ?? 0));
                break;
            case "stdin":
            {
                if (job.Command?.Stdin is not { Closing: false } stdin)
                {
                    throw new RequestException(ErrorCodes.Conflict, $"job '{job.Id}' has no open stdin");
                }
                byte[] data;
                try
                {
                    data = Convert.FromBase64String(request.Data ?? "");
                }
                catch (FormatException)
                {
                    throw RequestException.Invalid("'data' is not base64");
                }
                if (request.Close == true && job.Terminal is not null)
                {
                    throw RequestException.Invalid($"job '{job.Id}' is a terminal: its input does not close (send ^D to end a shell's input)");
                }
                if (stdin.Queued + data.Length > StdinPipe.MaxQueued)
                {
                    throw new RequestException(ErrorCodes.Busy, $"job '{job.Id}' has {stdin.Queued} bytes of stdin pending");
                }
                stdin.Enqueue(data, credited: false);
                if (request.Close == true)
                {
                    stdin.RequestClose();
                }
                new ImmediateChannel(connection, id).Finish(new JobResult { Job = job.Info() }, ProtocolJsonContext.Default.JobResult);
                break;
            }
            case "signal":
            {
                var signal = request.Signal ?? Native.SigKill;
                if (signal is < 1 or > 64)
                {
                    throw RequestException.Invalid("'signal' must be 1..64");
                }
                job.Signal(this, signal);
                new ImmediateChannel(connection, id).Finish(new JobResult { Job = job.Info() }, ProtocolJsonContext.Default.JobResult);
                break;
            }
            case "resize":
            {
                if (request.Size is not { } size)
                {
                    throw RequestException.Invalid("'size' is required");
                }
                RunPlan.CheckSize(size);
                if (job.Terminal is not { } terminal)
                {
                    throw RequestException.Invalid($"job '{job.Id}' is not a terminal");
                }
                if (!job.Running)
                {
                    throw new RequestException(ErrorCodes.Conflict, $"terminal '{job.Id}' has exited");
                }
                terminal.Resize(size);
                new ImmediateChannel(connection, id).Finish(new JobResult { Job = job.Info() }, ProtocolJsonContext.Default.JobResult);
                break;
            }
            case "recording":
                if (job.Terminal is not { } recorded)
                {
                    throw RequestException.Invalid($"job '{job.Id}' is not a terminal");
                }
                _ = new RecordingChannel(connection, id, job, recorded.Recording.Snapshot());
                break;
            case "forget":
                if (job.Running)
                {
                    throw new RequestException(ErrorCodes.Conflict, $"job '{job.Id}' is running");
                }
                Jobs.Remove(job);
                new ImmediateChannel(connection, id).Finish(new JobResult(), ProtocolJsonContext.Default.JobResult);
                break;
        }
    }
}
