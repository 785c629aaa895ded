using System.Collections.Concurrent;
using System.Diagnostics;
using SandboxKit.Contracts;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Benchmarks;

/// <summary>
/// Load: many sessions at once, each running commands back to back; every error is counted, none is retried.
/// Soak: create, use and delete sessions many times over, then count what is left and compare the server's
/// working set at the start and the end.
/// </summary>
internal static class Load
{
    public static async Task<string> ConcurrentSessionsAsync(HttpClient http, int sessions, int commandsEach)
    {
        var ids = new ConcurrentBag<string>();
        var createErrors = 0;
        var createWatch = Stopwatch.StartNew();
        // Eight creates at a time: creating is not what is measured here, running them all at once is.
        await Parallel.ForEachAsync(Enumerable.Range(0, sessions), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (_, _) =>
        {
            try
            {
                ids.Add((await Api.CreateAsync(http, Small)).Id);
            }
            catch (Exception)
            {
                Interlocked.Increment(ref createErrors);
            }
        });
        var createSeconds = createWatch.Elapsed.TotalSeconds;

        var errors = 0;
        var completed = 0;
        var latencies = new ConcurrentBag<double>();
        var firstError = "";
        var watch = Stopwatch.StartNew();
        await Task.WhenAll(ids.Select(async id =>
        {
            for (var i = 0; i < commandsEach; i++)
            {
                var sw = Stopwatch.StartNew();
                try
                {
                    var r = await Api.ExecAsync(http, id, $"echo {i}");
                    if (r.Stdout == $"{i}\n" && r.ExitCode == 0)
                    {
                        Interlocked.Increment(ref completed);
                    }
                    else
                    {
                        Interlocked.Increment(ref errors);
                        Interlocked.CompareExchange(ref firstError, $"unexpected output '{r.Stdout}' exit {r.ExitCode}", "");
                    }
                }
                catch (Exception e)
                {
                    Interlocked.Increment(ref errors);
                    Interlocked.CompareExchange(ref firstError, e.Message, "");
                }
                latencies.Add(sw.Elapsed.TotalMilliseconds);
            }
        }));
        var seconds = watch.Elapsed.TotalSeconds;
        var deleteErrors = 0;
        await Parallel.ForEachAsync(ids, new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (id, _) =>
        {
            if (!(await http.DeleteAsync($"/v1/sessions/{id}")).IsSuccessStatusCode)
            {
                Interlocked.Increment(ref deleteErrors);
            }
        });
        var stats = Stats.Of(latencies);
        return $"load: {ids.Count} concurrent sessions (created in {createSeconds:0.0} s, {createErrors} create errors) x {commandsEach} commands = {completed} ok, " +
            $"{errors} errors{(firstError.Length > 0 ? $" (first: {firstError})" : "")}, {deleteErrors} delete errors; {completed / seconds:0} commands/s, " +
            $"latency p50 {stats.P50:0.0} ms p99 {stats.P99:0.0} ms";
    }

    public static async Task<string> SoakAsync(HttpClient http, int cycles)
    {
        var errors = 0;
        var firstError = "";
        var workingSets = new List<(int Cycle, long Bytes, long Heap)>();
        Sample(0);
        var watch = Stopwatch.StartNew();
        // Two at a time, as a busy agent platform would: one create overlapping another's delete.
        var next = 0;
        await Task.WhenAll(Enumerable.Range(0, 2).Select(async _ =>
        {
            int cycle;
            while ((cycle = Interlocked.Increment(ref next)) <= cycles)
            {
                try
                {
                    var session = await Api.CreateAsync(http, Small);
                    var r = await Api.ExecAsync(http, session.Id, "echo soak > /workspace/f && cat /workspace/f");
                    if (r.Stdout != "soak\n")
                    {
                        throw new InvalidOperationException($"unexpected output '{r.Stdout}'");
                    }
                    var deleted = await http.DeleteAsync($"/v1/sessions/{session.Id}");
                    if (!deleted.IsSuccessStatusCode)
                    {
                        throw new InvalidOperationException($"delete answered {(int)deleted.StatusCode}");
                    }
                }
                catch (Exception e)
                {
                    Interlocked.Increment(ref errors);
                    Interlocked.CompareExchange(ref firstError, e.Message, "");
                }
                if (cycle % (cycles / 4) == 0)
                {
                    lock (workingSets)
                    {
                        Sample(cycle);
                    }
                }
            }
        }));
        var seconds = watch.Elapsed.TotalSeconds;
        var first = workingSets[0];
        var last = workingSets[^1];
        return $"soak: {cycles} create/exec/delete cycles in {seconds:0} s ({cycles / seconds:0.0}/s), {errors} errors{(firstError.Length > 0 ? $" (first: {firstError})" : "")}; " +
            $"server working set {string.Join(" -> ", workingSets.Select(w => $"{w.Bytes / 1e6:0} MB"))} (start {first.Bytes / 1e6:0} MB, end {last.Bytes / 1e6:0} MB; " +
            $"managed heap {first.Heap / 1e6:0.0} -> {last.Heap / 1e6:0.0} MB)";

        void Sample(int cycle)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            using var self = Process.GetCurrentProcess();
            workingSets.Add((cycle, self.WorkingSet64, GC.GetTotalMemory(forceFullCollection: false)));
        }
    }

    /// <summary>What the instance left in the engine and on disk (after the server stopped, this should be nothing).</summary>
    public static async Task<string> LeftoversAsync(DockerEngine docker, string instance)
    {
        var containers = await docker.ListContainersAsync(SessionLabels.Instance, instance, CancellationToken.None);
        var volumes = await docker.ListVolumesAsync(SessionLabels.Instance, instance, CancellationToken.None);
        var directory = Path.Combine("/var/lib/sandboxkit/disks", instance);
        var images = Directory.Exists(directory) ? Directory.GetFiles(directory, "*.img").Length : 0;
        return $"left after the server stopped: {containers.Count} containers, {volumes.Count} volumes, {images} disk images";
    }

    private static CreateSessionRequest Small => new() { MemoryBytes = 64L << 20, DiskBytes = 64L << 20 };
}
