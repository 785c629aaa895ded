using System.Diagnostics;
using System.Text;
using System.Text.Json;
using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>An attach channel of a terminal with its output so far (the test types and waits for the screen).</summary>
public sealed class TerminalSession(AgentClient client, uint channel)
{
    private readonly StringBuilder _output = new();

    public uint Channel { get; } = channel;

    public string Output => _output.ToString();

    public ExitEvent? Exit { get; private set; }

    public void Type(string keys) => client.SendData(Channel, Encoding.UTF8.GetBytes(keys));

    /// <summary>Reads output until it contains <paramref name="text"/> after position <paramref name="from"/>.</summary>
    public int WaitFor(string text, int from = 0, double seconds = 20)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var at = Output.IndexOf(text, from, StringComparison.Ordinal);
            if (at >= 0)
            {
                return at + text.Length;
            }
            var left = TimeSpan.FromSeconds(seconds) - clock.Elapsed;
            if (left <= TimeSpan.Zero || Exit is not null)
            {
                throw new AssertionException($"no '{Escape(text)}' in the terminal output: '{Escape(Output)}'");
            }
            if (!client.TryNext(Channel, left, out var frame))
            {
                continue;
            }
            if (frame.Type == FrameType.Stdout)
            {
                _output.Append(Encoding.UTF8.GetString(frame.Payload.Span));
            }
            else if (frame.Type == FrameType.Exited)
            {
                Exit = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.ExitEvent);
            }
        }
    }

    /// <summary>Types a line into the shell and waits for a marker it prints, returning what came before it.</summary>
    public string Command(string line, string marker)
    {
        var from = Output.Length;
        Type($"{line}; echo {marker.Insert(1, "''")}\r");
        // The marker is typed with quotes inside, so only the command's own output matches it.
        var end = WaitFor(marker, from);
        return Output[from..(end - marker.Length)];
    }

    /// <summary>Reads until the job exits (the attach's x).</summary>
    public ExitEvent WaitExit(double seconds = 20)
    {
        var clock = Stopwatch.StartNew();
        while (Exit is null)
        {
            var left = TimeSpan.FromSeconds(seconds) - clock.Elapsed;
            if (left <= TimeSpan.Zero)
            {
                throw new AssertionException($"the terminal did not exit: '{Escape(Output)}'");
            }
            if (client.TryNext(Channel, left, out var frame))
            {
                if (frame.Type == FrameType.Stdout)
                {
                    _output.Append(Encoding.UTF8.GetString(frame.Payload.Span));
                }
                else if (frame.Type == FrameType.Exited)
                {
                    Exit = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.ExitEvent);
                }
            }
        }
        return Exit;
    }

    public static string Escape(string text) => text.Replace("\u001b", "\\e", StringComparison.Ordinal).Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
}

/// <summary>Terminals: jobs on a pseudo-terminal, their input, window size and asciicast recording.</summary>
public sealed class TerminalTests : AgentTest
{
    internal static JobInfo StartTerminal(AgentClient client, string id, string? command = null, int cols = 80, int rows = 24, int? recordingBytes = null)
    {
        var started = client.Run(new RunRequest
        {
            Command = command,
            Detach = true,
            JobId = id,
            Pty = new TerminalSize { Cols = cols, Rows = rows },
            RecordingBytes = recordingBytes,
        });
        Assert.That(started.Error, Is.Null, started.ToString());
        Assert.That(started.Job!.Job!.Pty, Is.EqualTo(new TerminalSize { Cols = cols, Rows = rows }));
        return started.Job.Job;
    }

    internal static TerminalSession Attach(AgentClient client, string id, long since = 0) =>
        new(client, client.StartJob(new JobRequest { Op = "attach", Id = id, Since = since }));

