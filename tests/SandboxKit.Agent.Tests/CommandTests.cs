using System.Diagnostics;
using System.Text;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests;

/// <summary>Framing basics (test_agent.py FramingTests, protocol 2 rules).</summary>
public sealed class FramingTests : AgentTest
{
    [Test]
    public void HelloAndPing()
    {
        var hello = A.Hello!;
        Assert.Multiple(() =>
        {
            Assert.That(hello.Protocol, Is.EqualTo(2));
            Assert.That(hello.Pid, Is.EqualTo(1));
            Assert.That(hello.Uid, Is.EqualTo(1000));
            Assert.That(hello.Gid, Is.EqualTo(1000));
            Assert.That(hello.Build, Is.EqualTo(Infrastructure.Docker.Build));
            Assert.That(hello.Version, Is.EqualTo(Infrastructure.Docker.Version));
            Assert.That(hello.Connection, Is.EqualTo(1));
            Assert.That(hello.NextChannel, Is.EqualTo(1u));
            Assert.That(hello.BootId, Has.Length.EqualTo(16));
            Assert.That(hello.Capabilities.Bash.Path, Is.EqualTo("/.sandboxkit/bin/bash"));
        });
        A.Ping([0, 0xff, .. "binary ping"u8.ToArray()]);
        A.Ping([]);
    }

    [Test]
    public void BadFieldsGetInvalidAndTheSupervisorKeepsWorking()
    {
        var cases = new (byte Type, string Json)[]
        {
            (FrameType.Run, "{}"),
            (FrameType.Run, """{"command": "true", "stdin": "tty"}"""),
            (FrameType.Run, """{"code": "1", "language": "cobol"}"""),
            (FrameType.Run, """{"command": "true", "code": "1"}"""),
            (FrameType.Run, """{"command": 5}"""),
            (FrameType.Run, """{"command": "true", "timeoutMs": -1}"""),
            (FrameType.ReadFile, """{"path": 5}"""),
            (FrameType.ReadFile, """{"path": ""}"""),
            (FrameType.Run, """{"command": "true", "env": {"A": 1}}"""),
            (FrameType.Run, """{"command": "true", "env": {"A=B": "1"}}"""),
            (FrameType.Run, """{"command": "true", "detach": true, "jobId": "bad id"}"""),
            (FrameType.Job, """{"op": "explode", "id": "x"}"""),
        };
        foreach (var (type, json) in cases)
        {
            var channel = A.NewChannel();
            A.SendText(type, channel, json);
            var result = A.Collect(channel);
            Assert.That(result.Error?.Code, Is.EqualTo(ErrorCodes.Invalid), $"{(char)type} {json}");
        }
        AssertRan(A.Run("echo still alive"));
    }

    [Test]
    public void LateFramesForEndedChannelsAreIgnored()
    {
        var done = A.Run("true");
        AssertRan(done);
        foreach (var type in new[] { FrameType.Data, FrameType.Close, FrameType.Kill })
        {
            A.Send(type, done.Channel, "{}"u8);
        }
        A.SendJson(FrameType.Credit, done.Channel, new CreditGrant { Bytes = 10 });
        AssertRan(A.Run("echo still alive"));
        Assert.That(A.Pending(done.Channel), Is.Zero);
    }

    [Test]
    public void OutputThatLooksLikeFramesOrMarkers()
    {
        var fake = new byte[9 + 14 + 13];
        FrameEncoder.WriteHeader(fake, (byte)'x', 1, 14);
        "{\"exitCode\":0}"u8.CopyTo(fake.AsSpan(9));
        new byte[] { 0xff, 0xff, 0xff, 0xff }.CopyTo(fake, 23);
        "__DONE__\n"u8.CopyTo(fake.AsSpan(27));
        var script = "printf '" + string.Concat(fake.Select(b => $"\\{Convert.ToString(b, 8).PadLeft(3, '0')}")) + "'; printf '__EXIT__ 0\\n' >&2";
        var result = A.Run(script);
        AssertRan(result);
        Assert.That(result.Stdout, Is.EqualTo(fake));
        Assert.That(result.Err, Is.EqualTo("__EXIT__ 0\n"));
        A.Ping();
    }
}

/// <summary>test_agent.py CommandTests.</summary>
public sealed class CommandTests : AgentTest
{
    [Test]
    public void Echo()
    {
        var result = A.Run("echo hello");
        AssertRan(result);
        Assert.Multiple(() =>
        {
            Assert.That(result.Out, Is.EqualTo("hello\n"));
            Assert.That(result.Err, Is.Empty);
            Assert.That(result.Pid, Is.Positive);
            Assert.That(result.Types, Is.EqualTo("sox"));
            Assert.That(result.Exit!.Signal, Is.Null);
            Assert.That(result.Exit.TimedOut, Is.False);
            Assert.That(result.Exit.OomKilled, Is.False);
            Assert.That(result.Exit.Cwd, Is.EqualTo(Workdir));
            Assert.That(result.Exit.DurationMs, Is.Positive);
            Assert.That(result.Exit.StdoutBytes, Is.EqualTo(6));
            Assert.That(result.Exit.StderrBytes, Is.Zero);
        });
    }

