using System.Globalization;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// One interpreter context (docs: "Interpreter contexts"), owned by the supervisor: it outlives connections, and its
/// interpreter (one <see cref="Interpreter"/> per generation) is started at <c>create</c>, at <c>restart</c>, and by
/// the first <c>run</c> after it died (loop thread only).
/// </summary>
internal sealed class InterpreterContext
{
    private readonly Supervisor _supervisor;
    private readonly List<ImmediateChannel> _waiters = [];
    private CellRun? _queued;
    private int _startSerial;

    internal InterpreterContext(Supervisor supervisor, string id, string language, string cwd)
    {
        _supervisor = supervisor;
        Id = id;
        Language = language;
        Cwd = cwd;
        CreatedAtMs = Native.RealtimeMs();
    }

    internal string Id { get; }

    /// <summary><c>python</c> or <c>javascript</c>.</summary>
    internal string Language { get; }

    /// <summary>Where every generation starts.</summary>
    internal string Cwd { get; }

    internal long CreatedAtMs { get; }

    internal int Generation { get; private set; }

    /// <summary>Cells run by the current interpreter (from its last <c>done</c>).</summary>
    internal int ExecutionCount { get; set; }

    /// <summary>The current generation's interpreter (it may have exited: then the context is dead).</summary>
    internal Interpreter? Process { get; private set; }

    /// <summary>A start is under way (the interpreter is looked up, or its driver is not ready yet).</summary>
    internal bool Starting { get; private set; }

    /// <summary>Some generation became ready once: a failed start leaves a dead context instead of none.</summary>
    internal bool EverReady { get; private set; }

    internal bool Deleted { get; private set; }

    internal bool HasCell => Process is { Exited: false, Cell: not null } || _queued is not null;

    /// <summary>The interpreter that takes cells now: ready, running, and not being killed (a violation between
    /// cells kills it; the next run gets a fresh one rather than a cell that dies with it).</summary>
    private Interpreter? Live => Process is { Exited: false, Ready: true, KillReason: null } p ? p : null;

    internal string Status => Deleted ? "dead" : Starting ? "starting" : Process is { Exited: false, Ready: true } p && (p.KillReason is null || p.Cell is not null)
        ? (p.Cell is not null ? "busy" : "idle") : "dead";

    internal ContextInfo Info() => new()
    {
        Id = Id,
        Language = Language,
        Status = Status,
        Pid = Process is { Exited: false } p ? p.Pid : 0,
        Version = Process?.Version,
        IPython = Process?.IPython ?? false,
        ExecutionCount = ExecutionCount,
        CreatedAtMs = CreatedAtMs,
        Cwd = Cwd,
        Generation = Generation,
    };

    /// <summary>Answered with <c>f {context}</c> when the interpreter is ready, with <c>r</c> when the start fails.</summary>
    internal void AddWaiter(ImmediateChannel channel) => _waiters.Add(channel);

    /// <summary>Starts a new generation: the interpreter is looked up on the session PATH (as the user, on a file
    /// worker), then spawned. The previous one, if any, must have been killed by the caller.</summary>
    internal void Start()
    {
        Starting = true;
        Generation++;
        ExecutionCount = 0;
        // The previous interpreter (killed, or exited) finishes on its own: nothing it does later concerns this start.
        Process = null;
        var serial = ++_startSerial;
        var program = Language == "python" ? "python3" : "node";
        var path = _supervisor.Session.Env.GetString("PATH") ?? Supervisor.DefaultPath;
        _supervisor.Files.Submit(new LookupTask(program, path, (found, failure) => OnLookedUp(serial, program, found, failure)));
    }

    private void OnLookedUp(int serial, string program, string? found, Exception? failure)
    {
        if (Deleted || serial != _startSerial)
        {
            return; // deleted or restarted meanwhile
        }
        if (failure is not null)
        {
            var (code, message) = Failures.Describe(failure);
            StartFailed(code, message);
            return;
        }
        if (found is null)
        {
            StartFailed(ErrorCodes.NotInstalled, $"{program} is not installed (not on the session PATH): {Language} contexts need it");
            return;
        }
        try
        {
            Process = Interpreter.Spawn(_supervisor, this, found);
        }
        catch (RequestException e)
        {
            StartFailed(e.Code, e.Message);
        }
    }

