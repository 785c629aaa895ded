using Docker.DotNet.Models;

namespace SandboxKit.TestEngines.Tests;

/// <summary>Two private engines side by side: their own images, containers and network, invisible to the main engine.</summary>
[TestFixture]
public sealed class IsolationTests
{
    [Test]
    [CancelAfter(600_000)]
    public async Task Two_engines_run_containers_isolated_from_each_other_and_from_the_main_engine()
    {
        var image = TestSupport.SandboxImage;
        // A gets its image by loading it into the running engine; B has it from the start (seeded data root).
        var startA = Timings.MeasureAsync("start engine (no images, TCP endpoint on)",
            () => PrivateEngine.StartAsync("isolation-a", new PrivateEngineOptions { ListenOnTcp = true }, TestSupport.Token));
        var startB = Timings.MeasureAsync("start engine with the sandbox image (seeded)",
            () => PrivateEngine.StartAsync("isolation-b", new PrivateEngineOptions { Images = [image] }, TestSupport.Token));
        await using var a = await startA;
        await using var b = await startB;
        var bReport = b.StartReport!;
        Timings.Record($"  of which seed preparation (built this time: {bReport.SeedBuilt})", bReport.SeedPreparation);
        Timings.Record("  of which seed clone (layer symlinks + metadata copy)", bReport.SeedClone);
        Timings.Record("  of which dockerd start", bReport.DaemonStart);

        // On a machine whose tar cache lacks this image id, the load first saves it from the main engine (once per
        // image version per machine); afterwards loads read the cached tar.
        var load = await a.LoadImagesAsync([image], TestSupport.Token);
        var loaded = load.Images.Single();
        Timings.Record($"load image into a running engine (tar had to be saved: {loaded.SavedToCache})", load.Elapsed);
        Timings.Record("  of which docker save to the tar cache (0 when cached)", loaded.SaveTime);
        Timings.Record("  of which docker load from the cached tar", loaded.LoadTime);
        var again = await a.LoadImagesAsync([image], TestSupport.Token);
        Assert.That(again.Images.Single().LoadTime, Is.EqualTo(TimeSpan.Zero), "an image the engine has is not loaded again");
        Assert.That(again.Images.Single().SavedToCache, Is.False);

        Assert.That(a.Id, Is.Not.EqualTo(b.Id));
        Assert.That(a.NamespaceAddress, Is.Not.EqualTo(b.NamespaceAddress));

        // docker run --rm through each engine's endpoint.
        Assert.That(await a.DockerOkAsync("run", "--rm", "--network", "none", image, "echo", "hello from a"), Is.EqualTo("hello from a"));
        Assert.That(await b.DockerOkAsync("run", "--rm", "--network", "none", image, "echo", "hello from b"), Is.EqualTo("hello from b"));

        // Host-network containers see the engine's namespace: its loopback and its own veth end, nothing of the host.
        var interfaces = await a.DockerOkAsync("run", "--rm", "--network", "host", image, "ls", "/sys/class/net");
        Assert.That(interfaces.Split(['\n', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries), Is.EquivalentTo(new[] { "lo", a.Id + "n" }));

        // The TCP endpoint answers from the host through the veth.
        var overTcp = await ProcessRunnerForTests.DockerAsync(a.TcpEndpoint!, "version", "--format", "{{.Server.Version}}");
        Assert.That(overTcp, Is.Not.Empty);

        // Containers of each engine are visible there only.
        var nameA = "iso-a-" + a.Id;
        var nameB = "iso-b-" + b.Id;
        var idA = await a.DockerOkAsync("run", "-d", "--name", nameA, "--network", "none", image, "sleep", "600");
        var idB = await b.DockerOkAsync("run", "-d", "--name", nameB, "--network", "none", image, "sleep", "600");
        Assert.That(await a.DockerOkAsync("ps", "-aq", "--no-trunc"), Does.Contain(idA).And.Not.Contain(idB));
        Assert.That(await b.DockerOkAsync("ps", "-aq", "--no-trunc"), Does.Contain(idB).And.Not.Contain(idA));
        using (var main = TestSupport.MainEngine())
        {
            var mainContainers = await main.Containers.ListContainersAsync(new ContainersListParameters { All = true }, TestSupport.Token);
            Assert.That(mainContainers.Select(c => c.ID), Has.None.EqualTo(idA).And.None.EqualTo(idB));
            Assert.That(mainContainers.SelectMany(c => c.Names), Has.None.Contains(nameA).And.None.Contains(nameB));
        }

        var pidA = await a.ContainerPidAsync(nameA);
        await Timings.MeasureAsync("dispose engine with a running container", async () => await a.DisposeAsync());
        Assert.That(TestSupport.ProcessAlive(pidA), Is.False, "the container's process died with its engine");
        Assert.That(PrivateEngine.FindLeftovers(a.Id), Is.Empty);
        // B is unaffected by A's disposal.
        Assert.That(await b.DockerOkAsync("inspect", "--format", "{{.State.Running}}", nameB), Is.EqualTo("true"));
    }

    [Test]
    [CancelAfter(300_000)]
    public async Task Removing_a_seeded_image_in_one_engine_leaves_it_to_every_other_engine()
    {
        var image = TestSupport.SandboxImage;
        await using var first = await PrivateEngine.StartAsync("seed-user-1", new PrivateEngineOptions { Images = [image] }, TestSupport.Token);
        Assert.That(await first.DockerOkAsync("run", "--rm", "--network", "none", image, "cat", "/etc/hostname"), Is.Not.Empty);
        await first.DockerOkAsync("rmi", image);
        Assert.That((await first.DockerAsync("image", "inspect", image)).Succeeded, Is.False, "gone from this engine");

        await using var second = await PrivateEngine.StartAsync("seed-user-2", new PrivateEngineOptions { Images = [image] }, TestSupport.Token);
        // Every file of the image is still there for the next engine: a full read of the root file system.
        Assert.That(await second.DockerOkAsync("run", "--rm", "--network", "none", "--user", "root", image, "sh", "-c",
            "find / -xdev -type f -readable -exec cat {} + > /dev/null && echo intact"), Is.EqualTo("intact"));
    }

    [Test]
    [CancelAfter(300_000)]
    public async Task Engines_started_in_parallel_get_distinct_ids_subnets_and_endpoints()
    {
        var engines = await Timings.MeasureAsync("start 4 engines in parallel", () =>
            Task.WhenAll(Enumerable.Range(0, 4).Select(i => PrivateEngine.StartAsync($"parallel-{i}", cancellationToken: TestSupport.Token))));
        try
        {
            Assert.That(engines.Select(e => e.Id).Distinct().Count(), Is.EqualTo(4));
            Assert.That(engines.Select(e => e.NamespaceAddress.ToString()).Distinct().Count(), Is.EqualTo(4));
            Assert.That(engines.Select(e => e.Endpoint).Distinct().Count(), Is.EqualTo(4));
            foreach (var engine in engines)
            {
                Assert.That(await engine.DockerOkAsync("info", "--format", "{{.Name}} {{.LiveRestoreEnabled}} {{range .Labels}}{{.}} {{end}}"),
                    Does.Contain("sandboxkit.test-engine.id=" + engine.Id));
                Timings.Record("  one engine's start (of 4 in parallel)", engine.StartReport!.Total);
            }
        }
        finally
        {
            await Timings.MeasureAsync("dispose 4 engines in parallel", () => Task.WhenAll(engines.Select(e => e.DisposeAsync().AsTask())));
        }
        foreach (var engine in engines)
        {
            Assert.That(PrivateEngine.FindLeftovers(engine.Id), Is.Empty);
        }
    }
}

/// <summary>docker CLI against an arbitrary endpoint (the TCP one).</summary>
internal static class ProcessRunnerForTests
{
    public static async Task<string> DockerAsync(string endpoint, params string[] arguments)
    {
        var result = await ProcessRunner.RunAsync("docker", ["-H", endpoint, .. arguments], TimeSpan.FromSeconds(30), cancellationToken: TestSupport.Token);
        Assert.That(result.ExitCode, Is.Zero, result.Stderr);
        return result.Stdout.Trim();
    }
}