    private List<JsonElement> Recording(string id, out JsonElement header)
    {
        var result = A.Job(new JobRequest { Op = "recording", Id = id });
        Assert.That(result.Error, Is.Null, result.ToString());
        var lines = Encoding.UTF8.GetString(result.Stdout).Split('\n');
        Assert.That(lines[^1], Is.Empty, "the recording ends with a newline");
        header = JsonDocument.Parse(lines[0]).RootElement.Clone();
        var events = lines[1..^1].Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
        var previous = 0.0;
        foreach (var e in events)
        {
            Assert.That(e.GetArrayLength(), Is.EqualTo(3));
            var t = e[0].GetDouble();
            Assert.That(t, Is.GreaterThanOrEqualTo(previous), "times never decrease");
            previous = t;
            Assert.That(e[1].GetString(), Is.AnyOf("o", "r"));
        }
        return events;
    }

    private static string Printed(IEnumerable<JsonElement> events) => string.Concat(events.Where(e => e[1].GetString() == "o").Select(e => e[2].GetString()));

    [Test]
    public void AShellOnATerminalHasItsSizeTermControllingTerminalAndOwnSlave()
    {
        var job = StartTerminal(A, "t1");
        var shell = Attach(A, "t1");
        Assert.That(shell.Command("stty size", "SIZE1"), Does.Contain("24 80"));
        Assert.That(shell.Command("echo \"$TERM $(id -u) $(ps -o tty= -p $$)\"", "TERM1"), Does.Contain("xterm-256color 1000 pts/"));
        Assert.That(shell.Command("stat -c '%u %a' \"$(tty)\"", "OWNER1"), Does.Contain("1000 620"));
        var resized = A.Job(new JobRequest { Op = "resize", Id = "t1", Size = new TerminalSize { Cols = 100, Rows = 40 } });
        Assert.That(resized.Job?.Job?.Pty, Is.EqualTo(new TerminalSize { Cols = 100, Rows = 40 }), resized.ToString());
        Assert.That(shell.Command("stty size", "SIZE2"), Does.Contain("40 100"));
        // The shell's process group is the terminal's foreground group, and job control works.
        Assert.That(shell.Command("sleep 100 & jobs", "JOBS"), Does.Contain("sleep 100"));
        Assert.That(A.Job(new JobRequest { Op = "get", Id = "t1" }).Job!.Job!.Pid, Is.EqualTo(job.Pid));
        shell.Type("exit\r");
        Assert.That(shell.WaitExit().ExitCode, Is.Zero);
        Assert.That(A.Job(new JobRequest { Op = "resize", Id = "t1", Size = new TerminalSize { Cols = 10, Rows = 10 } }).Error?.Code, Is.EqualTo(ErrorCodes.Conflict));
    }

    [Test]
    public void APythonReplColoursAndVimWork()
    {
        StartTerminal(A, "py", "python3 -q");
        var repl = Attach(A, "py");
        var prompt = repl.WaitFor(">>> ");
        repl.Type("print(6*7)\r");
        repl.WaitFor("42\r\n", prompt);
        repl.Type("exit()\r");
        Assert.That(repl.WaitExit().ExitCode, Is.Zero);

        StartTerminal(A, "colour", "printf '\\033[31mred\\033[0m plain\\n'");
        var colour = Attach(A, "colour");
        colour.WaitExit();
        Assert.That(colour.Output, Does.Contain("\u001b[31mred\u001b[0m plain\r\n"));

        StartTerminal(A, "vim", "vim -u NONE -N /tmp/from-vim.txt");
        var vim = Attach(A, "vim");
        vim.WaitFor("\u001b[?1049h"); // the alternate screen: vim drew itself
        vim.Type("ihello from vim\u001b");
        vim.Type(":wq\r");
        Assert.That(vim.WaitExit().ExitCode, Is.Zero);
        Assert.That(A.Run("cat /tmp/from-vim.txt").Out, Is.EqualTo("hello from vim\n"));
    }