    /// <summary>The driver of <paramref name="process"/> sent <c>ready</c>.</summary>
    internal void OnReady(Interpreter process)
    {
        if (!ReferenceEquals(process, Process))
        {
            return;
        }
        Starting = false;
        EverReady = true;
        var info = Info();
        foreach (var waiter in _waiters)
        {
            if (!waiter.Ended)
            {
                waiter.Finish(new ContextResult { Context = info }, ProtocolJsonContext.Default.ContextResult);
            }
        }
        _waiters.Clear();
        if (_queued is { } cell)
        {
            // Also when its connection ended meanwhile: a run goes on without its channel.
            _queued = null;
            process.Execute(cell);
        }
    }

    private void StartFailed(string code, string message)
    {
        Starting = false;
        Log.Warn($"context {Id}: {Language} interpreter did not start: {message}");
        FailWaiting(code, message);
        if (!EverReady)
        {
            // A create that failed: there never was a usable context.
            _supervisor.Contexts.Remove(this);
        }
    }

    private void FailWaiting(string code, string message)
    {
        foreach (var waiter in _waiters)
        {
            if (!waiter.Ended)
            {
                waiter.Fail(code, message);
            }
        }
        _waiters.Clear();
        if (_queued is { } cell)
        {
            _queued = null;
            cell.Channel.Fail(code, message);
        }
    }

    /// <summary>The interpreter exited and everything it wrote was forwarded.</summary>
    internal void OnInterpreterGone(Interpreter process, in ChildExit exit)
    {
        if (!ReferenceEquals(process, Process) || Deleted)
        {
            return; // an older generation (restart), or the context is gone
        }
        if (!process.Ready)
        {
            var tail = process.StartTail;
            var reason = process.KillReason ?? $"the driver exited with status {exit.ExitCode} before it was ready";
            StartFailed(ErrorCodes.Internal, tail.Length > 0 ? $"{reason}: {tail}" : reason);
            return;
        }
        Log.Info($"context {Id}: interpreter pid {process.Pid} ended with status {exit.ExitCode}{(process.KillReason is { } why ? $" ({why})" : "")}");
    }

    /// <summary>A cell ended: its final frame (the context's state as of now).</summary>
    internal void CellEnded(CellRun cell, CellOutcome outcome)
    {
        if (cell.Channel.Ended)
        {
            return; // its connection ended: the outcome is lost, as documented
        }
        cell.Channel.Finish(new ContextResult { Cell = outcome, Context = Info() });
    }

    /// <summary><c>run</c>: at once on an idle interpreter, after a fresh start on a dead one.</summary>
    internal void Run(CellRun cell)
    {
        if (HasCell || Starting)
        {
            throw new RequestException(ErrorCodes.Busy, Starting ? $"context '{Id}' is starting" : $"context '{Id}' is running a cell");
        }
        if (Live is { } process)
        {
            process.Execute(cell);
            return;
        }
        _queued = cell;
        KillCurrent("replaced by a fresh interpreter");
        Start();
    }

    /// <summary><c>restart</c>: the interpreter is killed (a running cell ends <c>died</c>) and a fresh one started.</summary>
    internal void Restart(ImmediateChannel channel)
    {
        KillCurrent("restarted");
        _waiters.Add(channel);
        Start();
    }

    /// <summary><c>interrupt</c>: SIGINT to a running cell (nothing when none runs).</summary>
    internal void Interrupt(long graceMs)
    {
        if (Process is { Exited: false, Cell: { } cell } process)
        {
            process.Interrupt(cell, graceMs, timedOut: false);
        }
    }

    /// <summary>An interrupt through the run's own channel (<c>K</c>).</summary>
    internal void Interrupt(ContextRunChannel channel)
    {
        if (Process is { Exited: false, Cell: { } cell } process && ReferenceEquals(cell.Channel, channel))
        {
            process.Interrupt(cell, cell.GraceMs, timedOut: false);
        }
    }

