using System.Buffers;
using System.Buffers.Text;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// The pseudo-terminal of a terminal job (docs: "Terminals"): a control descriptor on its master for the window size,
/// its current size, and its recording (loop thread only). The master's other two descriptors are the job's output
/// pipe and input pipe.
/// </summary>
internal sealed unsafe class Terminal
{
    private int _control;

    private Terminal(int control, TerminalSize size, Recording recording)
    {
        _control = control;
        Size = size;
        Recording = recording;
    }

    internal TerminalSize Size { get; private set; }

    internal Recording Recording { get; }

    /// <summary>
    /// A new pseudo-terminal: the master (non-blocking) from <c>/dev/ptmx</c>, unlocked; its slave opened through the
    /// master where the kernel can (<c>TIOCGPTPEER</c>, no path involved) or as <c>/dev/pts/N</c> (gVisor), owned by
    /// the command user (mode 0620, what grantpt would give) so its programs can reopen <c>/dev/tty</c> and change
    /// its modes; the window size set before anything runs on it. Both close-on-exec and <c>O_NOCTTY</c>: the
    /// supervisor never gets a controlling terminal.
    /// </summary>
    /// <exception cref="SysException">A step failed.</exception>
    internal static (int Master, int Slave) Open(int uid, int gid, bool chown, TerminalSize size)
    {
        int master;
        fixed (byte* p = "/dev/ptmx\0"u8)
        {
            master = SysException.Check(Native.Open(p, Native.ORdWr | Native.ONoCtty | Native.ONonBlock, 0), "/dev/ptmx");
        }
        var slave = -1;
        try
        {
            SysException.Check(Native.PtyUnlock(master), "unlock the terminal (TIOCSPTLCK)");
            slave = Native.PtyPeer(master);
            if (slave < 0)
            {
                var number = SysException.Check(Native.PtyNumber(master), "terminal number (TIOCGPTN)");
                fixed (byte* p = Native.Z($"/dev/pts/{number.ToString(CultureInfo.InvariantCulture)}"))
                {
                    slave = SysException.Check(Native.Open(p, Native.ORdWr | Native.ONoCtty, 0), $"/dev/pts/{number}");
                }
            }
            if (chown)
            {
                // The mode first: once the user owns it, only CAP_FOWNER (which the supervisor lacks) could change it.
                SysException.Check(Native.FChmod(slave, 0x190), "chmod the terminal"); // 0620
                SysException.Check(Native.FChown(slave, uid, gid), "chown the terminal");
            }
            SysException.Check(Native.SetWinsize(master, size.Cols, size.Rows), "window size (TIOCSWINSZ)");
            return (master, slave);
        }
        catch
        {
            Native.CloseQuietly(ref slave);
            Native.CloseQuietly(ref master);
            throw;
        }
    }

    /// <summary>A terminal around an open master (the control descriptor is a copy of it).</summary>
    internal static Terminal Create(int master, TerminalSize size, Recording recording)
    {
        var control = SysException.Check(Native.DupAbove(master, 3), "dup the terminal");
        return new Terminal(control, size, recording);
    }

    /// <summary>Sets the window size (the kernel sends SIGWINCH to the foreground group) and records it.</summary>
    /// <exception cref="RequestException"><c>conflict</c> once the terminal is gone, <c>internal</c> when the kernel refuses.</exception>
    internal void Resize(TerminalSize size)
    {
        if (_control < 0)
        {
            throw new RequestException(ErrorCodes.Conflict, "the terminal has exited");
        }
        var rc = Native.SetWinsize(_control, size.Cols, size.Rows);
        if (rc < 0)
        {
            throw new RequestException(ErrorCodes.Internal, $"window size (TIOCSWINSZ): {Errno.Describe(-rc)}");
        }
        Size = size;
        Recording.Resize(size);
    }

    /// <summary>The job ended: the recording's last partial character is flushed, the control descriptor closed.</summary>
    internal void Finished()
    {
        Recording.Flush();
        Native.CloseQuietly(ref _control);
    }
}

