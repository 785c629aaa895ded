using System.Globalization;
using System.Net.Http.Json;
using SandboxKit.Contracts;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Benchmarks;

/// <summary>The HTTP calls the benchmark makes.</summary>
internal static class Api
{
    public static async Task<SessionInfo> CreateAsync(HttpClient http, CreateSessionRequest request)
    {
        var response = await http.PostAsJsonAsync("/v1/sessions", request, SandboxJsonContext.Default.CreateSessionRequest);
        if (!response.IsSuccessStatusCode)
        {
            throw new InvalidOperationException($"create failed: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        }
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!;
    }

    public static async Task<ExecuteResult> ExecAsync(HttpClient http, string session, string command, double? timeout = null)
    {
        var response = await http.PostAsJsonAsync($"/v1/sessions/{session}/commands", new ExecuteRequest { Command = command, TimeoutSeconds = timeout }, SandboxJsonContext.Default.ExecuteRequest);
        response.EnsureSuccessStatusCode();
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
    }

    public static async Task<string> ContainerOfAsync(DockerEngine docker, string sessionId) =>
        (await docker.ListVolumesAsync(SessionLabels.Session, sessionId, CancellationToken.None)).Single().Labels[SessionLabels.Container];
}

/// <summary>What N idle sessions cost the host, measured as the drop in MemAvailable once they have settled.</summary>
internal sealed record IdleMemory(int Sessions, double PerSessionMiB, double SupervisorPrivateMiB, double ShimRssMiB, string Summary)
{
    public static async Task<IdleMemory> MeasureAsync(HttpClient http, DockerEngine docker, int count)
    {
        await SettleAsync();
        var before = MemAvailableKiB();
        var ids = new List<string>();
        try
        {
            return await MeasureAsync(http, docker, count, before, ids);
        }
        finally
        {
            // Also when a create failed half-way: the sessions made so far (and their disks) must not outlive the run.
            foreach (var id in ids)
            {
                await http.DeleteAsync($"/v1/sessions/{id}");
            }
        }
    }

    private static async Task<IdleMemory> MeasureAsync(HttpClient http, DockerEngine docker, int count, long before, List<string> ids)
    {
        // A few at a time: creating is not what is measured, and the host has two cores. Small disks: 100 sessions of
        // the default 1 GiB would commit more disk than admission allows on a small host (the disk costs no memory).
        for (var i = 0; i < count; i += 4)
        {
            var batch = await Task.WhenAll(Enumerable.Range(0, Math.Min(4, count - i)).Select(_ =>
                Api.CreateAsync(http, new CreateSessionRequest { MemoryBytes = 128L << 20, DiskBytes = 64L << 20 })));
            ids.AddRange(batch.Select(s => s.Id));
        }
        // Let every supervisor finish its image probes and start its warm shell.
        await Task.Delay(TimeSpan.FromSeconds(5));
        await SettleAsync();
        var after = MemAvailableKiB();
        var supervisor = 0.0;
        var shim = 0.0;
        var sampled = 0;
        foreach (var id in ids.Take(10))
        {
            var state = await docker.InspectContainerAsync(await Api.ContainerOfAsync(docker, id), CancellationToken.None);
            if (state is { Pid: > 0 } && SmapsKiB(state.Pid, "Private_Dirty") is { } dirty)
            {
                supervisor += dirty + (SmapsKiB(state.Pid, "Private_Clean") ?? 0);
                shim += ParentRssKiB(state.Pid);
                sampled++;
            }
        }
        var perSession = (before - after) / 1024.0 / count;
        var supervisorMiB = sampled == 0 ? 0 : supervisor / 1024 / sampled;
        var shimMiB = sampled == 0 ? 0 : shim / 1024 / sampled;
        return new IdleMemory(count, perSession, supervisorMiB, shimMiB,
            $"idle session: {perSession:0.0} MiB of host memory each ({count} sessions, pool not used; MemAvailable {before / 1024.0:0} -> {after / 1024.0:0} MiB); " +
            $"supervisor private {supervisorMiB:0.00} MiB, containerd-shim RSS {shimMiB:0.0} MiB (mostly shared)");
    }

    private static async Task SettleAsync()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        await Task.Delay(TimeSpan.FromSeconds(2));
    }

    private static long MemAvailableKiB() => Field("/proc/meminfo", "MemAvailable:") ?? 0;

    private static long? SmapsKiB(int pid, string field) => Field($"/proc/{pid}/smaps_rollup", field + ":");

    /// <summary>The containerd-shim is the parent of the container's init on this engine.</summary>
    private static long ParentRssKiB(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var ppid = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1], CultureInfo.InvariantCulture);
        return Field($"/proc/{ppid}/status", "VmRSS:") ?? 0;
    }

    private static long? Field(string path, string name)
    {
        try
        {
            foreach (var line in File.ReadLines(path))
            {
                if (line.StartsWith(name, StringComparison.Ordinal))
                {
                    return long.Parse(line[name.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
                }
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return null;
    }
}
