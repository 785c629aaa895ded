using System.Net;
using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Session lifecycle and hardening, each property observed from inside a real container.</summary>
[TestFixture]
public sealed class SessionTests
{
    private ServerHost _host = null!;

    [OneTimeSetUp]
    public async Task StartAsync() => _host = await ServerHost.StartAsync(new Dictionary<string, string?>
    {
        ["Sandbox:ReaperIntervalSeconds"] = "0.5",
        ["Sandbox:AllowedRuntimes:0"] = "runsc",
    });

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        foreach (var s in (await _host.Http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions)
        {
            await _host.DeleteSessionAsync(s.Id);
        }
        await _host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.Zero, "containers or volumes left behind");
    }

    [Test]
    public async Task Containers_are_hardened_by_default()
    {
        var session = await _host.CreateSessionAsync();
        Assert.That(session.NetworkMode, Is.EqualTo("none"));
        Assert.That(session.MemoryBytes, Is.EqualTo(512L << 20));
        Assert.That(session.Cpus, Is.EqualTo(0.5));
        var r = await _host.ExecuteAsync(session.Id,
            "grep CapEff /proc/self/status; id -u; ls /sys/class/net | tr '\\n' ' '; echo; grep NoNewPrivs /proc/self/status; " +
            "touch /etc/x 2>&1 | head -n 1; touch /tmp/ok /workspace/ok ~/ok && echo writable; ps -o comm= -p 1");
        var lines = r.Stdout.Split('\n');
        Assert.Multiple(() =>
        {
            Assert.That(lines[0], Is.EqualTo("CapEff:\t0000000000000000"));
            Assert.That(lines[1], Is.EqualTo("1000"));
            Assert.That(lines[2].Trim(), Is.EqualTo("lo"));
            Assert.That(lines[3], Is.EqualTo("NoNewPrivs:\t1"));
            Assert.That(lines[4], Does.Contain("Read-only file system"));
            Assert.That(lines[5], Is.EqualTo("writable"));
            Assert.That(lines[6], Is.EqualTo("sandboxkit-agen"), "the supervisor is the init (comm is cut at 15 characters)");
        });
        var inspect = await Engine.Docker.InspectContainerAsync(await ContainerOfAsync(session.Id), CancellationToken.None);
        Assert.That(inspect!.Labels["org.sandboxkit.instance"], Is.EqualTo(_host.Instance));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task A_fork_bomb_stops_at_the_pids_limit_while_other_sessions_keep_answering()
    {
        var bomb = await _host.CreateSessionAsync(new CreateSessionRequest { PidsLimit = 64 });
        var other = await _host.CreateSessionAsync();
        var bombing = _host.ExecuteAsync(bomb.Id, "bomb() { bomb | bomb & }; bomb; sleep 30", timeoutSeconds: 6);
        await Task.Delay(1500);
        var stats = await _host.Http.GetFromJsonAsync($"/v1/sessions/{bomb.Id}/stats", SandboxJsonContext.Default.SessionStats);
        Assert.That(stats!.Pids, Is.LessThanOrEqualTo(64), "the kernel's pids limit holds");
        Assert.That(stats.Pids, Is.GreaterThan(32), "the bomb did fill the sandbox");
        var answer = await _host.ExecuteAsync(other.Id, "echo still here");
        Assert.That(answer.Stdout, Is.EqualTo("still here\n"));
        var result = await bombing;
        Assert.That(result.TimedOut, Is.True, "the bomb is ended by its timeout, tree and all");
        var after = await _host.ExecuteAsync(bomb.Id, "echo recovered", timeoutSeconds: 30);
        Assert.That(after.Stdout, Is.EqualTo("recovered\n"));
        await _host.DeleteSessionAsync(bomb.Id);
        await _host.DeleteSessionAsync(other.Id);
    }

    [Test]
    public async Task A_memory_hog_is_killed_and_reported_without_touching_the_server()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { MemoryBytes = 128L << 20 });
        var r = await _host.ExecuteAsync(session.Id, "python3 -c 'x = bytearray(1 << 30); print(len(x))'", timeoutSeconds: 60);
        Assert.That(r.ExitCode, Is.EqualTo(137), r.Stderr);
        Assert.That(r.OomKilled, Is.True);
        Assert.That((await _host.ExecuteAsync(session.Id, "echo alive")).Stdout, Is.EqualTo("alive\n"));
        Assert.That((await _host.Http.GetAsync("/healthz")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task Idle_sessions_expire_and_their_container_is_removed()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { IdleTimeoutSeconds = 2 });
        var container = await ContainerOfAsync(session.Id);
        await Task.Delay(3500);
        Assert.That((await _host.Http.GetAsync($"/v1/sessions/{session.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That(await Engine.Docker.InspectContainerAsync(container, CancellationToken.None), Is.Null);
    }

    [Test]
    public async Task Keepalive_extends_the_idle_deadline_but_never_past_the_maximum_lifetime()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { IdleTimeoutSeconds = 2, MaxLifetimeSeconds = 5 });
        for (var i = 0; i < 3; i++)
        {
            await Task.Delay(1200);
            var kept = await _host.Http.PostAsync($"/v1/sessions/{session.Id}/keepalive", null);
            Assert.That(kept.StatusCode, Is.EqualTo(HttpStatusCode.OK), $"keepalive {i}");
            var info = await kept.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo);
            Assert.That(info!.ExpiresAt, Is.LessThanOrEqualTo(info.MaxExpiresAt));
        }
        // 3.6 s in: alive only thanks to the keepalives; the 5 s lifetime ends it whatever we do.
        await Task.Delay(2500);
        await _host.Http.PostAsync($"/v1/sessions/{session.Id}/keepalive", null);
        await Task.Delay(1000);
        Assert.That((await _host.Http.GetAsync($"/v1/sessions/{session.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task A_running_command_counts_as_activity()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { IdleTimeoutSeconds = 1 });
        var r = await _host.ExecuteAsync(session.Id, "sleep 2.5; echo done");
        Assert.That(r.Stdout, Is.EqualTo("done\n"));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task A_container_removed_behind_the_servers_back_is_reported_gone()
    {
        var session = await _host.CreateSessionAsync();
        await Engine.Docker.RemoveContainerAsync(await ContainerOfAsync(session.Id), CancellationToken.None);
        var response = await _host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/commands", new ExecuteRequest { Command = "true" }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await ServerHost.ProblemAsync(response)).GetProperty("code").GetString(), Is.EqualTo("session_not_found"));
        Assert.That((await _host.Http.GetAsync($"/v1/sessions/{session.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task Listing_filters_by_user_and_metadata()
    {
        var a = await _host.CreateSessionAsync(new CreateSessionRequest { Metadata = new Dictionary<string, string> { ["team"] = "red" } });
        var b = await _host.CreateSessionAsync(new CreateSessionRequest { Metadata = new Dictionary<string, string> { ["team"] = "blue" } });
        var red = await _host.Http.GetFromJsonAsync("/v1/sessions?metadata[team]=red", SandboxJsonContext.Default.SessionList);
        Assert.That(red!.Sessions.Select(s => s.Id), Is.EqualTo(new[] { a.Id }));
        await _host.DeleteSessionAsync(a.Id);
        await _host.DeleteSessionAsync(b.Id);
    }

    [Test]
    public async Task Create_rejects_what_the_server_does_not_allow()
    {
        async Task<string?> Code(CreateSessionRequest request)
        {
            var response = await _host.Http.PostAsJsonAsync("/v1/sessions", request, SandboxJsonContext.Default.CreateSessionRequest);
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest), await response.Content.ReadAsStringAsync());
            return (await ServerHost.ProblemAsync(response)).GetProperty("code").GetString();
        }
        Assert.That(await Code(new CreateSessionRequest { Image = "ubuntu:22.04" }), Is.EqualTo("invalid_request"));
        Assert.That(await Code(new CreateSessionRequest { MemoryBytes = 1L << 40 }), Is.EqualTo("invalid_request"));
        Assert.That(await Code(new CreateSessionRequest { NetworkMode = "host" }), Is.EqualTo("invalid_request"));
        Assert.That(await Code(new CreateSessionRequest { Environment = new Dictionary<string, string> { ["1BAD"] = "x" } }), Is.EqualTo("invalid_request"));
        Assert.That(await Code(new CreateSessionRequest { Runtime = "kata" }), Is.EqualTo("invalid_request"));
    }

    [Test]
    public async Task Session_environment_reaches_every_command()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { Environment = new Dictionary<string, string> { ["GREETING"] = "hi there" } });
        Assert.That((await _host.ExecuteAsync(session.Id, "echo \"$GREETING\"")).Stdout, Is.EqualTo("hi there\n"));
        await _host.ExecuteAsync(session.Id, "unset GREETING");
        Assert.That((await _host.ExecuteAsync(session.Id, "echo \"[${GREETING-unset}]\"")).Stdout, Is.EqualTo("[unset]\n"), "like any exported variable, an unset sticks");
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task Per_user_storage_survives_the_session_and_can_be_deleted()
    {
        var user = "user-" + Guid.NewGuid().ToString("N")[..6];
        var first = await _host.CreateSessionAsync(new CreateSessionRequest { UserId = user });
        Assert.That(first.PersistentStoragePath, Is.EqualTo("/home/sandbox/persist"));
        var write = await _host.ExecuteAsync(first.Id, "echo kept > /home/sandbox/persist/note && echo ok");
        Assert.That(write.Stdout, Is.EqualTo("ok\n"), write.Stderr);
        await _host.DeleteSessionAsync(first.Id);

        var second = await _host.CreateSessionAsync(new CreateSessionRequest { UserId = user });
        Assert.That((await _host.ExecuteAsync(second.Id, "cat /home/sandbox/persist/note")).Stdout, Is.EqualTo("kept\n"));
        var inUse = await _host.Http.DeleteAsync($"/v1/users/{user}/storage");
        Assert.That(inUse.StatusCode, Is.EqualTo(HttpStatusCode.Conflict));
        await _host.DeleteSessionAsync(second.Id);
        Assert.That((await _host.Http.DeleteAsync($"/v1/users/{user}/storage")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));

        var third = await _host.CreateSessionAsync(new CreateSessionRequest { UserId = user });
        Assert.That((await _host.ExecuteAsync(third.Id, "ls -A /home/sandbox/persist | wc -l")).Stdout, Is.EqualTo("0\n"));
        await _host.DeleteSessionAsync(third.Id);
        await _host.Http.DeleteAsync($"/v1/users/{user}/storage");
    }

    [Test]
    public async Task A_gvisor_session_runs_commands_under_the_gvisor_kernel()
    {
        var info = await Engine.Docker.GetInfoAsync(CancellationToken.None);
        if (!info.Runtimes.Contains("runsc"))
        {
            Assert.Ignore("runsc is not registered with this engine (scripts/ensure-engine.sh installs it on Debian).");
        }
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { Runtime = "runsc" });
        Assert.That(session.Runtime, Is.EqualTo("runsc"));
        var r = await _host.ExecuteAsync(session.Id, "dmesg 2>/dev/null | head -n 3; echo; cd /tmp && pwd");
        Assert.That(r.Stdout, Does.Contain("gVisor"));
        Assert.That(r.Stdout, Does.EndWith("/tmp\n"));
        await _host.DeleteSessionAsync(session.Id);
    }

    private async Task<string> ContainerOfAsync(string sessionId)
    {
        var volumes = await Engine.Docker.ListVolumesAsync("org.sandboxkit.session", sessionId, CancellationToken.None);
        return volumes.Single().Labels["org.sandboxkit.container"];
    }
}
