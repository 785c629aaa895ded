using System.Net;
using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>The server as a real process: killed with SIGKILL and started again, it adopts every live session from engine labels.</summary>
[TestFixture]
public sealed class RestartTests
{
    private static readonly Dictionary<string, string> Settings = new()
    {
        ["Sandbox:WarmPoolSize"] = "1",
        ["Sandbox:ReaperIntervalSeconds"] = "0.5",
    };

    [Test]
    public async Task Sessions_survive_a_SIGKILLed_server_with_their_files_and_state()
    {
        var instance = "test" + Guid.NewGuid().ToString("N")[..8];
        TestRun.Track(instance);
        var server = await ServerProcess.StartAsync(instance, settings: Settings);
        var http = server.Http;
        string sessionId;
        try
        {
            var created = await http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { IdleTimeoutSeconds = 600 }, SandboxJsonContext.Default.CreateSessionRequest);
            sessionId = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
            var expired = await http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { MaxLifetimeSeconds = 2 }, SandboxJsonContext.Default.CreateSessionRequest);
            Assert.That(expired.StatusCode, Is.EqualTo(HttpStatusCode.Created));
            await Execute(http, sessionId, "cd /tmp && export KEPT=yes && echo data > /workspace/file.txt");
        }
        finally
        {
            await server.KillAsync();
        }

        // While the server is dead the short-lived session passes its maximum lifetime.
        await Task.Delay(2500);
        await using var restarted = await ServerProcess.StartAsync(instance, server.Port, Settings);
        http = restarted.Http;
        try
        {
            var list = await http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList);
            Assert.That(list!.Sessions.Select(s => s.Id), Is.EqualTo(new[] { sessionId }), "the live session is adopted, the expired one removed");
            var r = await Execute(http, sessionId, "cat /workspace/file.txt; echo $KEPT; pwd");
            Assert.That(r.Stdout, Is.EqualTo("data\nyes\n/tmp\n"));
            Assert.That((await http.DeleteAsync($"/v1/sessions/{sessionId}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        }
        finally
        {
            await restarted.KillAsync();
            await server.DisposeAsync();
            await Engine.RemoveAllAsync(instance);
        }
    }

    [Test]
    public async Task An_egress_policy_survives_a_SIGKILLed_server_and_applies_again_after_the_restart()
    {
        var instance = "test" + Guid.NewGuid().ToString("N")[..8];
        var state = Path.Combine(Path.GetTempPath(), "sandboxkit-state-" + instance);
        var settings = new Dictionary<string, string>
        {
            ["Sandbox:WarmPoolSize"] = "0",
            ["Sandbox:StateDirectory"] = state,
            ["Sandbox:Egress:AllowedRulePatterns:0"] = "*.test",
            ["Sandbox:Egress:Hosts:pypi.test"] = "127.0.0.1",
            ["Sandbox:Egress:Hosts:other.test"] = "127.0.0.1",
            ["Sandbox:Egress:AllowedPrivateRanges:0"] = "127.0.0.1/32",
        };
        var server = await ServerProcess.StartAsync(instance, settings: settings);
        ServerProcess? restarted = null;
        try
        {
            var created = await server.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest
            {
                Egress = new EgressPolicyRequest
                {
                    Allow = ["pypi.test"],
                    Headers = [new EgressHeaderRule { Match = "pypi.test", Headers = new Dictionary<string, string> { ["Authorization"] = "Bearer kept-secret" } }],
                },
            }, SandboxJsonContext.Default.CreateSessionRequest);
            await ServerHost.EnsureAsync(created, HttpStatusCode.Created);
            var sessionId = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
            const string Probe = "getent hosts pypi.test >/dev/null && echo allowed; getent hosts other.test >/dev/null || echo denied";
            Assert.That((await Execute(server.Http, sessionId, Probe)).Stdout, Is.EqualTo("allowed\ndenied\n"));
            await server.KillAsync();

            restarted = await ServerProcess.StartAsync(instance, server.Port, settings);
            var info = await restarted.Http.GetStringAsync($"/v1/sessions/{sessionId}");
            Assert.That(info, Does.Contain("pypi.test").And.Contain("Authorization"), "the session shows its policy and header names again");
            Assert.That(info, Does.Not.Contain("kept-secret"));
            // A fresh name, so no answer cached by the supervisor before the kill can stand in for the gateway's.
            await ServerHost.EnsureAsync(await restarted.Http.PatchAsJsonAsync($"/v1/sessions/{sessionId}/egress",
                new EgressPolicyRequest { Allow = ["pypi.test", "other.test"] }, SandboxJsonContext.Default.EgressPolicyRequest), HttpStatusCode.OK);
            Assert.That((await Execute(restarted.Http, sessionId, "getent hosts other.test >/dev/null && echo allowed")).Stdout, Is.EqualTo("allowed\n"),
                "the restarted server's gateway answers the session's relay");
            var policyFile = Path.Combine(state, "egress", sessionId + ".json");
            Assert.That(File.Exists(policyFile), Is.True);
            if (!OperatingSystem.IsWindows())
            {
                Assert.That(File.GetUnixFileMode(policyFile) & (UnixFileMode.GroupRead | UnixFileMode.OtherRead), Is.EqualTo(UnixFileMode.None), "root-only: it holds header values");
            }
            Assert.That((await restarted.Http.DeleteAsync($"/v1/sessions/{sessionId}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
            Assert.That(File.Exists(policyFile), Is.False, "forgotten with its session");
        }
        finally
        {
            if (restarted is not null)
            {
                await restarted.KillAsync();
                await restarted.DisposeAsync();
            }
            await server.DisposeAsync();
            await Engine.RemoveAllAsync(instance);
            Directory.Delete(state, recursive: true);
        }
    }

    [Test]
    public async Task A_keyed_command_cut_off_by_a_SIGKILLed_server_runs_once_and_its_retry_gets_the_first_result()
    {
        var instance = "test" + Guid.NewGuid().ToString("N")[..8];
        var settings = new Dictionary<string, string> { ["Sandbox:WarmPoolSize"] = "0" };
        var server = await ServerProcess.StartAsync(instance, settings: settings);
        var key = Guid.NewGuid().ToString();
        var body = new ExecuteRequest { Command = "echo run >> /workspace/runs; sleep 3; echo \"done $RANDOM$RANDOM\"" };
        string sessionId;
        try
        {
            var created = await server.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
            sessionId = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
            var first = server.Http.SendAsync(Keyed($"/v1/sessions/{sessionId}/commands", body, key));
            await WaitUntilAsync(async () => (await Execute(server.Http, sessionId, "cat /workspace/runs 2>/dev/null")).Stdout == "run\n");
            await server.KillAsync();
            Assert.That(async () => await first, Throws.InstanceOf<HttpRequestException>(), "the first caller lost its server");
        }
        finally
        {
            await server.DisposeAsync();
        }

        await using var restarted = await ServerProcess.StartAsync(instance, server.Port, settings);
        try
        {
            // The retry joins the command the supervisor still runs (or gets its kept result), and so does the next one.
            var retry = await restarted.Http.SendAsync(Keyed($"/v1/sessions/{sessionId}/commands", body, key));
            await ServerHost.EnsureAsync(retry, HttpStatusCode.OK);
            var result = (await retry.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
            Assert.That(result.Stdout, Does.StartWith("done "));
            var again = await restarted.Http.SendAsync(Keyed($"/v1/sessions/{sessionId}/commands", body, key));
            Assert.That((await again.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo(result.Stdout));
            Assert.That((await Execute(restarted.Http, sessionId, "cat /workspace/runs")).Stdout, Is.EqualTo("run\n"), "the command ran once");

            var other = await restarted.Http.SendAsync(Keyed($"/v1/sessions/{sessionId}/commands", new ExecuteRequest { Command = "echo other" }, key));
            Assert.That(other.StatusCode, Is.EqualTo(HttpStatusCode.UnprocessableEntity), "the same key with another command");
            await restarted.Http.DeleteAsync($"/v1/sessions/{sessionId}");
        }
        finally
        {
            await restarted.KillAsync();
            await Engine.RemoveAllAsync(instance);
        }
    }

    [Test]
    public async Task A_graceful_stop_removes_the_warm_pool_and_keeps_the_sessions()
    {
        var instance = "test" + Guid.NewGuid().ToString("N")[..8];
        var server = await ServerProcess.StartAsync(instance, settings: new Dictionary<string, string> { ["Sandbox:WarmPoolSize"] = "2" });
        try
        {
            var created = await server.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
            var session = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!;
            // The session may have been served from the pool, whose container keeps its pool name: find it by its claim.
            var claim = (await Engine.Docker.ListVolumesAsync(SandboxKit.Server.Sessions.SessionLabels.Session, session.Id, CancellationToken.None)).Single();
            var sessionContainer = claim.Labels[SandboxKit.Server.Sessions.SessionLabels.Container];
            await WaitUntilAsync(async () => (await PoolContainersAsync(instance, sessionContainer)) == 2);

            Assert.That(await server.TerminateAsync(TimeSpan.FromSeconds(60)), Is.Zero, "a clean exit");
            var containers = await Engine.Docker.ListContainersAsync(SandboxKit.Server.Sessions.SessionLabels.Instance, instance, CancellationToken.None);
            Assert.That(containers.Select(c => c.Id), Is.EqualTo(new[] { sessionContainer }), "no pooled container outlives the server; the session lives on for the next start");
            Assert.That(session.Id, Is.Not.Empty);
            // The pool's disks and the ready disks go with it (the server disposes what it holds, not only stops).
            Assert.That(Engine.DiskImages(instance), Has.Length.EqualTo(1), "only the live session's workspace disk is left");
        }
        finally
        {
            await server.DisposeAsync();
            await Engine.RemoveAllAsync(instance);
        }

        static async Task<int> PoolContainersAsync(string instance, string sessionContainer) =>
            (await Engine.Docker.ListContainersAsync(SandboxKit.Server.Sessions.SessionLabels.Instance, instance, CancellationToken.None))
                .Count(c => c.Name.Contains("-pool-", StringComparison.Ordinal) && c.Id != sessionContainer);
    }

    private static HttpRequestMessage Keyed(string path, ExecuteRequest body, string key)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body, SandboxJsonContext.Default.ExecuteRequest) };
        request.Headers.Add("Idempotency-Key", key);
        return request;
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail("The condition did not hold within 60 s.");
            }
            await Task.Delay(100);
        }
    }

    private static async Task<ExecuteResult> Execute(HttpClient http, string session, string command)
    {
        var response = await http.PostAsJsonAsync($"/v1/sessions/{session}/commands", new ExecuteRequest { Command = command }, SandboxJsonContext.Default.ExecuteRequest);
        await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
    }
}
