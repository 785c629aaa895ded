namespace SandboxKit.TestEngines.Tests;

/// <summary>Restarting and killing an engine under running containers, with and without live restore.</summary>
[TestFixture]
public sealed class LifecycleTests
{
    [Test]
    [CancelAfter(300_000)]
    public async Task With_live_restore_a_running_container_survives_a_restart_and_a_kill_of_the_daemon()
    {
        var image = TestSupport.SandboxImage;
        await using var engine = await PrivateEngine.StartAsync("live-restore",
            new PrivateEngineOptions { LiveRestore = true, Images = [image] }, TestSupport.Token);
        Timings.Record("start engine with the sandbox image (seeded, live restore)", engine.StartReport!.Total);
        Assert.That(await engine.DockerOkAsync("info", "--format", "{{.LiveRestoreEnabled}}"), Is.EqualTo("true"));

        var id = await engine.DockerOkAsync("run", "-d", "--network", "none", image, "sleep", "600");
        var pid = await engine.ContainerPidAsync(id);
        var daemonBefore = engine.DaemonPid;

        await Timings.MeasureAsync("restart (SIGTERM, start), live restore, 1 container", () => engine.RestartAsync(TestSupport.Token));
        Assert.That(engine.DaemonPid, Is.Not.EqualTo(daemonBefore), "a new dockerd");
        Assert.That(await engine.DockerOkAsync("inspect", "--format", "{{.State.Running}}", id), Is.EqualTo("true"));
        Assert.That(await engine.ContainerPidAsync(id), Is.EqualTo(pid), "the same process, not a restarted container");

        await Timings.MeasureAsync("kill daemon (SIGKILL dockerd + containerd)", () => engine.KillAsync(KillScope.Daemon, TestSupport.Token));
        Assert.That(engine.IsRunning, Is.False);
        Assert.That((await engine.DockerAsync("version")).Succeeded, Is.False, "the API is gone");
        Assert.That(TestSupport.ProcessAlive(pid), Is.True, "the container runs on while its daemon is dead");

        await Timings.MeasureAsync("start after kill, live restore, 1 container", () => engine.RestartAsync(TestSupport.Token));
        Assert.That(await engine.DockerOkAsync("inspect", "--format", "{{.State.Running}}", id), Is.EqualTo("true"));
        Assert.That(await engine.ContainerPidAsync(id), Is.EqualTo(pid));
        // And the reattached container is fully controllable again.
        Assert.That(await engine.DockerOkAsync("exec", id, "echo", "reattached"), Is.EqualTo("reattached"));
    }

    [Test]
    [CancelAfter(300_000)]
    public async Task Without_live_restore_a_killed_daemon_stops_its_containers_when_it_starts_again()
    {
        var image = TestSupport.SandboxImage;
        await using var engine = await PrivateEngine.StartAsync("no-live-restore", new PrivateEngineOptions { Images = [image] }, TestSupport.Token);
        Assert.That(await engine.DockerOkAsync("info", "--format", "{{.LiveRestoreEnabled}}"), Is.EqualTo("false"));

        // sleep as PID 1 ignores SIGTERM: a short stop timeout keeps the restart's SIGTERM-wait-SIGKILL short.
        var kept = await engine.DockerOkAsync("run", "-d", "--stop-timeout", "1", "--network", "none", image, "sleep", "600");
        var removed = await engine.DockerOkAsync("run", "-d", "--rm", "--stop-timeout", "1", "--network", "none", image, "sleep", "600");
        var keptPid = await engine.ContainerPidAsync(kept);
        var removedPid = await engine.ContainerPidAsync(removed);

        await engine.KillAsync(KillScope.Daemon, TestSupport.Token);
        Assert.That(TestSupport.ProcessAlive(keptPid) && TestSupport.ProcessAlive(removedPid), Is.True,
            "killing the daemon alone does not stop containers, even without live restore");

        await Timings.MeasureAsync("start after kill, no live restore, 2 containers (stop timeout 1 s)", () => engine.RestartAsync(TestSupport.Token));
        Assert.That(TestSupport.ProcessAlive(keptPid) || TestSupport.ProcessAlive(removedPid), Is.False, "the restart stopped them");
        Assert.That(await engine.DockerOkAsync("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", kept), Is.EqualTo("false 137"));
        await TestSupport.EventuallyAsync(async () => !(await engine.DockerAsync("inspect", removed)).Succeeded, TimeSpan.FromSeconds(10),
            "removal of the --rm container");

        // A graceful stop without live restore stops the containers before the daemon exits.
        await engine.DockerOkAsync("start", kept);
        var restartedPid = await engine.ContainerPidAsync(kept);
        await Timings.MeasureAsync("stop (SIGTERM), no live restore, 1 container (stop timeout 1 s)", () => engine.StopAsync(TestSupport.Token));
        Assert.That(TestSupport.ProcessAlive(restartedPid), Is.False);
        await engine.RestartAsync(TestSupport.Token);
        Assert.That(await engine.DockerOkAsync("inspect", "--format", "{{.State.Running}}", kept), Is.EqualTo("false"));
    }

    [Test]
    [CancelAfter(300_000)]
    public async Task Killing_everything_takes_the_containers_down_with_the_daemon()
    {
        var image = TestSupport.SandboxImage;
        await using var engine = await PrivateEngine.StartAsync("kill-everything",
            new PrivateEngineOptions { LiveRestore = true, Images = [image] }, TestSupport.Token);
        var id = await engine.DockerOkAsync("run", "-d", "--network", "none", image, "sleep", "600");
        var pid = await engine.ContainerPidAsync(id);

        await Timings.MeasureAsync("kill everything (daemon, shims, containers)", () => engine.KillAsync(KillScope.Everything, TestSupport.Token));
        Assert.That(TestSupport.ProcessAlive(pid), Is.False);

        await engine.RestartAsync(TestSupport.Token);
        Assert.That(await engine.DockerOkAsync("inspect", "--format", "{{.State.Running}}", id), Is.EqualTo("false"),
            "even with live restore, a container whose process died is found exited");
        // The engine is usable as before.
        Assert.That(await engine.DockerOkAsync("run", "--rm", "--network", "none", image, "echo", "fresh"), Is.EqualTo("fresh"));
    }
}
