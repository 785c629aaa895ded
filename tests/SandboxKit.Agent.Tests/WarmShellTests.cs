using System.Diagnostics;
using System.Text;
using System.Text.Json;
using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>test_agent.py WarmShellTests: the pre-spawned shell, used once, for the state it was spawned with, like <c>bash -c</c>.</summary>
public abstract class WarmShellTestsBase : AgentTest
{
    protected AgentClient ColdClient()
    {
        var (_, client) = Another(Options with { Warm = 0 });
        return client;
    }

    [Test]
    public void WarmShellIsUsedOnceAndReplaced()
    {
        var w1 = Box.WaitWarm();
        Assert.That(File.ReadAllText(Box.InContainer($"/proc/{w1}/oom_score_adj")), Is.EqualTo("1000\n")); // raised while idle
        var result = A.Run("echo $$; echo $BASHPID");
        AssertRan(result);
        Assert.That(result.Pid, Is.EqualTo(w1)); // s carries the real pid
        Assert.That(result.Started!.Warm, Is.True);
        Assert.That(result.Out, Is.EqualTo($"{w1}\n{w1}\n"));
        Assert.That(result.Exit!.DurationMs, Is.Positive);
        var w2 = Box.WaitWarm();
        Assert.That(w2, Is.Not.EqualTo(w1));
        Assert.That(Box.WaitDead(w1), Is.True);
        Assert.That(A.Run("echo again").Pid, Is.EqualTo(w2));
        Assert.That(Box.WaitWarm(), Is.Not.EqualTo(w2));
    }

    [Test]
    public void StateChangesReachTheNextWarmShell()
    {
        AssertRan(A.Run("mkdir sub; export GONE=1 KEEP=1"));
        var w = Box.WaitWarm();
        var result = A.Run("cd sub && export A='x y' && unset GONE && export -n KEEP && B=unexported");
        AssertRan(result);
        Assert.That(result.Pid, Is.EqualTo(w));
        w = Box.WaitWarm();
        result = A.Run("pwd; echo \"$A|${GONE-unset}|${KEEP-unset}|${B-unset}\"; cd -");
        Assert.That(result.Pid, Is.EqualTo(w)); // the warm shell was spawned with the new state
        Assert.That(result.Out, Is.EqualTo($"{Workdir}/sub\nx y|unset|unset|unset\n{Workdir}\n"));
        Box.WaitWarm();
        Assert.That(A.Run("pwd").Out, Is.EqualTo($"{Workdir}\n"));
        // a command that does not change the state keeps the idle warm shell for the next one
        w = Box.WaitWarm();
        AssertRan(A.Run(new RunRequest { Command = "cd /; export NOPE=1", PersistState = false }));
        Assert.That(Box.WaitWarm(), Is.EqualTo(w));
        result = A.Run("pwd; echo ${NOPE-unset}");
        Assert.That((result.Pid, result.Out), Is.EqualTo(((int?)w, $"{Workdir}\nunset\n")));
    }