/// <summary>
/// A terminal's asciicast v2 recording, bounded (docs: "Terminals"). Events are kept as their lines (<c>[t, "o",
/// "text"]\n</c>, <c>[t, "r", "COLSxROWS"]\n</c>) in append-only segments; when the lines exceed the budget the oldest
/// segments go whole, so a snapshot (a list of segments and the last one's length) stays valid while the recording
/// goes on, without a copy. Output is decoded as UTF-8 with U+FFFD for invalid bytes by a decoder that keeps a
/// character split across reads for the next one; an event carries at most 4096 characters (longer output becomes
/// several events with the same time), which bounds a line and so the granularity of dropping.
/// </summary>
internal sealed class Recording
{
    private const int SegmentBytes = 16 * 1024;
    private const int FirstSegmentBytes = 1024;
    private const int MaxEventChars = 4096;

    internal static readonly byte[] DroppedText = "\r\n[... earlier output dropped by SandboxKit ...]\r\n"u8.ToArray();

    private static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private readonly int _capacity;
    private readonly long _startNs;
    private readonly long _startUnixSeconds;
    private readonly string _term;
    private readonly string _shell;
    private readonly Decoder _decoder = new UTF8Encoding(false, false).GetDecoder();
    private readonly List<Segment> _segments = [];
    private readonly ArrayBufferWriter<byte> _line = new(256);
    private char[] _chars = new char[1024];
    private long _held;
    private bool _dropped;
    private TerminalSize _size;

    private sealed class Segment(byte[] data, double firstTime, TerminalSize sizeAtStart)
    {
        internal byte[] Data { get; set; } = data;
        internal int Length { get; set; }
        internal double FirstTime { get; } = firstTime;
        internal TerminalSize SizeAtStart { get; } = sizeAtStart;
    }

    internal Recording(int capacity, long startNs, long startedAtMs, TerminalSize size, string term, string shell)
    {
        _capacity = capacity;
        _startNs = startNs;
        _startUnixSeconds = startedAtMs / 1000;
        _size = size;
        _term = term;
        _shell = shell;
    }

    /// <summary>Bytes of event lines kept.</summary>
    internal long HeldBytes => _held;