    /// <summary><c>delete</c> (or the supervisor's end): killed and forgotten; whatever waited for it gets <c>not_found</c>.</summary>
    internal void Delete(string reason)
    {
        Deleted = true;
        _startSerial++;
        Starting = false;
        KillCurrent(reason);
        FailWaiting(ErrorCodes.NotFound, $"context '{Id}' was deleted");
    }

    private void KillCurrent(string reason)
    {
        if (Process is { Exited: false } process)
        {
            process.Kill(reason);
        }
    }

    /// <summary>Finds the interpreter on the session PATH with the user's permissions (execute bit, regular file).</summary>
    private sealed class LookupTask(string program, string path, Action<string?, Exception?> then) : FileTask
    {
        private string? _found;

        internal override void Execute() => _found = FileOps.FindOnPath(program, path);

        public override void Complete() => then(_found, Failure);
    }
}

/// <summary>The session's contexts: at most 16.</summary>
internal sealed class ContextTable
{
    internal const int MaxContexts = 16;

    private readonly Dictionary<string, InterpreterContext> _contexts = new(StringComparer.Ordinal);
    private readonly List<InterpreterContext> _order = [];

    internal int Count => _contexts.Count;

    internal IEnumerable<InterpreterContext> All => _order;

    internal InterpreterContext? Find(string id) => _contexts.TryGetValue(id, out var context) ? context : null;

    internal void Add(InterpreterContext context)
    {
        _contexts[context.Id] = context;
        _order.Add(context);
    }

    internal void Remove(InterpreterContext context)
    {
        if (_contexts.TryGetValue(context.Id, out var current) && ReferenceEquals(current, context))
        {
            _contexts.Remove(context.Id);
        }
        _order.Remove(context);
    }
}

/// <summary>
/// The channel of an <c>X run</c>: the cell's <c>o</c>/<c>e</c> output and <c>v</c>/<c>w</c> events within credit,
/// then <c>f {cell, context}</c>. <c>K</c> interrupts the cell (as <c>interrupt</c> does, with the run's grace). When
/// its connection ends the cell goes on and its output is dropped.
/// </summary>
internal sealed class ContextRunChannel(Connection connection, uint id, InterpreterContext context) : Channel(connection, id)
{
    /// <summary>The interpreter the cell was sent to (null while a fresh one starts).</summary>
    internal Interpreter? Process { get; set; }

    internal int SendOutput(byte type, ReadOnlySpan<byte> data) => SendData(type, data);

    /// <summary>As much of an event's bytes as the credit allows, in <c>v</c> frames.</summary>
    internal int SendChunk(ReadOnlySpan<byte> data) => SendData(FrameType.EventChunk, data);

    /// <summary><c>w</c>: the chunks since the last one form one event.</summary>
    internal void EndEvent()
    {
        if (!Ended && !Connection.Closed)
        {
            Connection.Send(FrameType.EventEnd, Id, default, urgent: false);
        }
    }

    internal void Finish(ContextResult result) => End(FrameType.Result, result, ProtocolJsonContext.Default.ContextResult);

    internal void Fail(string code, string message) => EndWithError(code, message);

    protected override void OnCreditAdded() => Process?.Pump();

    internal override void OnKill(int signal) => context.Interrupt(this);

    internal override void OnConnectionLost()
    {
        Abandon();
        Process?.Pump(); // its output is dropped from now on, so the interpreter never blocks on it
    }
}

internal sealed partial class Supervisor
{
    internal const long DefaultGraceMs = 3000;
    internal const long MaxGraceMs = 30_000;

    internal ContextTable Contexts { get; } = new();

    /// <summary>The drivers' folder in the bundle.</summary>
    internal string InterpretersDirectory => Session.CombinePath(_bundleDir, "lib/interpreters");