    [Test]
    public void WarmShellForAReplacedDirectoryIsNotUsed()
    {
        AssertRan(A.Run("mkdir d && cd d && touch old"));
        var w = Box.WaitWarm();
        // same path, new directory: the idle shell sits in the deleted one
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = $"{Workdir}/d", Recursive = true }).Error, Is.Null);
        Assert.That(A.File(FrameType.MakeDirectory, new FileRequest { Path = $"{Workdir}/d" }).Error, Is.Null);
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = $"{Workdir}/d/new" }, []).File?.Size, Is.Zero);
        var result = A.Run("pwd; ls");
        Assert.That(result.Pid, Is.Not.EqualTo(w));
        Assert.That(result.Out, Is.EqualTo($"{Workdir}/d\nnew\n"));
        Assert.That(Box.WaitDead(w), Is.True); // replaced after that command
        w = Box.WaitWarm();
        Assert.That(A.Run("ls").Pid, Is.EqualTo(w));
    }

    [Test]
    public void RequestsTheWarmShellDoesNotFitRunCold()
    {
        AssertRan(A.Run("mkdir sub"));
        var w = Box.WaitWarm();
        var cold = new[]
        {
            new RunRequest { Command = "echo $X", Env = new Dictionary<string, string> { ["X"] = "1" } },
            new RunRequest { Command = "cat", StdinText = "in" },
            new RunRequest { Command = "echo m >&2", MergeStderr = true },
            new RunRequest { Command = "true", PersistState = false },
            new RunRequest { Command = "-x" },
            new RunRequest { Command = "printf 'a\u0001b'" },
            new RunRequest { Command = "echo " + new string('x', 200_000) },
        };
        foreach (var request in cold)
        {
            var result = A.Run(request);
            Assert.That(result.Error, Is.Null, request.Command![..Math.Min(20, request.Command!.Length)]);
            Assert.That(result.Pid, Is.Not.EqualTo(w));
            Assert.That(result.Started!.Warm, Is.False);
        }
        var channel = A.Start(new RunRequest { Command = "cat", Stdin = "pipe" });
        A.Send(FrameType.Close, channel);
        Assert.That(A.Collect(channel).Pid, Is.Not.EqualTo(w));
        Assert.That(Box.WaitWarm(), Is.EqualTo(w)); // none of them changed the state: still idle, still usable
        var code = A.Run(new RunRequest { Code = "import os; print(os.getpid() == os.getppid())", Language = "python" });
        Assert.That((code.Pid, code.Out), Is.EqualTo(((int?)w, "False\n"))); // code runs go warm too
        w = Box.WaitWarm();
        var sub = A.Run(new RunRequest { Command = "pwd", Cwd = "sub" });
        Assert.That((sub.Out, sub.Exit!.Cwd), Is.EqualTo(($"{Workdir}/sub\n", Workdir)));
        Assert.That(sub.Pid, Is.Not.EqualTo(w));
    }

    [Test]
    public void ConcurrentCommandsTakeTheWarmShellOnce()
    {
        var w = Box.WaitWarm();
        var clock = Stopwatch.StartNew();
        var channels = Enumerable.Range(0, 4).Select(_ => A.Start("sleep 1; echo $$")).ToList();
        var results = channels.Select(c => A.Collect(c)).ToList();
        Assert.That(clock.Elapsed.TotalSeconds, Is.LessThan(3.5), "commands did not run concurrently");
        foreach (var result in results)
        {
            AssertRan(result);
            Assert.That(result.Out, Is.EqualTo($"{result.Pid}\n"));
        }
        var pids = results.Select(r => r.Pid).ToList();
        Assert.That(pids.Distinct().Count(), Is.EqualTo(4));
        Assert.That(pids.Count(p => p == w), Is.EqualTo(1));
        var w2 = Box.WaitWarm(); // exactly one idle shell again, not one per finished command
        Thread.Sleep(200);
        Assert.That(Box.WarmShells(), Is.EqualTo(new[] { w2 }));
    }

    [Test]
    public void IdleWarmShellOutlivesTheConnectionAndSigtermEndsEverything()
    {
        var w = Box.WaitWarm();
        A.Dispose(); // an idle warm shell is not a running command
        Thread.Sleep(200);
        Assert.That(Box.Alive(w), Is.True);
        using (var next = Box.Connect())
        {
            Assert.That(next.Run("echo hi").Pid, Is.EqualTo(w));
            var background = next.Run("sleep 1000 & echo $!");
            var sleeper = int.Parse(background.Out.Trim());
            Box.WaitWarm();
            Infrastructure.Docker.Run("kill", "-s", "TERM", Box.Id);
            Assert.That(Infrastructure.Sandbox.WaitUntil(() => !Box.Running, 10), Is.True, "SIGTERM did not end the supervisor");
            Assert.That(Infrastructure.Docker.Run("inspect", "-f", "{{.State.ExitCode}}", Box.Id).Trimmed, Is.EqualTo("0"));
            _ = sleeper;
        }
    }

    [Test]
    public void WarmShellKilledWhileIdleFallsBackToCold()
    {
        var w = Box.WaitWarm();
        Box.Exec($"kill -9 {w}");
        Assert.That(Box.WaitDead(w), Is.True);
        var result = A.Run("echo fine");
        Assert.That(result.Out, Is.EqualTo("fine\n"));
        Assert.That(result.Pid, Is.Not.EqualTo(w));
        Assert.That(Box.WaitWarm(), Is.Not.EqualTo(w));
    }

    [Test]
    public void ClosedStdinReadsEofInWarmShell()
    {
        var w = Box.WaitWarm();
        var result = A.Run("cat; echo cat=$?; read -r line; echo read=$?; readlink /proc/$$/fd/0", timeoutMs: 10_000);
        Assert.That(result.Pid, Is.EqualTo(w));
        Assert.That(result.Out, Is.EqualTo("cat=0\nread=1\n/dev/null\n"));
        Assert.That(result.Exit!.TimedOut, Is.False);
    }

    [Test]
    public void SyntaxErrorExactStderrAndExitCode()
    {
        var cold = ColdClient();
        foreach (var (script, output, line, text) in new[] { ("echo a; if then", "", 1, "echo a; if then"), ("echo a\nfi\necho b", "a\n", 2, "fi") })
        {
            var w = Box.WaitWarm();
            var result = A.Run(script);
            Assert.That(result.Pid, Is.EqualTo(w));
            Assert.That((result.Code, result.Exit!.Signal, result.Out), Is.EqualTo((2, (int?)null, output)));
            var tail = $"line {line}: syntax error near unexpected token `{text.Split(' ')[^1]}'\n";
            Assert.That(result.Err, Is.EqualTo($"bash: eval: {tail}bash: eval: line {line}: `{text}'\n"));
            // the cold path's message differs only in the input name bash prints
            var reference = cold.Run(script);
            Assert.That((reference.Code, reference.Out), Is.EqualTo((2, output)));
            Assert.That(reference.Err.Replace("bash: -c: ", "bash: eval: ", StringComparison.Ordinal), Is.EqualTo(result.Err));
        }
        var eof = A.Run("echo $(( 1 +");
        Assert.That(eof.Code, Is.EqualTo(2));
        Assert.That(eof.Err, Does.Contain("line 1: unexpected EOF"));
    }

    [Test]
    public void WarmAndColdShellsBehaveAlike()
    {
        var cold = ColdClient();
        // The shell counts its own fds: a child of `ls /proc/$$/fd | wc -l` would race with the parent closing pipes.
        var scripts = new[]
        {
            "exit 3", "false", "set -e; false; echo unreachable", "kill -9 $$", "kill -TERM $$",
            "exec echo hi", "echo \"$0|$LINENO|$#|$-|$_\"\n\necho $LINENO",
            "f() { echo \"$LINENO ${FUNCNAME[*]}\"; caller; }\nf; caller; echo $?",
            "return 3; echo after",
            "cat <<'EOF'\nHe said \"it's\" `not` $HOME \\n 'q'\nEOF\ncat <<EOF\n$((1 + 2))\nEOF",
            "cat <<EOF\nunterminated", "echo ${BASH_SOURCE[*]-none} ${BASH_LINENO[*]-none}",
            "declare -p BASH_EXECUTION_STRING SECONDS", "compgen -v", "env | sort",
            "trap -p; trap 'echo bye $?' EXIT; exit 5", "trap 'echo usr1' USR1; kill -USR1 $$; echo after",
            "set -o posix; echo $POSIXLY_CORRECT", "shopt -s extglob\necho @(a|b)",
            "shopt -s expand_aliases; alias e=echo\ne hi", "echo é ü ✓ $'\\xff' | od -c | head -2",
            "fds=(/proc/$$/fd/*); echo ${#fds[@]}", "ulimit -n; umask; cat /proc/$$/oom_score_adj",
            "sleep 0.1 & wait $!; echo $?", "echo err >&2; echo out", "read -r x; echo $? \"$x\"",
            "(exit 7); echo $?", "exec 3>&1; echo via3 >&3", "printf '%s' \"$(echo sub)\"", "",
        };

        static (string, string, int, int?) Normalize(Result r)
        {
            // The containers differ in their host names only.
            var lines = r.Out.Split('\n').Where(l => !l.StartsWith("HOSTNAME=", StringComparison.Ordinal));
            return (string.Join('\n', lines), r.Err, r.Code, r.Exit!.Signal);
        }

        foreach (var script in scripts)
        {
            var w = Box.WaitWarm();
            var result = A.Run(script, timeoutMs: 10_000);
            Assert.That(result.Pid, Is.EqualTo(w), script);
            var reference = cold.Run(script, timeoutMs: 10_000);
            Assert.That(Normalize(result), Is.EqualTo(Normalize(reference)), script);
            // and the state both leave behind
            Assert.That(Normalize(A.Run("pwd; env | sort")), Is.EqualTo(Normalize(cold.Run("pwd; env | sort"))), script);
        }
    }

    [Test]
    public void TimeoutAndKillReachTheWholeTree()
    {
        var w = Box.WaitWarm();
        var result = A.Run("trap '' TERM; sleep 100 & echo $!; sleep 100", timeoutMs: 500);
        Assert.That(result.Pid, Is.EqualTo(w));
        Assert.That(result.Exit!.TimedOut, Is.True);
        Assert.That((result.Code, result.Exit.Signal), Is.EqualTo((137, (int?)9)));
        Assert.That(Box.WaitDead(int.Parse(result.Out.Trim())), Is.True);
        Assert.That(result.Elapsed.TotalSeconds, Is.LessThan(5));
        w = Box.WaitWarm();
        var channel = A.Start("sleep 100 & echo $!; sleep 100");
        var started = A.Next(channel);
        Assert.That(JsonSerializer.Deserialize(started.Payload.Span, ProtocolJsonContext.Default.StartedEvent)!.Pid, Is.EqualTo(w));
        var background = int.Parse(Encoding.ASCII.GetString(A.Next(channel).Payload.Span));
        A.SendJson(FrameType.Kill, channel, new KillRequest { Signal = 15 });
        var killed = A.Collect(channel);
        Assert.That((killed.Code, killed.Exit!.Signal), Is.EqualTo((143, (int?)15)));
        Assert.That(Box.WaitDead(background), Is.True);
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => Box.SessionMembers(w).Count == 0, 3), Is.True);
    }

    [Test]
    public void SecondsCountsFromTheHandOver()
    {
        var w = Box.WaitWarm();
        Thread.Sleep(1200);
        var result = A.Run("echo $SECONDS");
        Assert.That((result.Pid, result.Out), Is.EqualTo(((int?)w, "0\n")));
    }

    [Test]
    public void SessionsThatBashWouldStartDifferentlyRunCold()
    {
        Box.WriteUserFile("rc.sh", "FROM_RC=yes\n");
        AssertRan(A.Run($"export BASH_ENV={Workdir}/rc.sh"));
        Thread.Sleep(200);
        Assert.That(Box.WarmShells(), Is.Empty); // no warm shell for this state
        Assert.That(A.Run("echo $FROM_RC").Out, Is.EqualTo("yes\n"));
        AssertRan(A.Run("unset BASH_ENV"));
        var w = Box.WaitWarm();
        Assert.That(A.Run("echo ok").Pid, Is.EqualTo(w));
        // exported functions (could shadow the bootstrap's builtins) come only from the container's own environment:
        // `export -p` does not list them, so they never persist
        var (box, client) = Another(Options with { Env = new Dictionary<string, string> { ["BASH_FUNC_read%%"] = "() { echo shadowed; }" } });
        var shadowed = client.Run("echo -n x | read -r v; echo $?");
        Assert.That(shadowed.Out, Is.EqualTo("shadowed\n0\n"));
        Thread.Sleep(200);
        Assert.That(box.WarmShells(), Is.Empty);
    }
}

