using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests;

/// <summary>test_agent.py KillTests: timeouts and K reach the whole tree; background children do not hold a command.</summary>
public sealed class KillTests : AgentTest
{
    [Test]
    public void TimeoutKillsTreeIncludingTermIgnoringChild()
    {
        var result = A.Run("trap '' TERM; sleep 100 & echo $!; echo before; sleep 100", timeoutMs: 500);
        Assert.That(result.Exit!.TimedOut, Is.True);
        Assert.That((result.Code, result.Exit.Signal), Is.EqualTo((137, (int?)9)));
        var lines = result.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines[1], Is.EqualTo("before"));
        Assert.That(result.Elapsed.TotalSeconds, Is.LessThan(5));
        Assert.That(Box.WaitDead(int.Parse(lines[0])), Is.True);
        Assert.That(A.Run("echo usable").Out, Is.EqualTo("usable\n"));
    }

    [Test]
    public void TimeoutKillsChildThatChangedProcessGroup()
    {
        const string code = "import os,time; os.setpgid(0,0); print(os.getpid(), flush=True); time.sleep(100)";
        var result = A.Run($"python3 -c '{code}' & sleep 100", timeoutMs: 1500);
        Assert.That(result.Exit!.TimedOut, Is.True);
        Assert.That(Box.WaitDead(int.Parse(result.Out.Trim())), Is.True);
    }

    [Test]
    public void KillFrame()
    {
        var channel = A.Start("sleep 100 & echo $!; sleep 100");
        var started = A.Next(channel);
        Assert.That((char)started.Type, Is.EqualTo('s'));
        var shell = JsonSerializer.Deserialize(started.Payload.Span, ProtocolJsonContext.Default.StartedEvent)!.Pid;
        var background = int.Parse(System.Text.Encoding.ASCII.GetString(A.Next(channel).Payload.Span));
        A.SendJson(FrameType.Kill, channel, new KillRequest { Signal = 15 });
        var result = A.Collect(channel);
        Assert.That((result.Code, result.Exit!.Signal, result.Exit.TimedOut), Is.EqualTo((143, (int?)15, false)));
        Assert.That(Box.WaitDead(background), Is.True);
        // Nothing of the command outlives it, not even a child forked as the signal arrived (follow-ups for ~1 s).
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => Box.SessionMembers(shell).Count == 0, 3), Is.True, string.Join(",", Box.SessionMembers(shell)));
    }

    [Test]
    public void KillWithoutPayloadOrWithGarbageIsSigkill()
    {
        foreach (var payload in new[] { ""u8.ToArray(), "not json"u8.ToArray(), """{"signal": 999}"""u8.ToArray() })
        {
            var channel = A.Start("trap '' TERM; sleep 100");
            Assert.That((char)A.Next(channel).Type, Is.EqualTo('s'));
            A.Send(FrameType.Kill, channel, payload);
            var result = A.Collect(channel);
            Assert.That(result.Exit!.Signal, Is.EqualTo(9));
        }
    }

    [Test]
    public void BackgroundProcessDoesNotHoldCommand()
    {
        var result = A.Run("sleep 1000 & echo $!");
        AssertRan(result);
        Assert.That(result.Elapsed.TotalSeconds, Is.LessThan(1.5));
        Assert.That(Box.Alive(int.Parse(result.Out.Trim())), Is.True);
        result = A.Run("nohup python3 -m http.server 0 --bind 127.0.0.1 >/dev/null 2>&1 & echo $!");
        AssertRan(result);
        Assert.That(result.Elapsed.TotalSeconds, Is.LessThan(1.5));
        // and output a background child writes later never reaches a later command
        result = A.Run("(sleep 0.3; echo late) & echo now");
        Assert.That(result.Out, Is.EqualTo("now\n"));
        Thread.Sleep(500);
        Assert.That(A.Run("echo next").Out, Is.EqualTo("next\n"));
    }

    [Test]
    public void KillMinusOneFromACommandLeavesTheSupervisorAndSession()
    {
        AssertRan(A.Run("export KEEP=1; cd /tmp"));
        // kill(-1) signals every process the caller may signal but itself: its own background child and the idle
        // warm shell die, the supervisor (another uid, and init) does not.
        var result = A.Run("sleep 100 & pid=$!; kill -9 -1; wait $pid; echo status=$?");
        Assert.That(result.Out, Is.EqualTo("status=137\n"));
        Assert.That(A.Run("echo $KEEP; pwd").Out, Is.EqualTo("1\n/tmp\n"));
        Assert.That(Box.Alive(1), Is.True);
        A.Ping();
    }
}