    internal void Output(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return;
        }
        var needed = _decoder.GetCharCount(data, flush: false);
        if (needed > _chars.Length)
        {
            _chars = new char[Math.Max(needed, _chars.Length * 2)];
        }
        var count = _decoder.GetChars(data, _chars, flush: false);
        AppendText(_chars.AsSpan(0, count));
        if (_chars.Length > 64 * 1024)
        {
            _chars = new char[1024]; // a burst's buffer goes back
        }
    }

    /// <summary>The end of the output: an incomplete character left in the decoder becomes U+FFFD.</summary>
    internal void Flush()
    {
        Span<char> rest = stackalloc char[8];
        var count = _decoder.GetChars(ReadOnlySpan<byte>.Empty, rest, flush: true);
        AppendText(rest[..count]);
    }

    internal void Resize(TerminalSize size)
    {
        var sizeAtStart = _size;
        _size = size;
        var text = $"{size.Cols.ToString(CultureInfo.InvariantCulture)}x{size.Rows.ToString(CultureInfo.InvariantCulture)}";
        AppendEvent("r"u8, text, sizeAtStart);
    }

    private void AppendText(ReadOnlySpan<char> text)
    {
        while (!text.IsEmpty)
        {
            var n = Math.Min(text.Length, MaxEventChars);
            if (n < text.Length && char.IsHighSurrogate(text[n - 1]))
            {
                n--; // a surrogate pair stays in one event
            }
            AppendEvent("o"u8, text[..n], _size);
            text = text[n..];
        }
    }

    private void AppendEvent(ReadOnlySpan<byte> code, ReadOnlySpan<char> text, TerminalSize sizeAtStart)
    {
        var time = Math.Max(0, EventLoop.NowNs - _startNs) / 1e9;
        _line.Clear();
        WriteLine(_line, time, code, text);
        Append(_line.WrittenSpan, time, sizeAtStart);
    }

    /// <summary><c>[t, "code", "text"]\n</c>: t in seconds with microseconds, the text as a JSON string (control
    /// characters escaped; other characters as themselves).</summary>
    private static void WriteLine(ArrayBufferWriter<byte> line, double time, ReadOnlySpan<byte> code, ReadOnlySpan<char> text)
    {
        line.Write("["u8);
        var number = line.GetSpan(32);
        Utf8Formatter.TryFormat((decimal)Math.Round(time, 6), number, out var written, new StandardFormat('F', 6));
        line.Advance(written);
        line.Write(", \""u8);
        line.Write(code);
        line.Write("\", "u8);
        using (var writer = new Utf8JsonWriter(line, WriterOptions))
        {
            writer.WriteStringValue(text);
        }
        line.Write("]\n"u8);
    }

    private void Append(ReadOnlySpan<byte> line, double time, TerminalSize sizeAtStart)
    {
        var last = _segments.Count > 0 ? _segments[^1] : null;
        if (last is null || last.Length + line.Length > SegmentBytes && last.Length > 0)
        {
            last = new Segment(new byte[Math.Max(FirstSegmentBytes, line.Length)], time, sizeAtStart);
            _segments.Add(last);
        }
        if (last.Length + line.Length > last.Data.Length)
        {
            // Grown by a new array: a snapshot holding the old one (and its length) still reads what it saw.
            var grown = new byte[Math.Max(last.Length + line.Length, Math.Min(SegmentBytes, last.Data.Length * 2))];
            last.Data.AsSpan(0, last.Length).CopyTo(grown);
            last.Data = grown;
        }
        line.CopyTo(last.Data.AsSpan(last.Length));
        last.Length += line.Length;
        _held += line.Length;
        while (_held > _capacity && _segments.Count > 1)
        {
            _held -= _segments[0].Length;
            _segments.RemoveAt(0);
            _dropped = true;
        }
    }

    /// <summary>The recording as of now: the header (with the size in effect at the first kept event), the dropped
    /// marker when older events are gone, and the kept lines.</summary>
    internal IReadOnlyList<ReadOnlyMemory<byte>> Snapshot()
    {
        var parts = new List<ReadOnlyMemory<byte>>(_segments.Count + 2);
        var first = _segments.Count > 0 ? _segments[0] : null;
        var size = first?.SizeAtStart ?? _size;
        var header = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(header, WriterOptions))
        {
            writer.WriteStartObject();
            writer.WriteNumber("version"u8, 2);
            writer.WriteNumber("width"u8, size.Cols);
            writer.WriteNumber("height"u8, size.Rows);
            writer.WriteNumber("timestamp"u8, _startUnixSeconds);
            writer.WriteStartObject("env"u8);
            writer.WriteString("TERM"u8, _term);
            writer.WriteString("SHELL"u8, _shell);
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        header.Write("\n"u8);
        parts.Add(header.WrittenMemory);
        if (_dropped && first is not null)
        {
            var marker = new ArrayBufferWriter<byte>(128);
            WriteLine(marker, first.FirstTime, "o"u8, Encoding.UTF8.GetString(DroppedText));
            parts.Add(marker.WrittenMemory);
        }
        foreach (var segment in _segments)
        {
            parts.Add(segment.Data.AsMemory(0, segment.Length));
        }
        return parts;
    }
}

/// <summary><c>J recording</c>: the snapshot in <c>o</c> frames within credit, then <c>f {job}</c>; <c>K</c> cancels.</summary>
internal sealed class RecordingChannel : Channel
{
    private readonly Job _job;
    private readonly IReadOnlyList<ReadOnlyMemory<byte>> _parts;
    private int _part;
    private int _offset;

    internal RecordingChannel(Connection connection, uint id, Job job, IReadOnlyList<ReadOnlyMemory<byte>> parts)
        : base(connection, id)
    {
        _job = job;
        _parts = parts;
        Pump();
    }

    private void Pump()
    {
        while (!Ended && _part < _parts.Count)
        {
            var rest = _parts[_part].Span[_offset..];
            var sent = SendData(FrameType.Stdout, rest);
            _offset += sent;
            if (_offset == _parts[_part].Length)
            {
                _part++;
                _offset = 0;
            }
            else if (sent < rest.Length)
            {
                return; // no credit: more when it comes
            }
        }
        End(FrameType.Result, new JobResult { Job = _job.Info() }, ProtocolJsonContext.Default.JobResult);
    }

    protected override void OnCreditAdded() => Pump();

    internal override void OnKill(int signal) => EndWithError(ErrorCodes.Invalid, "recording transfer cancelled");

    internal override void OnConnectionLost() => Abandon();
}

