using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>What goes wrong behind the server's back: a container killed mid-stream, a supervisor that stops answering.</summary>
[TestFixture]
public sealed class FaultDrillTests : SessionFixture
{
    protected override IDictionary<string, string?> Settings => new Dictionary<string, string?>
    {
        ["Sandbox:SupervisorKeepaliveSeconds"] = "1",
        ["Sandbox:SupervisorKeepaliveTimeoutSeconds"] = "2",
    };

    [Test]
    public async Task A_container_killed_during_a_stream_ends_it_with_a_clean_error_and_the_session_is_gone()
    {
        using var client = new SandboxClient(Host.BaseAddress);
        var session = await client.CreateSessionAsync();
        var events = new List<CommandEvent>();
        var streamed = Task.Run(async () =>
        {
            await foreach (var e in session.StreamAsync("for i in $(seq 1 600); do echo tick $i; sleep 0.1; done"))
            {
                events.Add(e);
            }
        });
        while (events.Count < 3 && !streamed.IsCompleted)
        {
            await Task.Delay(50);
        }
        await Docker("kill", ContainerName(session.Id));

        var error = await Assert.ThrowsAsync<SandboxException>(async () => await streamed.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.That(error!.Code, Is.EqualTo(SandboxErrorCodes.StreamError));
        Assert.That(error.Message, Does.Contain("session").IgnoreCase);
        Assert.That(events.Where(e => e.Type == CommandEventTypes.Stdout), Is.Not.Empty, "output up to the kill was delivered");

        var gone = await Host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/commands", new ExecuteRequest { Command = "true" }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(gone.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await Host.Http.GetAsync($"/v1/sessions/{session.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That(await Engine.Docker.InspectContainerAsync(ContainerName(session.Id), CancellationToken.None), Is.Null, "its container is removed");
    }

    [Test]
    public async Task A_supervisor_that_stops_answering_fails_requests_by_deadline_and_recovers_when_it_answers_again()
    {
        var session = await Host.CreateSessionAsync();
        var pid = (await Docker("inspect", "-f", "{{.State.Pid}}", ContainerName(session.Id))).Trim();
        var running = Host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/commands", new ExecuteRequest { Command = "sleep 60; echo never" }, SandboxJsonContext.Default.ExecuteRequest);
        await Task.Delay(500);
        await Run("kill", "-STOP", pid);
        try
        {
            var watch = Stopwatch.StartNew();
            var cut = await running.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.That(cut.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            Assert.That((await ServerHost.ProblemAsync(cut)).GetProperty("code").GetString(), Is.EqualTo("supervisor_unavailable"));
            Assert.That((await ServerHost.ProblemAsync(cut)).GetProperty("detail").GetString(), Does.Contain("did not answer"));

            var info = await Host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}", SandboxJsonContext.Default.SessionInfo);
            Assert.That(info!.Status, Is.EqualTo("unresponsive"));

            // A new request does not hang either: it fails within the reconnect deadline.
            watch.Restart();
            var next = await Host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/commands", new ExecuteRequest { Command = "echo hi" }, SandboxJsonContext.Default.ExecuteRequest);
            Assert.That(next.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(20)));
        }
        finally
        {
            await Run("kill", "-CONT", pid);
        }
        var back = await Host.ExecuteAsync(session.Id, "echo back");
        Assert.That(back.Stdout, Is.EqualTo("back\n"));
        var again = await Host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}", SandboxJsonContext.Default.SessionInfo);
        Assert.That(again!.Status, Is.EqualTo("running"));
        await Host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task A_stopped_supervisor_does_not_keep_its_session_from_being_deleted()
    {
        var session = await Host.CreateSessionAsync();
        var pid = (await Docker("inspect", "-f", "{{.State.Pid}}", ContainerName(session.Id))).Trim();
        await Run("kill", "-STOP", pid);
        var deleted = await Host.Http.DeleteAsync($"/v1/sessions/{session.Id}").WaitAsync(TimeSpan.FromSeconds(60));
        Assert.That(deleted.StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        Assert.That(await Engine.Docker.InspectContainerAsync(ContainerName(session.Id), CancellationToken.None), Is.Null);
    }

    private string ContainerName(string sessionId) => $"sk-{Host.Instance}-{sessionId}";

    private static async Task<string> Docker(params string[] arguments) => await Run("docker", arguments);

    private static async Task<string> Run(string program, params string[] arguments)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }
        using var process = Process.Start(info)!;
        var output = await process.StandardOutput.ReadToEndAsync();
        var error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.That(process.ExitCode, Is.Zero, $"{program} {string.Join(' ', arguments)}: {error}");
        return output;
    }
}
