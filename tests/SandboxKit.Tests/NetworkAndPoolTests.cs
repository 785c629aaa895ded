using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Network-enabled sessions on an internal network, and the warm pool.</summary>
[TestFixture]
public sealed class NetworkAndPoolTests
{
    [Test]
    public async Task Sessions_on_an_allowed_internal_network_reach_each_other_and_nothing_else()
    {
        var network = "sk-test-net-" + Guid.NewGuid().ToString("N")[..8];
        // --internal: traffic only between containers on this network, no route out of the machine.
        Docker("network", "create", "--internal", "--label", "org.sandboxkit.test=1", network);
        try
        {
            await using var host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:AllowedNetworks:0"] = network });
            var server = await host.CreateSessionAsync(new CreateSessionRequest { NetworkMode = network });
            var client = await host.CreateSessionAsync(new CreateSessionRequest { NetworkMode = network });
            var isolated = await host.CreateSessionAsync();
            Assert.That(server.NetworkMode, Is.EqualTo(network));

            var address = (await host.ExecuteAsync(server.Id, "hostname -I")).Stdout.Trim().Split(' ')[0];
            Assert.That(IPAddress.TryParse(address, out _), Is.True, address);
            await host.Http.PostAsJsonAsync($"/v1/sessions/{server.Id}/processes",
                new StartProcessRequest { Command = "cd /tmp && echo hello-from-server > index.html && python3 -m http.server 8000" },
                SandboxJsonContext.Default.StartProcessRequest);

            var fetched = await host.ExecuteAsync(client.Id, $"for i in $(seq 50); do curl -s -m 2 http://{address}:8000/index.html && break; sleep 0.1; done", timeoutSeconds: 30);
            Assert.That(fetched.Stdout, Is.EqualTo("hello-from-server\n"));
            Assert.That((await host.ExecuteAsync(client.Id, "ls /sys/class/net | sort | tr '\\n' ' '")).Stdout, Does.Contain("eth0"));

            var blocked = await host.ExecuteAsync(isolated.Id, $"curl -s -m 2 http://{address}:8000/index.html; echo rc=$?", timeoutSeconds: 30);
            Assert.That(blocked.Stdout, Does.Not.Contain("hello-from-server"));
            Assert.That(blocked.Stdout, Does.Contain("rc=7"), "no route without a network");

            foreach (var s in new[] { server, client, isolated })
            {
                await host.DeleteSessionAsync(s.Id);
            }
            await host.DisposeAsync();
            Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
        }
        finally
        {
            Docker("network", "rm", network);
        }
    }

    [Test]
    public async Task The_warm_pool_hands_out_fresh_containers_and_never_reuses_one()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:WarmPoolSize"] = "1" });
        var seen = new HashSet<string>();
        for (var i = 0; i < 3; i++)
        {
            var pool = (SandboxKit.Server.Sessions.WarmPool)host.Services.GetService(typeof(SandboxKit.Server.Sessions.WarmPool))!;
            for (var wait = 0; wait < 100 && pool.ReadyCount == 0; wait++)
            {
                await Task.Delay(100);
            }
            var session = await host.CreateSessionAsync();
            var container = (await Engine.Docker.ListVolumesAsync("org.sandboxkit.session", session.Id, CancellationToken.None)).Single().Labels["org.sandboxkit.container"];
            var name = (await Engine.Docker.InspectContainerAsync(container, CancellationToken.None))!.Name;
            Assert.That(name, Does.Contain("-pool-"), "taken from the pool");
            Assert.That(seen.Add(container), Is.True, "a container is never handed out twice");
            // A fresh sandbox: nothing left by an earlier session.
            Assert.That((await host.ExecuteAsync(session.Id, "ls -A /workspace; test -e /tmp/mark && echo dirty-tmp; true")).Stdout, Is.Empty);
            await host.ExecuteAsync(session.Id, "touch /workspace/mark /tmp/mark");
            await host.DeleteSessionAsync(session.Id);
            Assert.That(await Engine.Docker.InspectContainerAsync(container, CancellationToken.None), Is.Null, "removed with its session");
        }
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero, "the pool's spare container is removed at shutdown");
    }

    [Test]
    public async Task The_openapi_document_describes_the_api()
    {
        await using var host = await ServerHost.StartAsync();
        var json = await host.Http.GetStringAsync("/openapi/v1.json");
        Assert.That(json, Does.Contain("\"/v1/sessions\"").And.Contain("\"/execute\"").And.Contain("/v1/sessions/{id}/commands"));
    }

    private static void Docker(params string[] args)
    {
        var info = new ProcessStartInfo("docker") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var p = Process.Start(info)!;
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, $"docker {string.Join(' ', args)}: {p.StandardError.ReadToEnd()}");
    }
}