internal sealed unsafe partial class Supervisor
{
    /// <summary>
    /// A terminal job: the command (or the bundle's bash as an interactive login shell) on a new pseudo-terminal whose
    /// slave is its stdin, stdout, stderr and controlling terminal (set in its new session before the ids drop), with
    /// TERM, the session's cwd and environment. Output (one stream) goes to the ring and the recording; input comes
    /// from attach channels and stdin ops through a copy of the master.
    /// </summary>
    private Command StartTerminal(RunPlan plan, byte[] script, Job job)
    {
        var cwd = Session.CurrentCwd();
        if (plan.Cwd is { } relative)
        {
            cwd = Session.CombinePath(cwd, relative);
        }
        var env = Session.Env.Copy();
        foreach (var (name, value) in plan.Env)
        {
            env[name] = value;
        }
        env["TERM"] = Encoding.ASCII.GetBytes(plan.Term);
        if (!plan.LoginShell)
        {
            // As for any cold command; an interactive shell reads no BASH_ENV.
            if (env.TryGetValue("BASH_ENV", out var userBashEnv))
            {
                env["__SBK_BASH_ENV"] = userBashEnv;
            }
            env["BASH_ENV"] = Encoding.UTF8.GetBytes(Session.CombinePath(_bundleDir, "lib/prelude-nostate.sh"));
        }
        var master = -1;
        var slave = -1;
        var input = -1;
        var scriptFd = -1;
        Terminal? terminal = null;
        try
        {
            (master, slave) = Terminal.Open(_options.Uid, _options.Gid, Native.GetEuid() != _options.Uid, plan.Pty!);
            input = SysException.Check(Native.DupAbove(master, 3), "dup the terminal");
            terminal = Terminal.Create(master, plan.Pty!, new Recording(plan.RecordingBytes, job.StartNs, job.StartedAtMs, plan.Pty!, plan.Term, BashPath));
            SpawnSpec spec;
            if (plan.LoginShell)
            {
                spec = new SpawnSpec { Path = BashPath, Argv = [Spawner.Arg("bash"), Spawner.Arg("-l"), Spawner.Arg("-i")], Env = EnvSnapshot.ToEntries(env), Cwd = cwd };
            }
            else
            {
                if (script.Length >= InlineScriptMax || script.AsSpan().IndexOf((byte)0) >= 0)
                {
                    fixed (byte* name = "sandboxkit-script\0"u8)
                    {
                        scriptFd = SysException.Check(Native.MemFd(name), "memfd_create");
                    }
                    var written = Native.WriteAll(scriptFd, script);
                    if (written < 0)
                    {
                        throw new SysException(-written, "script memfd");
                    }
                }
                spec = ShellSpec(script, env, cwd, scriptFd);
            }
            spec.Fds.Add((slave, 0));
            spec.Fds.Add((slave, 1));
            spec.Fds.Add((slave, 2));
            spec.ControllingTty = 0;
            var command = new Command(this, plan.Display, persist: false, state: null, plan.TimeoutMs, warm: false)
            {
                OomBefore = ReadOomKills(),
                Job = job,
            };
            command.StartNs = EventLoop.NowNs;
            var outcome = Spawner.Spawn(spec, command);
            Native.CloseQuietly(ref slave); // the job has it (or failed): while we hold it the master never reports EIO
            Native.CloseQuietly(ref scriptFd);
            if (!outcome.Started)
            {
                throw outcome.Step == SpawnOutcome.StepChdir
                    ? new RequestException(outcome.Error == Errno.ENOENT ? ErrorCodes.NotFound : Errno.ToCode(outcome.Error), $"cwd {cwd}: {Errno.Describe(outcome.Error)}")
                    : new RequestException(ErrorCodes.Internal, $"cannot start the terminal: {outcome.Describe()}");
            }
            command.Pid = outcome.Pid;
            command.Stdout = new OutputPipe(Loop, master, FrameType.Stdout, command) { EndsWhenEmpty = true };
            command.Stdin = new StdinPipe(Loop, input);
            job.Terminal = terminal;
            master = input = -1;
            terminal = null;
            return command;
        }
        catch (SysException e)
        {
            throw new RequestException(ErrorCodes.Internal, $"cannot open a terminal: {e.Message}");
        }
        finally
        {
            Native.CloseQuietly(ref slave);
            Native.CloseQuietly(ref scriptFd);
            Native.CloseQuietly(ref input);
            Native.CloseQuietly(ref master);
            terminal?.Finished();
        }
    }
}
