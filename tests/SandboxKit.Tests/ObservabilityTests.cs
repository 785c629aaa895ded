using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Resource monitoring and usage accounting.</summary>
[TestFixture]
public sealed class ObservabilityTests
{
    [Test]
    public async Task Stats_show_the_containers_real_resource_use_and_usage_counts_commands()
    {
        await using var host = await ServerHost.StartAsync();
        var session = await host.CreateSessionAsync(new CreateSessionRequest { MemoryBytes = 256L << 20 });
        await host.ExecuteAsync(session.Id, "echo hi");
        await host.ExecuteAsync(session.Id, "sleep 5", timeoutSeconds: 0.5);
        // Hold ~64 MB in a background process while we read the stats.
        await host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/processes",
            new StartProcessRequest { Command = "python3 -c 'import time; x = bytearray(64 << 20); x[::4096] = b\"x\" * len(x[::4096]); time.sleep(30)'" },
            SandboxJsonContext.Default.StartProcessRequest);
        SessionStats? stats = null;
        for (var i = 0; i < 50 && (stats is null || stats.MemoryUsageBytes < 60L << 20); i++)
        {
            await Task.Delay(100);
            stats = await host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}/stats", SandboxJsonContext.Default.SessionStats);
        }
        Assert.That(stats!.MemoryLimitBytes, Is.EqualTo(256L << 20));
        Assert.That(stats.MemoryUsageBytes, Is.GreaterThan(60L << 20));
        Assert.That(stats.Pids, Is.GreaterThanOrEqualTo(2), "the supervisor and the command");
        Assert.That(stats.CpuSeconds, Is.GreaterThan(0));

        var usage = await host.Http.GetFromJsonAsync("/v1/usage", SandboxJsonContext.Default.UsageReport);
        Assert.Multiple(() =>
        {
            Assert.That(usage!.Tenant, Is.EqualTo("default"));
            Assert.That(usage.SessionsCreated, Is.EqualTo(1));
            Assert.That(usage.ActiveSessions, Is.EqualTo(1));
            Assert.That(usage.Commands, Is.EqualTo(2));
            Assert.That(usage.CommandsTimedOut, Is.EqualTo(1));
            Assert.That(usage.OutputBytes, Is.EqualTo(3));
            Assert.That(usage.CommandSeconds, Is.GreaterThan(0.4));
        });
        await host.DeleteSessionAsync(session.Id);
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }
}