    private void OnContext(Connection connection, uint id, ContextRequest request)
    {
        if (request.Op == "list")
        {
            new ImmediateChannel(connection, id).Finish(new ContextResult { Contexts = Contexts.All.Select(c => c.Info()).ToList() }, ProtocolJsonContext.Default.ContextResult);
            return;
        }
        if (request.Op is not ("create" or "get" or "restart" or "delete" or "run" or "interrupt"))
        {
            throw RequestException.Invalid($"unknown context op '{request.Op}'");
        }
        if (!RunPlan.IsJobId(request.Id))
        {
            throw RequestException.Invalid("'id' must be 1-64 characters of [A-Za-z0-9_-]");
        }
        var graceMs = request.GraceMs ?? DefaultGraceMs;
        if (graceMs is < 0 or > MaxGraceMs)
        {
            throw RequestException.Invalid($"'graceMs' must be 0..{MaxGraceMs}");
        }
        if (request.Op == "create")
        {
            OnCreateContext(connection, id, request);
            return;
        }
        if (Contexts.Find(request.Id!) is not { } context)
        {
            throw new RequestException(ErrorCodes.NotFound, $"no context '{request.Id}'");
        }
        switch (request.Op)
        {
            case "get":
                new ImmediateChannel(connection, id).Finish(new ContextResult { Context = context.Info() }, ProtocolJsonContext.Default.ContextResult);
                break;
            case "restart":
                context.Restart(new ImmediateChannel(connection, id));
                break;
            case "delete":
                Contexts.Remove(context);
                context.Delete("deleted");
                new ImmediateChannel(connection, id).Finish(new ContextResult(), ProtocolJsonContext.Default.ContextResult);
                break;
            case "interrupt":
                context.Interrupt(graceMs);
                new ImmediateChannel(connection, id).Finish(new ContextResult { Context = context.Info() }, ProtocolJsonContext.Default.ContextResult);
                break;
            case "run":
            {
                if (request.Code is null)
                {
                    throw RequestException.Invalid("'code' is required");
                }
                if (request.TimeoutMs < 0)
                {
                    throw RequestException.Invalid("'timeoutMs' must not be negative");
                }
                if (request.CellId is { Length: 0 or > 256 })
                {
                    throw RequestException.Invalid("'cellId' must have 1-256 characters");
                }
                if (context.HasCell || context.Starting)
                {
                    throw new RequestException(ErrorCodes.Busy, context.Starting ? $"context '{context.Id}' is starting" : $"context '{context.Id}' is running a cell");
                }
                var channel = new ContextRunChannel(connection, id, context);
                context.Run(new CellRun
                {
                    CellId = request.CellId ?? id.ToString(CultureInfo.InvariantCulture),
                    Channel = channel,
                    Code = request.Code,
                    TimeoutMs = request.TimeoutMs,
                    GraceMs = graceMs,
                });
                break;
            }
        }
    }

    private void OnCreateContext(Connection connection, uint id, ContextRequest request)
    {
        if (request.Language is not ("python" or "javascript"))
        {
            throw RequestException.Invalid("'language' must be 'python' or 'javascript'");
        }
        if (request.Cwd is { } cwd && (cwd.Length == 0 || cwd.Contains('\0')))
        {
            throw RequestException.Invalid("'cwd' must be a non-empty path without NUL");
        }
        if (Contexts.Find(request.Id!) is { } existing)
        {
            // A retry of the same create (e.g. after a server restart): one context, answered when it is ready.
            if (existing.Language != request.Language)
            {
                throw new RequestException(ErrorCodes.Conflict, $"context '{existing.Id}' is a {existing.Language} context");
            }
            var retry = new ImmediateChannel(connection, id);
            if (existing.Starting)
            {
                existing.AddWaiter(retry);
            }
            else
            {
                retry.Finish(new ContextResult { Context = existing.Info() }, ProtocolJsonContext.Default.ContextResult);
            }
            return;
        }
        if (Contexts.Count >= ContextTable.MaxContexts)
        {
            throw new RequestException(ErrorCodes.Busy, $"{ContextTable.MaxContexts} contexts exist");
        }
        var directory = request.Cwd is { } relative ? Session.CombinePath(Session.CurrentCwd(), relative) : Session.CurrentCwd();
        var context = new InterpreterContext(this, request.Id!, request.Language, directory);
        Contexts.Add(context);
        context.AddWaiter(new ImmediateChannel(connection, id));
        context.Start();
    }

    /// <summary>Supervisor shutdown: every interpreter goes.</summary>
    private void KillContexts()
    {
        foreach (var context in Contexts.All.ToArray())
        {
            context.Delete("supervisor terminating");
        }
    }
}
