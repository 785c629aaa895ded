using System.Net;
using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Idempotency keys on work-starting POSTs, and background processes.</summary>
[TestFixture]
public sealed class IdempotencyAndProcessTests : SessionFixture
{

    private HttpRequestMessage Post(string path, ExecuteRequest body, string key)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body, SandboxJsonContext.Default.ExecuteRequest) };
        request.Headers.Add("Idempotency-Key", key);
        return request;
    }

    [Test]
    public async Task A_repeated_key_runs_the_command_once_and_returns_the_first_answer()
    {
        var key = Guid.NewGuid().ToString();
        var body = new ExecuteRequest { Command = "echo x >> /workspace/idem.log; sleep 1; wc -l < /workspace/idem.log; echo $RANDOM" };
        var path = $"/v1/sessions/{SessionId}/commands";
        // Two at once (the second joins the running one), then a late repeat.
        var concurrent = await Task.WhenAll(Host.Http.SendAsync(Post(path, body, key)), Host.Http.SendAsync(Post(path, body, key)));
        var late = await Host.Http.SendAsync(Post(path, body, key));
        var texts = await Task.WhenAll(concurrent.Append(late).Select(r => r.Content.ReadAsStringAsync()));
        Assert.That(texts.Distinct().Count(), Is.EqualTo(1), string.Join("\n", texts));
        Assert.That(late.Headers.Contains("Idempotent-Replayed"), Is.True);
        Assert.That((await Host.ExecuteAsync(SessionId, "wc -l < /workspace/idem.log")).Stdout, Is.EqualTo("1\n"));

        var changed = await Host.Http.SendAsync(Post(path, new ExecuteRequest { Command = "echo other" }, key));
        Assert.That(changed.StatusCode, Is.EqualTo(HttpStatusCode.UnprocessableEntity));
    }

    [Test]
    public async Task A_repeated_create_makes_oneSessionId()
    {
        var key = Guid.NewGuid().ToString();
        async Task<string> Create()
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/sessions") { Content = JsonContent.Create(new CreateSessionRequest { Metadata = new Dictionary<string, string> { ["k"] = key } }, SandboxJsonContext.Default.CreateSessionRequest) };
            request.Headers.Add("Idempotency-Key", key);
            var response = await Host.Http.SendAsync(request);
            await ServerHost.EnsureAsync(response, HttpStatusCode.Created);
            return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
        }
        var ids = await Task.WhenAll(Create(), Create(), Create());
        Assert.That(ids.Distinct().Count(), Is.EqualTo(1));
        var list = await Host.Http.GetFromJsonAsync($"/v1/sessions?metadata[k]={key}", SandboxJsonContext.Default.SessionList);
        Assert.That(list!.Sessions, Has.Count.EqualTo(1));
        await Host.DeleteSessionAsync(ids[0]);
    }

    [Test]
    public async Task Background_processes_run_detached_take_stdin_report_output_and_can_be_killed()
    {
        var start = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/processes",
            new StartProcessRequest { Command = "echo ready; while read line; do echo \"got $line\"; done; echo bye; exit 4", KeepStdinOpen = true },
            SandboxJsonContext.Default.StartProcessRequest);
        await ServerHost.EnsureAsync(start, HttpStatusCode.Created);
        var process = (await start.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ProcessInfo))!;
        Assert.That(process.Status, Is.EqualTo("running"));
        var baseUrl = $"/v1/sessions/{SessionId}/processes/{process.Id}";

        // The session stays usable while the process runs.
        Assert.That((await Host.ExecuteAsync(SessionId, "echo meanwhile")).Stdout, Is.EqualTo("meanwhile\n"));

        var stdin = await Host.Http.PostAsJsonAsync(baseUrl + "/stdin", new SendStdinRequest { Text = "one\ntwo\n", Close = true }, SandboxJsonContext.Default.SendStdinRequest);
        Assert.That(stdin.StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        var info = await PollUntilExitedAsync(baseUrl);
        Assert.That(info.Result!.ExitCode, Is.EqualTo(4));

        var all = await Host.Http.GetFromJsonAsync(baseUrl + "/output?cursor=0", SandboxJsonContext.Default.ProcessOutput);
        Assert.That(string.Concat(all!.Events.Select(e => e.Data)), Is.EqualTo("ready\ngot one\ngot two\nbye\n"));
        var rest = await Host.Http.GetFromJsonAsync($"{baseUrl}/output?cursor={all.NextCursor}", SandboxJsonContext.Default.ProcessOutput);
        Assert.That(rest!.Events, Is.Empty);

        var sleeper = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/processes", new StartProcessRequest { Command = "sleep 600" }, SandboxJsonContext.Default.StartProcessRequest);
        var sleeperId = (await sleeper.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ProcessInfo))!.Id;
        Assert.That((await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/processes/{sleeperId}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        var killed = await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}/processes/{sleeperId}", SandboxJsonContext.Default.ProcessInfo);
        Assert.That(killed!.Status, Is.EqualTo("exited"));
        Assert.That(killed.Result!.ExitCode, Is.EqualTo(137));
        var list = await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}/processes", SandboxJsonContext.Default.ProcessList);
        Assert.That(list!.Processes.Select(p => p.Id), Does.Contain(process.Id).And.Contain(sleeperId));
        Assert.That((await Host.Http.GetAsync($"/v1/sessions/{SessionId}/processes/nope")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
    }

    private async Task<ProcessInfo> PollUntilExitedAsync(string url)
    {
        for (var i = 0; i < 100; i++)
        {
            var info = await Host.Http.GetFromJsonAsync(url, SandboxJsonContext.Default.ProcessInfo);
            if (info!.Status == "exited")
            {
                return info;
            }
            await Task.Delay(100);
        }
        Assert.Fail("The process did not exit within 10 s.");
        return null!;
    }
}
