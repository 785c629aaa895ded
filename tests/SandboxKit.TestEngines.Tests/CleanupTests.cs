using System.Globalization;

namespace SandboxKit.TestEngines.Tests;

/// <summary>Nothing of an engine survives its dispose, the sweep, or the watchdog; live engines are never swept.</summary>
[TestFixture]
public sealed class CleanupTests
{
    [Test]
    [CancelAfter(300_000)]
    public async Task Dispose_removes_containers_volumes_networks_and_every_trace_of_the_engine()
    {
        var image = TestSupport.SandboxImage;
        var engine = await PrivateEngine.StartAsync("dispose", new PrivateEngineOptions { Images = [image], ListenOnTcp = true }, TestSupport.Token);
        var id = engine.Id;
        int pid;
        List<string> shimSockets;
        try
        {
            await engine.DockerOkAsync("volume", "create", "dispose-volume");
            // A user-defined bridge lives inside the engine's namespace (no iptables rules, nothing on the host).
            await engine.DockerOkAsync("network", "create", "dispose-network");
            var container = await engine.DockerOkAsync("run", "-d", "--network", "dispose-network", "-v", "dispose-volume:/data",
                "--tmpfs", "/scratch", image, "sleep", "600");
            pid = await engine.ContainerPidAsync(container);
            // The container's shim listens on a socket outside the engine's directories (/run/containerd/s/HASH).
            shimSockets = Directory.EnumerateFiles(Path.Combine(engine.ExecRoot, "containerd", "daemon"), "address", SearchOption.AllDirectories)
                .Select(f => File.ReadAllText(f).Trim().Replace("unix://", "", StringComparison.Ordinal)).ToList();
            Assert.That(shimSockets, Has.Count.EqualTo(1));
            Assert.That(File.Exists(shimSockets[0]) || Directory.Exists(Path.GetDirectoryName(shimSockets[0])), Is.True);
            // What dispose has to remove really exists before it.
            var before = PrivateEngine.FindLeftovers(id);
            Assert.That(before, Has.Some.StartsWith("process"));
            Assert.That(before, Has.Some.StartsWith("mount"));
            Assert.That(before, Has.Some.StartsWith("network namespace"));
            Assert.That(before, Has.Some.StartsWith("link"));
            Assert.That(before, Has.Some.StartsWith("cgroup"));
            Assert.That(before, Has.Some.StartsWith("directory"));
        }
        catch
        {
            await engine.DisposeAsync();
            throw;
        }

        await Timings.MeasureAsync("dispose engine (container, volume, network, tcp)", async () => await engine.DisposeAsync());

        Assert.That(PrivateEngine.FindLeftovers(id), Is.Empty);
        // And checked once more without the harness's own bookkeeping.
        Assert.That(TestSupport.ProcessAlive(pid), Is.False, "container process");
        Assert.That(File.Exists("/run/netns/" + id), Is.False, "netns");
        Assert.That((await ProcessRunner.RunCheckedAsync("ip", ["netns", "list"])).Contains(id, StringComparison.Ordinal), Is.False, "ip netns list");
        Assert.That(Directory.Exists("/sys/class/net/" + id + "h"), Is.False, "veth");
        Assert.That(File.ReadAllText("/proc/self/mountinfo"), Does.Not.Contain(id), "mounts");
        Assert.That(Directory.EnumerateDirectories("/sys/fs/cgroup").Any(h => Directory.Exists(Path.Combine(h, id))), Is.False, "cgroups");
        Assert.That(Directory.Exists("/var/lib/sandboxkit-test-engines/engines/" + id), Is.False, "data root");
        Assert.That(Directory.Exists("/run/sandboxkit-test-engines/" + id), Is.False, "exec root and socket");
        Assert.That(File.Exists($"/run/sandboxkit-test-engines/leases/{id}.lease"), Is.False, "lease");
        Assert.That(File.Exists($"/run/sandboxkit-test-engines/leases/{id}.watchdog"), Is.False, "watchdog pid file");
        Assert.That(ProcessesNaming(id), Is.Empty, "processes naming the engine (dockerd, containerd, shims, watchdog)");
        Assert.That(shimSockets.Where(File.Exists), Is.Empty, "shim sockets");
    }