    [Test]
    public void AttachSinceAnOffsetReplaysWhatWasMissedAndInputFollowsCredit()
    {
        StartTerminal(A, "ticks", "echo first; read -r line; echo \"got $line\"; sleep 100");
        var first = Attach(A, "ticks");
        first.WaitFor("first\r\n");
        A.Send(FrameType.Kill, first.Channel); // detach
        var detached = A.Collect(first.Channel);
        Assert.That(detached.Job!.Job!.Status, Is.EqualTo("running"));
        var offset = detached.Job.Next!.Value;
        Assert.That(offset, Is.EqualTo("first\r\n".Length));
        Assert.That(A.Job(new JobRequest { Op = "stdin", Id = "ticks", Data = Convert.ToBase64String("typed\r"u8.ToArray()) }).Error, Is.Null);
        var later = Attach(A, "ticks", since: offset);
        later.WaitFor("got typed\r\n");
        Assert.That(later.Output, Does.StartWith("typed\r\n"), "the replay starts at the offset (the echo of the typed line)");
        var replay = A.Job(new JobRequest { Op = "read", Id = "ticks", Since = 0 });
        Assert.That(replay.Out, Does.StartWith("first\r\ntyped\r\ngot typed\r\n"));
        Assert.That(A.Job(new JobRequest { Op = "stdin", Id = "ticks", Data = "", Close = true }).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));

