using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>The server as a real process: killed with SIGKILL and started again, it adopts every live session from engine labels.</summary>
[TestFixture]
public sealed class RestartTests
{
    [Test]
    public async Task Sessions_survive_a_SIGKILLed_server_with_their_files_and_state()
    {
        var instance = "test" + Guid.NewGuid().ToString("N")[..8];
        TestRun.Track(instance);
        var port = FreePort();
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(60) };
        var server = await StartServerAsync(instance, port, http);
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
            server.Kill(entireProcessTree: true);
            await server.WaitForExitAsync();
        }

        // While the server is dead the short-lived session passes its maximum lifetime.
        await Task.Delay(2500);
        server = await StartServerAsync(instance, port, http);
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
            server.Kill(entireProcessTree: true);
            await server.WaitForExitAsync();
            await Engine.RemoveAllAsync(instance);
        }
    }

    private static async Task<ExecuteResult> Execute(HttpClient http, string session, string command)
    {
        var response = await http.PostAsJsonAsync($"/v1/sessions/{session}/commands", new ExecuteRequest { Command = command }, SandboxJsonContext.Default.ExecuteRequest);
        await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
    }

    private static async Task<Process> StartServerAsync(string instance, int port, HttpClient http)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            ArgumentList =
            {
                Path.Combine(AppContext.BaseDirectory, "SandboxKit.Server.dll"),
                "--urls", $"http://127.0.0.1:{port}",
                $"--Sandbox:InstanceName={instance}",
                "--Sandbox:WarmPoolSize=1",
                "--Sandbox:ReaperIntervalSeconds=0.5",
            },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { TestContext.Progress.WriteLine("server: " + e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                if ((await http.GetAsync("/healthz")).StatusCode == HttpStatusCode.OK)
                {
                    return process;
                }
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(200);
        }
        process.Kill(entireProcessTree: true);
        Assert.Fail("The server process did not become healthy within 30 s.");
        return process;
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