    [Test]
    public void SeparateStdoutStderr()
    {
        var result = A.Run("echo out1; echo err1 >&2; echo out2; echo err2 >&2");
        Assert.That((result.Out, result.Err), Is.EqualTo(("out1\nout2\n", "err1\nerr2\n")));
    }

    [Test]
    public void MergeStderr()
    {
        var result = A.Run(new RunRequest { Command = "echo a; echo b >&2; echo c", MergeStderr = true });
        Assert.That((result.Out, result.Err), Is.EqualTo(("a\nb\nc\n", "")));
    }

    [Test]
    public void ExitCodes()
    {
        AssertRan(A.Run("exit 3"), 3);
        AssertRan(A.Run("false"), 1);
        AssertRan(A.Run("set -e; false; echo unreachable"), 1);
        var killed = A.Run("kill -9 $$");
        Assert.That((killed.Code, killed.Exit!.Signal), Is.EqualTo((137, (int?)9)));
        var terminated = A.Run("kill -TERM $$");
        Assert.That((terminated.Code, terminated.Exit!.Signal), Is.EqualTo((143, (int?)15)));
    }

    [Test]
    public void SyntaxErrorExit2()
    {
        var result = A.Run("echo a; if then");
        AssertRan(result, 2);
        Assert.That(result.Err, Does.Contain("syntax error").And.Contain("line 1").And.Not.Contain("trap"));
        result = A.Run("echo a\nfi");
        AssertRan(result, 2);
        Assert.That(result.Out, Is.EqualTo("a\n"));
        Assert.That(result.Err, Does.Contain("line 2"));
    }

    [Test]
    public void BinaryOutputRoundTrip()
    {
        var result = A.Run(@"printf 'a\0b\377\376\n'; printf '\0\377\200' >&2");
        Assert.That(result.Stdout, Is.EqualTo(new byte[] { (byte)'a', 0, (byte)'b', 0xff, 0xfe, (byte)'\n' }));
        Assert.That(result.Stderr, Is.EqualTo(new byte[] { 0, 0xff, 0x80 }));
    }

    [Test]
    public void LargeOutputStreamsFully()
    {
        var result = A.Run("python3 -c \"import sys; sys.stdout.buffer.write(bytes(range(256)) * 19532 + b'end')\"");
        AssertRan(result);
        var expected = Enumerable.Repeat(Enumerable.Range(0, 256).Select(i => (byte)i), 19532).SelectMany(x => x).Concat("end"u8.ToArray()).ToArray();
        Assert.That(result.Stdout, Is.EqualTo(expected));
        Assert.That(result.Stdout, Has.Length.GreaterThan(5_000_000));
        Assert.That(result.Frames.Where(f => f.Type == FrameType.Stdout).Max(f => f.Payload.Length), Is.LessThanOrEqualTo(64 * 1024));
        Assert.That(result.Exit!.StdoutBytes, Is.EqualTo(expected.Length));
    }

    [Test]
    public void HeredocWithNestedQuotes()
    {
        var script = "cat <<'EOF'\nHe said \"it's\" `not` $HOME \\n 'q'\nEOF\ncat <<EOF\nx=\"$((1 + 2))\" 'single' \"double\"\nEOF\n";
        var result = A.Run(script);
        AssertRan(result);
        Assert.That(result.Out, Is.EqualTo("He said \"it's\" `not` $HOME \\n 'q'\nx=\"3\" 'single' \"double\"\n"));
    }

    [Test]
    public void Ps1ChangeIsHarmless()
    {
        var result = A.Run("export PS1='__DONE__ $ '; PS2='> '; echo \"[$PS1]\"");
        Assert.That(result.Out, Is.EqualTo("[__DONE__ $ ]\n"));
        Assert.That(A.Run("echo next").Out, Is.EqualTo("next\n"));
    }

    [Test]
    public void ExecReplacesShell()
    {
        AssertRan(A.Run("mkdir sub && cd sub"));
        var result = A.Run("cd /; export EXECED=1; exec echo hi");
        AssertRan(result);
        Assert.That(result.Out, Is.EqualTo("hi\n"));
        // exec replaced the shell before its EXIT trap: the state is unchanged
        Assert.That(A.Run("pwd; echo ${EXECED-unset}").Out, Is.EqualTo($"{Workdir}/sub\nunset\n"));
    }