        // A paste larger than the window goes in as the terminal takes it (raw mode: no line limit). (The new
        // connection replaces A's.)
        var client = Track(Box.Connect(window: 16 * 1024));
        StartTerminal(client, "paste", "stty raw -echo && echo ready && head -c 300000 > /tmp/paste && echo pasted");
        var paste = Attach(client, "paste");
        paste.WaitFor("ready"); // typed before stty, it would meet the canonical mode's line limit
        client.SendData(paste.Channel, Encoding.ASCII.GetBytes(new string('p', 300_000)), chunk: 8192);
        paste.WaitFor("pasted");
        Assert.That(client.Run("wc -c < /tmp/paste").Out.Trim(), Is.EqualTo("300000"));
    }

    [Test]
    public void TheRecordingIsAsciicastWithTypedAndPrintedTextResizesAndWholeCharacters()
    {
        StartTerminal(A, "rec");
        var shell = Attach(A, "rec");
        shell.Command("echo hello-there", "DONE1");
        Assert.That(A.Job(new JobRequest { Op = "resize", Id = "rec", Size = new TerminalSize { Cols = 120, Rows = 30 } }).Error, Is.Null);
        // A euro sign split across two writes, and an invalid byte.
        shell.Command("printf '\\342\\202'; sleep 0.3; printf '\\254 \\377\\n'", "DONE2");
        var events = Recording("rec", out var header);
        Assert.Multiple(() =>
        {
            Assert.That(header.GetProperty("version").GetInt32(), Is.EqualTo(2));
            Assert.That((header.GetProperty("width").GetInt32(), header.GetProperty("height").GetInt32()), Is.EqualTo((80, 24)));
            Assert.That(header.GetProperty("timestamp").GetInt64(), Is.EqualTo(DateTimeOffset.UtcNow.ToUnixTimeSeconds()).Within(600));
            Assert.That(header.GetProperty("env").GetProperty("TERM").GetString(), Is.EqualTo("xterm-256color"));
            Assert.That(header.GetProperty("env").GetProperty("SHELL").GetString(), Is.EqualTo("/.sandboxkit/bin/bash"));
            var printed = Printed(events);
            Assert.That(printed, Does.Contain("echo hello-there"), "the typed command (echoed)");
            Assert.That(printed, Does.Contain("hello-there\r\n"), "its output");
            Assert.That(printed, Does.Contain("€ \ufffd\r\n"));
            Assert.That(events.Where(e => e[1].GetString() == "r").Select(e => e[2].GetString()), Is.EqualTo(new[] { "120x30" }));
        });

        // A recording over its budget keeps its newest part, after a marker at the time of the first kept event.
        StartTerminal(A, "big", "seq 1 100000", recordingBytes: 64 * 1024);
        Attach(A, "big").WaitExit();
        var kept = Recording("big", out var bigHeader);
        var bytes = A.Job(new JobRequest { Op = "recording", Id = "big" }).Stdout.Length;
        Assert.That(bytes, Is.LessThanOrEqualTo(64 * 1024 + 1024));
        Assert.That(kept[0][2].GetString(), Is.EqualTo("\r\n[... earlier output dropped by SandboxKit ...]\r\n"));
        Assert.That(kept[0][0].GetDouble(), Is.EqualTo(kept[1][0].GetDouble()));
        Assert.That(Printed(kept), Does.EndWith("99999\r\n100000\r\n"));
        Assert.That(bigHeader.GetProperty("width").GetInt32(), Is.EqualTo(80));
    }

    [Test]
    public void ClosingATerminalKillsItsTreeAndTwoTerminalsRunAtOnce()
    {
        var one = StartTerminal(A, "one");
        var two = StartTerminal(A, "two");
        var first = Attach(A, "one");
        var second = Attach(A, "two");
        var ttyOne = first.Command("tty", "TTY1").Trim();
        var ttyTwo = second.Command("tty", "TTY2").Trim();
        Assert.That(ttyOne, Does.Contain("/dev/pts/"));
        Assert.That(ttyTwo, Does.Contain("/dev/pts/"));
        Assert.That(ttyOne.Split('\n').Last(), Is.Not.EqualTo(ttyTwo.Split('\n').Last()));
        first.Command("sleep 1000 & disown; (trap '' HUP; exec sleep 1001) & true", "BG");
        Assert.That(Sandbox.WaitUntil(() => Box.SessionMembers(one.Pid).Count >= 3, 10), Is.True);
        Assert.That(A.Job(new JobRequest { Op = "signal", Id = "one", Signal = 1 }).Error, Is.Null);
        // SIGHUP ends the shell; what ignores it is left over, and the SIGKILL after it still reaches it.
        first.WaitExit();
        Assert.That(Box.SessionMembers(one.Pid), Is.Not.Empty, "a member that ignores SIGHUP is left");
        Assert.That(A.Job(new JobRequest { Op = "signal", Id = "one", Signal = 9 }).Error, Is.Null);
        Assert.That(Sandbox.WaitUntil(() => Box.SessionMembers(one.Pid).Count == 0, 10), Is.True, "the terminal's tree is gone");
        Assert.That(second.Command("echo still-here", "ALIVE"), Does.Contain("still-here"));
        Assert.That(Box.Alive(two.Pid), Is.True);
    }

    [Test]
    public void BadTerminalRequestsAreInvalid()
    {
        StartTerminal(A, "ok", "sleep 100");
        A.Run(new RunRequest { Command = "sleep 100", Detach = true, JobId = "plain" });
        foreach (var request in new[]
        {
            new RunRequest { Command = "true", Pty = new TerminalSize { Cols = 80, Rows = 24 } },
            new RunRequest { Detach = true, JobId = "z", Pty = new TerminalSize { Cols = 0, Rows = 24 } },
            new RunRequest { Detach = true, JobId = "z", Pty = new TerminalSize { Cols = 80, Rows = 1001 } },
            new RunRequest { Detach = true, JobId = "z", Pty = new TerminalSize { Cols = 80, Rows = 24 }, Term = "bad term" },
            new RunRequest { Detach = true, JobId = "z", Pty = new TerminalSize { Cols = 80, Rows = 24 }, RecordingBytes = 10 },
            new RunRequest { Detach = true, JobId = "z", Command = "true", Term = "xterm" },
        })
        {
            Assert.That(A.Run(request).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
        }
        Assert.That(A.Job(new JobRequest { Op = "resize", Id = "plain", Size = new TerminalSize { Cols = 80, Rows = 24 } }).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
        Assert.That(A.Job(new JobRequest { Op = "recording", Id = "plain" }).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
        Assert.That(A.Job(new JobRequest { Op = "resize", Id = "ok" }).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
        Assert.That(A.Job(new JobRequest { Op = "get", Id = "plain" }).Job!.Job!.Pty, Is.Null);
    }
}
