using System.Net;
using System.Net.Http.Json;
using SandboxKit.Contracts;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Tests;

/// <summary>The foundation: a real engine answers, the sandbox image exists, and a container from it runs a command.</summary>
[TestFixture]
public sealed class FoundationTests
{
    [Test]
    public async Task Healthz_reports_engine_and_image_healthy()
    {
        await using var host = await ServerHost.StartAsync();
        var response = await host.Http.GetAsync("/healthz");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        var report = await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.HealthReport);
        Assert.Multiple(() =>
        {
            Assert.That(report!.Status, Is.EqualTo("healthy"));
            Assert.That(report.Engine!.Reachable, Is.True);
            Assert.That(report.Engine!.Version, Is.Not.Empty);
            Assert.That(report.Image!.Present, Is.True);
            Assert.That(report.Image!.Name, Is.EqualTo(Engine.Image));
        });
    }

    [Test]
    public async Task Healthz_is_503_when_the_engine_does_not_answer()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:DockerEndpoint"] = "unix:///tmp/sandboxkit-no-such-engine.sock" });
        var response = await host.Http.GetAsync("/healthz");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        var report = await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.HealthReport);
        Assert.That(report!.Engine!.Reachable, Is.False);
        Assert.That(report.Engine!.Error, Does.Contain("not reachable"));
    }

    [Test]
    public async Task Healthz_is_503_when_the_image_is_missing()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:Image"] = "sandboxkit/no-such-image:0" });
        var response = await host.Http.GetAsync("/healthz");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        var report = await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.HealthReport);
        Assert.That(report!.Engine!.Reachable, Is.True);
        Assert.That(report.Image!.Present, Is.False);
    }

    [Test]
    public async Task A_container_from_the_sandbox_image_runs_a_command()
    {
        var instance = "test" + Guid.NewGuid().ToString("N")[..8];
        TestRun.Track(instance);
        var id = await Engine.Docker.RunContainerAsync(new ContainerSpec
        {
            Name = $"sk-{instance}-probe",
            Image = Engine.Image,
            Labels = new Dictionary<string, string> { [SessionLabels.Instance] = instance },
            Command = ["sleep", "60"],
            MemoryBytes = 128L << 20,
            Cpus = 0.5,
            PidsLimit = 64,
            NetworkMode = "none",
        }, CancellationToken.None);
        try
        {
            var outcome = await Engine.Docker.ExecAsync(id, ["bash", "-c", "echo hello from $(id -un); python3 --version; node --version"], CancellationToken.None);
            Assert.That(outcome.ExitCode, Is.EqualTo(0));
            Assert.That(outcome.Output, Does.StartWith("hello from sandbox\nPython 3."));
            Assert.That(outcome.Output, Does.Contain("\nv"));
        }
        finally
        {
            await Engine.Docker.RemoveContainerAsync(id, CancellationToken.None);
        }
        Assert.That(await Engine.CountResourcesAsync(instance), Is.Zero);
    }
}
