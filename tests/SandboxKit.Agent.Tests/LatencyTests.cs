using System.Diagnostics;
using System.Globalization;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>
/// Not an assertion: prints <c>echo hello</c> round trips through supervisors with a warm shell (<c>--warm 1</c>, the
/// default, and <c>--warm 2</c>) and without (<c>--warm 0</c>), next to a bare <c>bash -c</c> spawn on this host and
/// a ping, interleaved in one run (random order per round) so that host load hits them alike; then the supervisor's
/// own CPU per command and its idle memory (Private_Dirty of /proc/1/smaps_rollup, read as root from the host: the
/// supervisor is not dumpable, so even root inside the container without CAP_SYS_PTRACE may not read it) after 200
/// commands.
/// paced: before every measurement each warm supervisor is idle with a ready warm shell. back-to-back: blocks of 10
/// commands sent as fast as the client can, rotating between the supervisors.
/// </summary>
[NonParallelizable]
public sealed class LatencyTests : AgentTest
{
    [Test]
    public void LatencyReport()
    {
        var warm = A;
        var (specBox, spec) = Another(new SandboxOptions { Warm = 2 });
        var (coldBox, cold) = Another(new SandboxOptions { Warm = 0 });
        foreach (var client in new[] { warm, spec, cold })
        {
            for (var i = 0; i < 10; i++)
            {
                Assert.That(client.Run("echo hello").Out, Is.EqualTo("hello\n"));
            }
        }
        var rng = new Random(1);
        var usedWarm = 0;

        int Settle()
        {
            specBox.WaitWarm();
            return Box.WaitWarm();
        }

        double Echo(AgentClient client, out int? pid)
        {
            var clock = Stopwatch.StartNew();
            var result = client.Run("echo hello");
            var ms = clock.Elapsed.TotalMilliseconds;
            Assert.That(result.Out, Is.EqualTo("hello\n"));
            pid = result.Pid;
            return ms;
        }

        double BareSpawn()
        {
            var clock = Stopwatch.StartNew();
            var info = new ProcessStartInfo("/bin/bash-static", ["--noprofile", "--norc", "-c", "echo hello"])
            {
                RedirectStandardOutput = true,
                UseShellExecute = false,
            };
            using var p = Process.Start(info)!;
            p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return clock.Elapsed.TotalMilliseconds;
        }

        double Ping()
        {
            var clock = Stopwatch.StartNew();
            warm.Ping();
            return clock.Elapsed.TotalMilliseconds;
        }

        const int n = 100;
        var paced = new Dictionary<string, List<double>> { ["warm"] = [], ["cold"] = [], ["raw"] = [], ["ping"] = [] };
        for (var round = 0; round < n; round++)
        {
            foreach (var kind in paced.Keys.OrderBy(_ => rng.Next()).ToList())
            {
                var ready = Settle();
                switch (kind)
                {
                    case "warm":
                        paced[kind].Add(Echo(warm, out var pid));
                        usedWarm += pid == ready ? 1 : 0;
                        break;
                    case "cold":
                        paced[kind].Add(Echo(cold, out _));
                        break;
                    case "raw":
                        paced[kind].Add(BareSpawn());
                        break;
                    default:
                        paced[kind].Add(Ping());
                        break;
                }
            }
        }
        var burst = new Dictionary<string, List<double>> { ["warm"] = [], ["spec"] = [], ["cold"] = [] };
        var clients = new Dictionary<string, AgentClient> { ["warm"] = warm, ["spec"] = spec, ["cold"] = cold };
        for (var block = 0; block < n / 10; block++)
        {
            foreach (var kind in burst.Keys.OrderBy(_ => rng.Next()).ToList())
            {
                Settle();
                for (var i = 0; i < 10; i++)
                {
                    burst[kind].Add(Echo(clients[kind], out _));
                }
            }
        }

        // The supervisor's own CPU per command (utime + stime of PID 1, in clock ticks of 10 ms), and its idle memory.
        double SupervisorCpuMs(Sandbox box)
        {
            var text = File.ReadAllText($"/proc/{box.HostPid}/stat");
            var fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
            return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) * 10.0;
        }
        var before = (Warm: SupervisorCpuMs(Box), Cold: SupervisorCpuMs(coldBox));
        for (var i = 0; i < 200; i++)
        {
            warm.Run("echo hello");
            cold.Run("echo hello");
        }
        var perCommandWarm = (SupervisorCpuMs(Box) - before.Warm) / 200;
        var perCommandCold = (SupervisorCpuMs(coldBox) - before.Cold) / 200;
        Thread.Sleep(500);
        var privateDirty = Box.SupervisorPrivateDirtyKb();
        var rss = File.ReadAllLines($"/proc/{Box.HostPid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));

        static double Pct(List<double> xs, double p) => xs.Order().ElementAt((int)(xs.Count * p));
        static string Line(string label, List<double> xs) => $"\n  {label,-46} p50 {Pct(xs, .5),6:F2} ms, p90 {Pct(xs, .9),6:F2} ms";
        static string Ratio(string label, List<double> slow, List<double> fast) =>
            $"\n  {label,-46} p50 x{Pct(slow, .5) / Pct(fast, .5):F2}, p90 x{Pct(slow, .9) / Pct(fast, .9):F2}";

        TestContext.Out.WriteLine("sandboxkit-agent latency report:"
            + Line("echo, warm shell (paced):", paced["warm"])
            + Line("echo, cold spawn (paced):", paced["cold"])
            + Ratio("cold/warm (paced):", paced["cold"], paced["warm"]) + $"  ({usedWarm}/{n} warm runs got the ready shell)"
            + Line("echo, warm shell (back-to-back):", burst["warm"])
            + Line("echo, warm, --warm 2 speculative (back-to-back):", burst["spec"])
            + Line("echo, cold spawn (back-to-back):", burst["cold"])
            + Ratio("cold/warm (back-to-back):", burst["cold"], burst["warm"])
            + Ratio("cold/warm --warm 2 (back-to-back):", burst["cold"], burst["spec"])
            + Line("bare bash -c spawn (no supervisor):", paced["raw"])
            + Line("supervisor ping round trip:", paced["ping"])
            + $"\n  supervisor CPU per echo (200 in a row, 10 ms ticks): warm {perCommandWarm:F3} ms, cold {perCommandCold:F3} ms"
            + $"\n  supervisor idle memory after 200+ commands: Private_Dirty {privateDirty} kB, {rss.Replace('\t', ' ')}");
        Assert.That(usedWarm, Is.Positive, "warm shells were never used");
    }
}