/// <summary>Warm shells with the default <c>--warm 1</c>.</summary>
public sealed class WarmShellTests : WarmShellTestsBase;

/// <summary>The same with <c>--warm 2</c>: the next warm shell is spawned as soon as one is taken, for the state
/// before the command, and replaced if the command changes it.</summary>
public sealed class SpeculativeWarmShellTests : WarmShellTestsBase
{
    protected override SandboxOptions Options => new() { Warm = 2 };

    [Test]
    public void SpeculativeShellIsReplacedWhenTheStateChanges()
    {
        AssertRan(A.Run("true"));
        var w1 = Box.WaitWarm();
        var channel = A.Start("sleep 0.5; cd /; export SPEC=1");
        Assert.That(JsonSerializer.Deserialize(A.Next(channel).Payload.Span, ProtocolJsonContext.Default.StartedEvent)!.Pid, Is.EqualTo(w1));
        // spawned while the command runs, for the state before it
        int w2 = 0;
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => (w2 = Box.WarmShells().FirstOrDefault(p => p != w1)) != 0, 10), Is.True);
        Assert.That(Box.WarmShells(), Does.Contain(w1)); // still running
        AssertRan(A.Collect(channel));
        Assert.That(Box.WaitDead(w2), Is.True); // wrong state now
        var w3 = Box.WaitWarm();
        var result = A.Run("pwd; echo $SPEC");
        Assert.That((result.Pid, result.Out), Is.EqualTo(((int?)w3, "/\n1\n")));
        var w4 = Box.WaitWarm(); // the speculative shell for the unchanged state is kept
        Thread.Sleep(100);
        Assert.That(A.Run("echo $$").Out, Is.EqualTo($"{w4}\n"));
    }
}
