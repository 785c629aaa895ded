using System.Net;
using System.Net.Http.Json;
using Microsoft.Extensions.Logging.Abstractions;
using SandboxKit.Contracts;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;
using SandboxKit.TestEngines;

namespace SandboxKit.Tests;

/// <summary>
/// The engine itself restarted under live sessions, on a private engine of the test's own (the machine's main engine is
/// never touched): 503 meanwhile, then old sessions answer (live restore) or are reported gone, new ones work, no leak.
/// </summary>
[TestFixture]
[NonParallelizable]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class EngineRestartTests
{
    [TestCase(false)]
    [TestCase(true)]
    public async Task An_engine_restart_under_live_sessions_is_survived(bool liveRestore)
    {
        var image = await TestImages.GlibcOnlyAsync();
        await using var engine = await PrivateEngine.StartAsync("engine-restart", new PrivateEngineOptions { LiveRestore = liveRestore, Images = [image] });
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:DockerEndpoint"] = engine.Endpoint,
            ["Sandbox:Image"] = image,
            ["Sandbox:ReaperIntervalSeconds"] = "0.5",
        });
        var old = await host.CreateSessionAsync();
        Assert.That((await host.ExecuteAsync(old.Id, "echo before > /workspace/f; read -r x < /workspace/f; echo $x")).Stdout, Is.EqualTo("before\n"));

        await engine.StopAsync();
        var create = await host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(create.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        Assert.That((await ServerHost.ProblemAsync(create)).GetProperty("code").GetString(), Is.EqualTo("engine_unavailable"));
        Assert.That(create.Headers.RetryAfter, Is.Not.Null);
        var meanwhile = await host.Http.PostAsJsonAsync($"/v1/sessions/{old.Id}/commands", new ExecuteRequest { Command = "read -r x < /workspace/f; echo $x" }, SandboxJsonContext.Default.ExecuteRequest);
        if (liveRestore)
        {
            // The container runs on without its engine, and the supervisor is reached without it.
            await ServerHost.EnsureAsync(meanwhile, HttpStatusCode.OK);
        }
        else
        {
            Assert.That(meanwhile.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable), await meanwhile.Content.ReadAsStringAsync());
        }

        await engine.RestartAsync();
        var after = await host.Http.PostAsJsonAsync($"/v1/sessions/{old.Id}/commands", new ExecuteRequest { Command = "read -r x < /workspace/f; echo $x" }, SandboxJsonContext.Default.ExecuteRequest);
        if (liveRestore)
        {
            await ServerHost.EnsureAsync(after, HttpStatusCode.OK);
            Assert.That((await after.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo("before\n"));
        }
        else
        {
            Assert.That(after.StatusCode, Is.EqualTo(HttpStatusCode.NotFound), "its container stopped with the engine: reported gone");
            Assert.That((await ServerHost.ProblemAsync(after)).GetProperty("code").GetString(), Is.EqualTo("session_not_found"));
        }

        var fresh = await host.CreateSessionAsync();
        Assert.That((await host.ExecuteAsync(fresh.Id, "echo fresh")).Stdout, Is.EqualTo("fresh\n"));
        await host.DeleteSessionAsync(fresh.Id);
        await host.DeleteSessionAsync(old.Id);
        using var docker = new DockerEngine(engine.Endpoint, NullLogger<DockerEngine>.Instance);
        // A delete the engine does not let go of at once (a volume still in use) is finished by the reaper.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((await docker.ListVolumesAsync(SessionLabels.Instance, host.Instance, CancellationToken.None)).Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(250);
        }
        await host.DisposeAsync();

        var containers = await docker.ListContainersAsync(SessionLabels.Instance, host.Instance, CancellationToken.None);
        var volumes = await docker.ListVolumesAsync(SessionLabels.Instance, host.Instance, CancellationToken.None);
        Assert.That(containers.Select(c => c.Name).Concat(volumes.Select(v => v.Name)), Is.Empty, "nothing leaked in the engine");
        Assert.That(Engine.DiskImages(host.Instance), Is.Empty, "nothing leaked on disk");
    }
}