    [Test]
    public void HugeScriptRunsFromMemfd()
    {
        var script = "x=1\n# " + new string('a', 300_000) + "\necho done $x; export AFTER_HUGE=1\n";
        var result = A.Run(script);
        AssertRan(result);
        Assert.That(result.Out, Is.EqualTo("done 1\n"));
        Assert.That(A.Run("echo $AFTER_HUGE").Out, Is.EqualTo("1\n"));
    }

    [Test]
    public void NoSupervisorFdsLeakIntoCommands()
    {
        foreach (var script in new[] { "ls /proc/$$/fd", "cat /dev/null; ls /proc/$$/fd" })
        {
            var result = A.Run(script); // the shell's fds, listed by a child
            var fds = result.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).Order().ToList();
            Assert.That(fds.Take(3), Is.EqualTo(new[] { 0, 1, 2 }), result.Out);
            Assert.That(fds.Skip(3), Is.All.GreaterThanOrEqualTo(100), result.Out); // only the state pipe
            Assert.That(fds, Has.Count.LessThanOrEqualTo(4), result.Out);
        }
        // A cold command (per-command env) sees the same.
        var cold = A.Run(new RunRequest { Command = "ls /proc/$$/fd", Env = new Dictionary<string, string> { ["X"] = "1" } });
        Assert.That(cold.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).Order(), Is.EqualTo(new[] { 0, 1, 2, 100 }));
    }

    [Test]
    public void OomScoreAdjRaisedForCommands() => Assert.That(A.Run("cat /proc/self/oom_score_adj").Out, Is.EqualTo("1000\n"));

    [Test]
    public void ConcurrentCommands()
    {
        var clock = Stopwatch.StartNew();
        var channels = Enumerable.Range(0, 4)
            .Select(i => A.Start(new RunRequest { Command = "sleep 1; echo $N; echo e$N >&2", Env = new Dictionary<string, string> { ["N"] = i.ToString() } }))
            .ToList();
        var results = channels.Select(c => A.Collect(c)).ToList();
        for (var i = 0; i < 4; i++)
        {
            AssertRan(results[i]);
            Assert.That((results[i].Out, results[i].Err), Is.EqualTo(($"{i}\n", $"e{i}\n")));
        }
        Assert.That(clock.Elapsed.TotalSeconds, Is.LessThan(3.5), "commands did not run concurrently");
    }
}

/// <summary>test_agent.py StdinTests.</summary>
public sealed class StdinTests : AgentTest
{
    [Test]
    public void ClosedStdinReadsEof()
    {
        var result = A.Run("cat; echo cat=$?; read -r line; echo read=$?", timeoutMs: 10_000);
        Assert.That(result.Out, Is.EqualTo("cat=0\nread=1\n"));
        Assert.That(result.Exit!.TimedOut, Is.False);
    }

    [Test]
    public void StdinText()
    {
        var result = A.Run(new RunRequest { Command = "cat", StdinText = "héllo\nwörld\n" });
        Assert.That(result.Out, Is.EqualTo("héllo\nwörld\n"));
    }

    [Test]
    public void StdinPipeFrames()
    {
        var channel = A.Start(new RunRequest { Command = "cat; echo END", Stdin = "pipe", StdinText = "first-" });
        A.Send(FrameType.Data, channel, "abc"u8);
        A.Send(FrameType.Data, channel, new byte[] { 0, 0xff });
        A.Send(FrameType.Close, channel);
        var result = A.Collect(channel);
        byte[] expected = [.. "first-abc"u8, 0, 0xff, .. "END\n"u8];
        Assert.That(result.Stdout, Is.EqualTo(expected));
    }

    [Test]
    public void StdinPipeLargeInput()
    {
        var channel = A.Start(new RunRequest { Command = "wc -c", Stdin = "pipe" });
        A.SendData(channel, new byte[32 * 65536]);
        A.Send(FrameType.Close, channel);
        Assert.That(A.Collect(channel).Out.Trim(), Is.EqualTo((32 * 65536).ToString()));
    }

    [Test]
    public void StdinPipeCommandThatIgnoresInput()
    {
        var channel = A.Start(new RunRequest { Command = "exec 0<&-; sleep 0.3; echo done", Stdin = "pipe" });
        A.SendData(channel, Encoding.ASCII.GetBytes(new string('y', 8 * 65536)));
        var result = A.Collect(channel);
        AssertRan(result);
        Assert.That(result.Out, Is.EqualTo("done\n"));
        A.Send(FrameType.Close, channel); // late close for a finished channel: ignored
        A.Ping();
    }
}
