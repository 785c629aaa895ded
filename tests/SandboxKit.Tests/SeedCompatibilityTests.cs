using System.Net;
using System.Text;
using System.Text.Json;

namespace SandboxKit.Tests;

/// <summary>The seed README's three curl lines, byte for byte in shape, against the real server.</summary>
[TestFixture]
public sealed class SeedCompatibilityTests
{
    [Test]
    public async Task The_seed_readme_curl_lines_work_unchanged()
    {
        await using var host = await ServerHost.StartAsync();

        // curl -X POST http://your-vps:5000/create_session
        var created = await host.Http.PostAsync("/create_session", null);
        Assert.That(created.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        var body = JsonDocument.Parse(await created.Content.ReadAsStringAsync()).RootElement;
        Assert.That(body.GetProperty("status").GetString(), Is.EqualTo("created"));
        var id = body.GetProperty("session_id").GetString()!;

        // curl -X POST .../execute -H "Content-Type: application/json" -d '{"session_id": "...", "command": "echo Hello"}'
        async Task<JsonElement> Execute(string command)
        {
            var json = JsonSerializer.Serialize(new Dictionary<string, string> { ["session_id"] = id, ["command"] = command });
            var response = await host.Http.PostAsync("/execute", new StringContent(json, Encoding.UTF8, "application/json"));
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), await response.Content.ReadAsStringAsync());
            return JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        }
        var hello = await Execute("echo Hello");
        Assert.That(hello.GetProperty("exit_code").GetInt32(), Is.Zero);
        Assert.That(hello.GetProperty("output").GetString(), Is.EqualTo("Hello\n"));
        Assert.That(hello.EnumerateObject().Select(p => p.Name), Is.EquivalentTo(new[] { "exit_code", "output" }));

        var mixed = await Execute("echo one; echo two >&2; echo three; exit 7");
        Assert.That(mixed.GetProperty("output").GetString(), Is.EqualTo("one\ntwo\nthree\n"), "stdout and stderr together, in order");
        Assert.That(mixed.GetProperty("exit_code").GetInt32(), Is.EqualTo(7));

        await Execute("cd /tmp");
        Assert.That((await Execute("pwd")).GetProperty("output").GetString(), Is.EqualTo("/tmp\n"), "state persists, unlike the seed");

        // curl -X POST .../cleanup -H "Content-Type: application/json" -d '{"session_id": "..."}'
        var cleanup = await host.Http.PostAsync("/cleanup", new StringContent($"{{\"session_id\": \"{id}\"}}", Encoding.UTF8, "application/json"));
        Assert.That(cleanup.StatusCode, Is.EqualTo(HttpStatusCode.OK));

        var gone = await host.Http.PostAsync("/execute", new StringContent($"{{\"session_id\": \"{id}\", \"command\": \"true\"}}", Encoding.UTF8, "application/json"));
        Assert.That(gone.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        var missingField = await host.Http.PostAsync("/execute", new StringContent("{\"command\": \"true\"}", Encoding.UTF8, "application/json"));
        Assert.That(missingField.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));

        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }
}
