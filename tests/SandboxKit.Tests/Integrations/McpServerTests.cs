using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using SandboxKit.Samples;

namespace SandboxKit.Tests.Integrations;

/// <summary>The server's MCP endpoint, through the official C# MCP client, on a server with API keys.</summary>
[TestFixture]
public sealed class McpServerTests
{
    private const string AlphaKey = "alpha-mcp-key";
    private const string BetaKey = "beta-mcp-key";
    private ServerHost _host = null!;
    private McpClient _alpha = null!;
    private McpClient _beta = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Key"] = AlphaKey,
            ["Auth:ApiKeys:0:Tenant"] = "alpha",
            ["Auth:ApiKeys:1:Key"] = BetaKey,
            ["Auth:ApiKeys:1:Tenant"] = "beta",
        });
        _alpha = await ConnectAsync(AlphaKey);
        _beta = await ConnectAsync(BetaKey);
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        await _alpha.DisposeAsync();
        await _beta.DisposeAsync();
        await _host.DisposeAsync();
        var left = await Engine.CountResourcesAsync(_host.Instance);
        // Even when a test failed half-way, leave no container or volume behind; then report it.
        await Engine.RemoveAllAsync(_host.Instance);
        Assert.That(left, Is.Zero);
    }

    private Task<McpClient> ConnectAsync(string? key)
    {
        var options = new HttpClientTransportOptions
        {
            Endpoint = new Uri(_host.BaseAddress, "/mcp"),
            TransportMode = HttpTransportMode.StreamableHttp,
        };
        if (key is not null)
        {
            options.AdditionalHeaders = new Dictionary<string, string> { ["Authorization"] = "Bearer " + key };
        }
        return McpClient.CreateAsync(new HttpClientTransport(options));
    }

    private static JsonElement Structured(CallToolResult result) =>
        result.StructuredContent ?? throw new AssertionException("no structured content");

    private static async Task<string> CreateSessionAsync(McpClient client)
    {
        var created = Structured(await client.CallToolAsync("create_session"));
        Assert.That(created.GetProperty("status").GetString(), Is.EqualTo("ok"), created.GetRawText());
        return created.GetProperty("sessionId").GetString()!;
    }

    [Test]
    public async Task The_tools_are_listed_with_honest_annotations_and_schemas()
    {
        var tools = await _alpha.ListToolsAsync();
        var byName = tools.ToDictionary(t => t.Name, t => t.ProtocolTool);
        Assert.That(byName.Keys, Is.EquivalentTo(new[] { "create_session", "run_command", "run_code", "write_file", "read_file", "list_files", "delete_session" }));

        foreach (var name in new[] { "run_command", "run_code" })
        {
            var a = byName[name].Annotations!;
            Assert.That((a.DestructiveHint, a.IdempotentHint, a.ReadOnlyHint, a.OpenWorldHint), Is.EqualTo((true, false, false, false)), name);
        }
        foreach (var name in new[] { "read_file", "list_files" })
        {
            Assert.That(byName[name].Annotations!.ReadOnlyHint, Is.True, name);
            Assert.That(byName[name].Annotations!.OpenWorldHint, Is.False, name);
        }
        Assert.That(byName["write_file"].Annotations!.ReadOnlyHint, Is.False);
        Assert.That(byName["delete_session"].Annotations!.DestructiveHint, Is.True);
        Assert.That(byName.Values.Select(t => t.Annotations!.OpenWorldHint), Has.All.False);

        var run = byName["run_command"];
        Assert.That(run.Description, Does.Contain("sessionId").And.Contain("status"));
        Assert.That(run.InputSchema.GetProperty("required").EnumerateArray().Select(e => e.GetString()), Is.EquivalentTo(new[] { "sessionId", "command" }));
        Assert.That(run.OutputSchema!.Value.GetProperty("properties").TryGetProperty("exitCode", out _), Is.True);
    }

    [Test]
    public async Task A_session_is_created_used_and_deleted_through_the_tools()
    {
        var id = await CreateSessionAsync(_alpha);

        var echo = await _alpha.CallToolAsync("run_command", new Dictionary<string, object?> { ["sessionId"] = id, ["command"] = "cd /tmp && echo hi from $PWD" });
        Assert.That(echo.IsError, Is.Not.True);
        Assert.That(Structured(echo).GetProperty("stdout").GetString(), Is.EqualTo("hi from /tmp\n"));
        Assert.That(((TextContentBlock)echo.Content[0]).Text, Does.Contain("\"status\":\"ok\""), "the same JSON as text for clients without structured content");

        var failed = await _alpha.CallToolAsync("run_command", new Dictionary<string, object?> { ["sessionId"] = id, ["command"] = "exit 7" });
        Assert.That(failed.IsError, Is.True);
        Assert.That(Structured(failed).GetProperty("exitCode").GetInt32(), Is.EqualTo(7));

        var timedOut = await _alpha.CallToolAsync("run_command", new Dictionary<string, object?> { ["sessionId"] = id, ["command"] = "sleep 20", ["timeoutSeconds"] = 0.5 });
        Assert.That(Structured(timedOut).GetProperty("status").GetString(), Is.EqualTo("timeout"));

        var code = await _alpha.CallToolAsync("run_code", new Dictionary<string, object?> { ["sessionId"] = id, ["language"] = "python", ["code"] = "import sys; print(sys.version_info[0])" });
        Assert.That(Structured(code).GetProperty("stdout").GetString(), Is.EqualTo("3\n"));

        var written = await _alpha.CallToolAsync("write_file", new Dictionary<string, object?> { ["sessionId"] = id, ["path"] = "notes/a.txt", ["content"] = "über\n" });
        Assert.That(Structured(written).GetProperty("size").GetInt64(), Is.EqualTo(6));
        var read = await _alpha.CallToolAsync("read_file", new Dictionary<string, object?> { ["sessionId"] = id, ["path"] = "/workspace/notes/a.txt" });
        Assert.That(Structured(read).GetProperty("content").GetString(), Is.EqualTo("über\n"));
        var missing = await _alpha.CallToolAsync("read_file", new Dictionary<string, object?> { ["sessionId"] = id, ["path"] = "nope.txt" });
        Assert.That(missing.IsError, Is.True);
        Assert.That(Structured(missing).GetProperty("error").GetString(), Does.StartWith("not found"));
        var listed = await _alpha.CallToolAsync("list_files", new Dictionary<string, object?> { ["sessionId"] = id, ["path"] = "notes" });
        Assert.That(Structured(listed).GetProperty("entries").EnumerateArray().Select(e => e.GetProperty("name").GetString()), Is.EqualTo(new[] { "a.txt" }));

        // The caller's tenant only: beta cannot use alpha's session, and is told exactly what a missing one gets.
        var foreign = await _beta.CallToolAsync("run_command", new Dictionary<string, object?> { ["sessionId"] = id, ["command"] = "cat /workspace/notes/a.txt" });
        Assert.That(foreign.IsError, Is.True);
        Assert.That(Structured(foreign).GetProperty("error").GetString(), Does.Contain("does not exist"));

        var deleted = await _alpha.CallToolAsync("delete_session", new Dictionary<string, object?> { ["sessionId"] = id });
        Assert.That(Structured(deleted).GetProperty("status").GetString(), Is.EqualTo("ok"));
        var after = await _alpha.CallToolAsync("run_command", new Dictionary<string, object?> { ["sessionId"] = id, ["command"] = "true" });
        Assert.That(after.IsError, Is.True);
        Assert.That(Structured(after).GetProperty("error").GetString(), Does.Contain("does not exist"));
    }

    [Test]
    public async Task Run_code_keeps_state_in_the_session_and_returns_figures_as_image_blocks()
    {
        var id = await CreateSessionAsync(_alpha);
        Task<CallToolResult> RunAsync(string code, string language = "python") =>
            _alpha.CallToolAsync("run_code", new Dictionary<string, object?> { ["sessionId"] = id, ["language"] = language, ["code"] = code }).AsTask();

        var set = await RunAsync("x = 21");
        Assert.That(set.IsError, Is.Not.True, ((TextContentBlock)set.Content[0]).Text);
        var doubled = Structured(await RunAsync("x * 2"));
        Assert.That(doubled.GetProperty("results")[0].GetProperty("isMainResult").GetBoolean(), Is.True);
        Assert.That(doubled.GetProperty("results")[0].GetProperty("text").GetString(), Is.EqualTo("42"), "state persists between calls");
        Assert.That(doubled.GetProperty("executionCount").GetInt32(), Is.GreaterThanOrEqualTo(2));

        var plot = await RunAsync("import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\n'plotted'");
        Assert.That(plot.IsError, Is.Not.True);
        Assert.That(plot.Content[0], Is.InstanceOf<TextContentBlock>(), "the JSON comes first, for clients without images");
        var text = ((TextContentBlock)plot.Content[0]).Text;
        Assert.That(text, Does.Not.Contain("iVBOR"), "no base64 in the text");
        var image = plot.Content.OfType<ImageContentBlock>().Single();
        Assert.That(image.MimeType, Is.EqualTo("image/png"));
        Assert.That(image.DecodedData.ToArray().Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }));
        var results = Structured(plot).GetProperty("results").EnumerateArray().ToList();
        Assert.That(results.Single(r => r.TryGetProperty("image", out _)).GetProperty("image").GetInt32(), Is.EqualTo(1));
        Assert.That(results.Single(r => r.GetProperty("isMainResult").GetBoolean()).GetProperty("text").GetString(), Is.EqualTo("'plotted'"));

        var raised = await RunAsync("undefined_name");
        Assert.That(raised.IsError, Is.True);
        Assert.That(Structured(raised).GetProperty("error").GetString(), Does.StartWith("NameError"));
        Assert.That(Structured(raised).GetProperty("traceback").GetString(), Does.Contain("undefined_name"));

        var js = Structured(await RunAsync("globalThis.k = 6; k * 7", "javascript"));
        Assert.That(js.GetProperty("results")[0].GetProperty("text").GetString(), Is.EqualTo("42"));

        await _alpha.CallToolAsync("delete_session", new Dictionary<string, object?> { ["sessionId"] = id });
    }

    [Test]
    public async Task Calls_without_a_valid_key_are_refused_with_401()
    {
        using var http = new HttpClient { BaseAddress = _host.BaseAddress };
        const string initialize = """{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}""";

        using var anonymous = new HttpRequestMessage(HttpMethod.Post, "/mcp") { Content = new StringContent(initialize, Encoding.UTF8, "application/json") };
        anonymous.Headers.Accept.ParseAdd("application/json, text/event-stream");
        var refused = await http.SendAsync(anonymous);
        Assert.That(refused.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        Assert.That((await ServerHost.ProblemAsync(refused)).GetProperty("code").GetString(), Is.EqualTo("unauthorized"));

        using var wrong = new HttpRequestMessage(HttpMethod.Post, "/mcp") { Content = new StringContent(initialize, Encoding.UTF8, "application/json") };
        wrong.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "not-a-key");
        Assert.That((await http.SendAsync(wrong)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));

        Assert.That(await ConnectFailsAsync(null), Is.True, "the MCP client cannot connect without a key");
        Assert.That(await ConnectFailsAsync("wrong"), Is.True);
    }

    private async Task<bool> ConnectFailsAsync(string? key)
    {
        try
        {
            await using var client = await ConnectAsync(key);
            return false;
        }
        catch (Exception e) when (e is HttpRequestException or ModelContextProtocol.McpException or InvalidOperationException)
        {
            return true;
        }
    }

    [Test]
    public async Task A_chat_client_drives_the_mcp_tools_through_function_invocation()
    {
        var tools = await _alpha.ListToolsAsync();
        var model = new ScriptedChatClient(turn => turn.Step switch
        {
            0 => ScriptedReply.Call("create_session"),
            1 => ScriptedReply.Call("run_code", new { sessionId = turn.Json(0).GetProperty("sessionId").GetString(), language = "node", code = "console.log(6*7)" }),
            2 => ScriptedReply.Call("delete_session", new { sessionId = turn.Json(0).GetProperty("sessionId").GetString() }),
            _ => ScriptedReply.Answer("answer: " + turn.Json(1).GetProperty("stdout").GetString()!.Trim()),
        });
        using var chat = new ChatClientBuilder(model).UseFunctionInvocation().Build();

        var response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "What is 6*7? Use node.")], new ChatOptions { Tools = [.. tools] });

        Assert.That(response.Text, Is.EqualTo("answer: 42"));
        Assert.That(model.IssuedCalls.Select(c => c.Name), Is.EqualTo(new[] { "create_session", "run_code", "delete_session" }));
    }
}
