using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>CPU and memory in <c>x</c>, OOM detection, and PID 1's reaping.</summary>
public sealed class AccountingTests : AgentTest
{
    [Test]
    public void CpuBurnIsReportedAsUserTime()
    {
        // Pure user CPU in a child the shell waits for (not its last command, so it is not exec'd); the child prints
        // what it burned by its own account.
        var result = A.Run("python3 -c \"import os\nx = 0\nfor i in range(6_000_000): x += i\nt = os.times()\nprint(int(t.user * 1000), int(t.system * 1000))\"; true");
        AssertRan(result);
        var own = result.Out.Split(' ').Select(int.Parse).ToArray();
        TestContext.Out.WriteLine($"child's own user {own[0]} ms, system {own[1]} ms; x: cpuUserMs {result.Exit!.CpuUserMs}, cpuSystemMs {result.Exit.CpuSystemMs}, durationMs {result.Exit.DurationMs}");
        Assert.That(own[0], Is.GreaterThan(100), "the burn was too short to measure");
        Assert.That(result.Exit.CpuUserMs, Is.InRange(own[0] * 0.8, own[0] * 1.3 + 50));
    }

    [Test]
    public void MemoryPeakCoversWhatWasAllocated()
    {
        // 200 MiB touched and held for a while, in a child that is not the shell's last command (no exec)
        var result = A.Run("python3 -c \"import time\nb = bytearray(200 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(0.5)\"; true");
        AssertRan(result);
        TestContext.Out.WriteLine($"peakMemoryBytes {result.Exit!.PeakMemoryBytes}");
        Assert.That(result.Exit.PeakMemoryBytes, Is.GreaterThanOrEqualTo(200L * 1024 * 1024));
        // the sampled sum of the tree: two children of 60 MiB each at the same time
        var pair = A.Run("for i in 1 2; do python3 -c \"import time\nb = b'x' * (60 * 1024 * 1024)\ntime.sleep(1)\" & done; wait");
        AssertRan(pair);
        TestContext.Out.WriteLine($"two children: peakMemoryBytes {pair.Exit!.PeakMemoryBytes}");
        Assert.That(pair.Exit.PeakMemoryBytes, Is.GreaterThanOrEqualTo(120L * 1024 * 1024));
    }

    [Test]
    public void OrphansAreReapedByPidOne()
    {
        AssertRan(A.Run("for i in $(seq 1 20); do (sleep 0.2 &) ; done; (sleep 0.3 & exec sleep 0.1) & echo started"));
        Assert.That(Sandbox.WaitUntil(() => Box.Zombies().Count == 0 && Box.Processes().Count(p => p.ParentPid == 1) <= 2, 10), Is.True,
            $"zombies left: {string.Join(",", Box.Zombies())}");
        AssertRan(A.Run("echo still reaping correctly; exit 0"));
    }
}

/// <summary>The cgroup's OOM killer: the command is reported <c>oomKilled</c> and the supervisor survives.</summary>
public sealed class OomTests : AgentTest
{
    protected override SandboxOptions Options => new() { Memory = "96m" };

    [Test]
    public void OomKilledDetection()
    {
        var result = A.Run("python3 -c \"b = b'x' * (400 * 1024 * 1024)\"; echo after $? >&2; exit 137");
        TestContext.Out.WriteLine(result.ToString());
        Assert.That(result.Exit!.OomKilled, Is.True, result.ToString());
        var plain = A.Run("kill -9 $$"); // counter unchanged: a plain SIGKILL
        Assert.That(plain.Exit!.OomKilled, Is.False);
        Assert.That(A.Run("exit 1").Exit!.OomKilled, Is.False);
        Assert.That(Box.Alive(1), Is.True);
        A.Ping();
    }
}