    [Test]
    [CancelAfter(300_000)]
    public async Task The_sweep_removes_an_abandoned_engine_and_leaves_live_ones_alone()
    {
        var image = TestSupport.SandboxImage;
        await using var live = await PrivateEngine.StartAsync("sweep-live", cancellationToken: TestSupport.Token);
        var abandoned = await PrivateEngine.StartAsync("sweep-abandoned", new PrivateEngineOptions { Images = [image] }, TestSupport.Token);
        var id = abandoned.Id;
        var pid = await abandoned.ContainerPidAsync(await abandoned.DockerOkAsync("run", "-d", "--network", "none", image, "sleep", "600"));
        // As if its test process had been SIGKILLed and its watchdog had died too: everything keeps running, unowned.
        abandoned.AbandonForTesting(keepWatchdog: false);
        Assert.That(TestSupport.ProcessAlive(pid), Is.True);
        Assert.That(PrivateEngine.FindLeftovers(id), Has.Some.StartsWith("process"));

        var report = await Timings.MeasureAsync("sweep with one abandoned engine", () => PrivateEngine.SweepStaleAsync(TestSupport.Token));

        Assert.That(report.RemovedEngines, Does.Contain(id));
        Assert.That(report.RemovedEngines, Does.Not.Contain(live.Id));
        Assert.That(report.Failures, Is.Empty);
        Assert.That(PrivateEngine.FindLeftovers(id), Is.Empty);
        Assert.That(TestSupport.ProcessAlive(pid), Is.False);
        Assert.That(await live.DockerOkAsync("version", "--format", "{{.Server.Version}}"), Is.Not.Empty, "the live engine still answers");
    }

    [Test]
    [CancelAfter(300_000)]
    public async Task The_watchdog_tears_an_engine_down_when_its_owner_is_gone()
    {
        var image = TestSupport.SandboxImage;
        var engine = await PrivateEngine.StartAsync("watchdog", new PrivateEngineOptions { Images = [image] }, TestSupport.Token);
        var id = engine.Id;
        var pid = await engine.ContainerPidAsync(await engine.DockerOkAsync("run", "-d", "--network", "none", image, "sleep", "600"));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        // The kernel frees the lease exactly like this when the owner dies; the watchdog is waiting on it.
        engine.AbandonForTesting(keepWatchdog: true);
        await TestSupport.EventuallyAsync(() => PrivateEngine.FindLeftovers(id).Count == 0, TimeSpan.FromSeconds(30), "the watchdog's teardown");
        Timings.Record("watchdog teardown after the owner let go", watch.Elapsed);
        Assert.That(TestSupport.ProcessAlive(pid), Is.False);
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task The_sweep_prunes_cached_images_whose_id_the_main_engine_no_longer_has()
    {
        var image = TestSupport.SandboxImage;
        // The real entry, current by definition (the main engine has this id).
        string currentId;
        await using (var engine = await PrivateEngine.StartAsync("prune", new PrivateEngineOptions { Images = [image] }, TestSupport.Token))
        {
            currentId = await engine.DockerOkAsync("image", "inspect", "--format", "{{.Id}}", image);
        }
        var currentTars = Directory.GetFiles(EngineNames.ImagesDirectory, "*.json")
            .Where(m => File.ReadAllText(m).Contains(currentId, StringComparison.Ordinal))
            .Select(m => Path.ChangeExtension(m, ".tar")).ToList();
        Assert.That(currentTars, Is.Not.Empty);
        // An entry for an image id that no longer exists (the image was rebuilt), old enough to be pruned.
        var key = "test" + Guid.NewGuid().ToString("N")[..20];
        var tar = Path.Combine(EngineNames.ImagesDirectory, key + ".tar");
        var manifest = Path.Combine(EngineNames.ImagesDirectory, key + ".json");
        await File.WriteAllTextAsync(tar, "not really a tar");
        await File.WriteAllTextAsync(manifest, $$"""[{"Reference":"{{image}}","ImageId":"sha256:{{new string('0', 64)}}"}]""");
        File.SetLastWriteTimeUtc(manifest, DateTime.UtcNow.AddHours(-1));

        var report = await PrivateEngine.SweepStaleAsync(TestSupport.Token);

        Assert.That(report.PrunedCacheEntries, Is.GreaterThanOrEqualTo(1));
        Assert.That(File.Exists(tar) || File.Exists(manifest), Is.False);
        Assert.That(currentTars.Where(File.Exists), Is.EquivalentTo(currentTars), "current entries stay");
    }

    private static List<string> ProcessesNaming(string id)
    {
        var found = new List<string>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid == Environment.ProcessId)
            {
                continue;
            }
            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (cmdline.Contains(id, StringComparison.Ordinal) && TestSupport.ProcessAlive(pid))
                {
                    found.Add($"{pid}: {cmdline}");
                }
            }
            catch (IOException)
            {
            }
        }
        return found;
    }
}
