using System.Text.Json;
using Microsoft.Extensions.AI;
using SandboxKit.Agents;
using SandboxKit.Client;
using SandboxKit.Samples;

namespace SandboxKit.Tests.Integrations;

/// <summary>The tools as Microsoft.Extensions.AI functions, run by <see cref="FunctionInvokingChatClient"/> against the real server and engine.</summary>
[TestFixture]
public sealed class ExtensionsAIToolsTests
{
    private ServerHost _host = null!;
    private SandboxClient _client = null!;
    private UserSandboxSessionProvider _sessions = null!;
    private readonly List<string> _users = [];
    private string _uploads = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync();
        _client = new SandboxClient(_host.BaseAddress);
        _sessions = new UserSandboxSessionProvider(_client, new UserSandboxSessionProviderOptions { DeleteSessionsOnDispose = true });
        _uploads = Directory.CreateTempSubdirectory("sandboxkit-uploads-").FullName;
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        await _sessions.DisposeAsync();
        foreach (var user in _users)
        {
            try
            {
                await _client.DeleteUserStorageAsync(user);
            }
            catch (SandboxException e)
            {
                // A session is still live (a test failed half-way): counted and removed below.
                TestContext.Out.WriteLine($"user storage of {user}: {e.Message}");
            }
        }
        _client.Dispose();
        await _host.DisposeAsync();
        Directory.Delete(_uploads, recursive: true);
        var left = await Engine.CountResourcesAsync(_host.Instance);
        // Even when a test failed half-way, leave no container or volume behind; then report it.
        await Engine.RemoveAllAsync(_host.Instance);
        Assert.That(left, Is.Zero);
    }

    private string NewUser(string name)
    {
        var user = $"{name}-{Guid.NewGuid():N}"[..16];
        _users.Add(user);
        return user;
    }

    private static async Task<(string Answer, IReadOnlyList<ScriptedToolResult> Results)> RunAsync(
        IList<AITool> tools, Func<ScriptedTurn, ScriptedReply?> steps)
    {
        IReadOnlyList<ScriptedToolResult> results = [];
        var model = new ScriptedChatClient(turn =>
        {
            results = turn.Results;
            return steps(turn) ?? ScriptedReply.Answer($"done after {turn.Step} calls");
        });
        using var chat = new ChatClientBuilder(model).UseFunctionInvocation().Build();
        var response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "go")], new ChatOptions { Tools = tools });
        return (response.Text, results);
    }

    [Test]
    public async Task A_chat_client_with_function_invocation_uses_the_sandbox()
    {
        var user = NewUser("meai");
        var tools = new SandboxAgentTools(_sessions).CreateAIFunctions(user);
        Assert.That(tools.Select(t => t.Name), Is.EqualTo(new[] { "run_command", "run_code", "write_file", "read_file", "list_files" }));
        Assert.That(tools[0].Description, Is.EqualTo(SandboxToolDescriptions.RunCommand));
        var command = tools[0].JsonSchema.GetProperty("properties").GetProperty("command");
        Assert.That(command.GetProperty("description").GetString(), Is.EqualTo(SandboxToolDescriptions.CommandParameter));
        Assert.That(tools[0].JsonSchema.GetProperty("required").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "command" }));

        var (answer, results) = await RunAsync([.. tools], turn => turn.Step switch
        {
            0 => ScriptedReply.Call("run_command", new { command = "mkdir -p data && cd data && echo hello > greeting.txt && pwd" }),
            1 => ScriptedReply.Call("run_command", new { command = "pwd && cat greeting.txt" }),
            2 => ScriptedReply.Call("run_code", new { language = "javascript", code = "console.log([1,2,3].map(x => x * x).join(','))" }),
            3 => ScriptedReply.Call("write_file", new { path = "data/../report.md", content = "# Report ✓\n" }),
            4 => ScriptedReply.Call("read_file", new { path = "/workspace/report.md" }),
            5 => ScriptedReply.Call("list_files", new { path = "/workspace/data" }),
            6 => ScriptedReply.Call("run_code", new { language = "cobol", code = "x" }),
            7 => ScriptedReply.Call("run_command", new { command = "yes | head -c 100000; yes ü | head -c 200000 > big.txt; head -c 100 /dev/urandom > blob.bin" }),
            8 => ScriptedReply.Call("read_file", new { path = "/workspace/data/big.txt" }),
            9 => ScriptedReply.Call("read_file", new { path = "data/blob.bin" }),
            _ => null,
        });

        Assert.That(answer, Is.EqualTo("done after 10 calls"));
        Assert.That(results[0].Json.GetProperty("stdout").GetString(), Is.EqualTo("/workspace/data\n"));
        Assert.That(results[1].Json.GetProperty("stdout").GetString(), Is.EqualTo("/workspace/data\nhello\n"), "shell state persists between calls");
        Assert.That(results[2].Json.GetProperty("stdout").GetString(), Is.EqualTo("1,4,9\n"));
        Assert.That(results[3].Json.GetProperty("path").GetString(), Is.EqualTo("/workspace/report.md"));
        Assert.That(results[3].Json.GetProperty("size").GetInt64(), Is.EqualTo(13));
        Assert.That(results[4].Json.GetProperty("content").GetString(), Is.EqualTo("# Report ✓\n"));
        Assert.That(results[5].Json.GetProperty("entries")[0].GetProperty("name").GetString(), Is.EqualTo("greeting.txt"));
        Assert.That(results[6].Json.GetProperty("status").GetString(), Is.EqualTo("error"));
        Assert.That(results[6].Json.GetProperty("error").GetString(), Does.Contain("language"));
        var flood = results[7].Json;
        Assert.That(flood.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(flood.GetProperty("truncated").GetBoolean(), Is.True);
        Assert.That(flood.GetProperty("stdout").GetString()!.Length, Is.LessThanOrEqualTo(new SandboxToolOptions().MaxOutputChars));
        Assert.That(flood.GetProperty("stdout").GetString(), Does.Contain("characters omitted"));
        var big = results[8].Json;
        Assert.That(big.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(big.GetProperty("truncated").GetBoolean(), Is.True);
        Assert.That(big.GetProperty("size").ValueKind, Is.EqualTo(JsonValueKind.Null));
        var text = big.GetProperty("content").GetString()!;
        Assert.That(System.Text.Encoding.UTF8.GetByteCount(text), Is.InRange(new SandboxToolOptions().MaxReadBytes - 3, new SandboxToolOptions().MaxReadBytes));
        Assert.That(text, Does.StartWith("ü\nü\n").And.Not.Contain("\uFFFD"), "a character cut at the limit is dropped, not mangled");
        Assert.That(results[9].Json.GetProperty("error").GetString(), Does.Contain("not UTF-8 text"));
    }

    [Test]
    public async Task Run_code_keeps_state_and_returns_figures_as_data_content()
    {
        var user = NewUser("plots");
        const string plot = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\n'plotted'";
        var tools = new SandboxAgentTools(_sessions).CreateAIFunctions(user);
        var (_, results) = await RunAsync([.. tools], turn => turn.Step switch
        {
            0 => ScriptedReply.Call("run_code", new { language = "python", code = "x = 21" }),
            1 => ScriptedReply.Call("run_code", new { language = "python", code = "x * 2" }),
            2 => ScriptedReply.Call("run_code", new { language = "python", code = plot }),
            3 => ScriptedReply.Call("run_code", new { language = "python", code = "undefined_name" }),
            4 => ScriptedReply.Call("run_code", new { language = "python", code = "while True: pass", timeoutSeconds = 1 }),
            5 => ScriptedReply.Call("run_code", new { language = "python", code = "x" }),
            _ => null,
        });

        Assert.That(results[0].Json.GetProperty("status").GetString(), Is.EqualTo("ok"), results[0].Json.GetRawText());
        Assert.That(results[0].Json.GetProperty("results").GetArrayLength(), Is.Zero);
        var doubled = results[1].Json.GetProperty("results")[0];
        Assert.That(doubled.GetProperty("text").GetString(), Is.EqualTo("42"), "state persists between calls");
        Assert.That(doubled.GetProperty("isMainResult").GetBoolean(), Is.True);
        Assert.That(results[1].Attachments, Is.Empty);

        var figure = results[2];
        var image = figure.Attachments.Single();
        Assert.That(image.MediaType, Is.EqualTo("image/png"));
        Assert.That(image.Data.ToArray().Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }));
        var outputs = figure.Json.GetProperty("results").EnumerateArray().ToList();
        Assert.That(outputs.Single(o => o.TryGetProperty("image", out _)).GetProperty("image").GetInt32(), Is.EqualTo(1));
        Assert.That(outputs.Single(o => o.TryGetProperty("image", out _)).GetProperty("text").GetString(), Does.StartWith("<Figure"), "the text fallback");
        Assert.That(outputs.Single(o => o.GetProperty("isMainResult").GetBoolean()).GetProperty("text").GetString(), Is.EqualTo("'plotted'"));
        Assert.That(figure.Json.GetRawText(), Does.Not.Contain("iVBOR"), "no base64 in the JSON");

        Assert.That(results[3].Json.GetProperty("status").GetString(), Is.EqualTo("error"));
        Assert.That(results[3].Json.GetProperty("error").GetString(), Does.StartWith("NameError"));
        Assert.That(results[3].Json.GetProperty("traceback").GetString(), Does.Contain("undefined_name"));
        Assert.That(results[4].Json.GetProperty("status").GetString(), Is.EqualTo("timeout"));
        Assert.That(results[4].Json.GetProperty("error").GetString(), Does.Contain("interrupted").And.Contain("kept"));
        Assert.That(results[5].Json.GetProperty("results")[0].GetProperty("text").GetString(), Is.EqualTo("21"), "the timeout kept the state");

        // Images off: listed with a note, not attached.
        var options = new SandboxToolOptions { AttachImages = false };
        var (_, textOnly) = await RunAsync([.. new SandboxAgentTools(_sessions, options).CreateAIFunctions(user)],
            turn => turn.Step == 0 ? ScriptedReply.Call("run_code", new { language = "python", code = plot }) : null);
        Assert.That(textOnly[0].Attachments, Is.Empty);
        var listed = textOnly[0].Json.GetProperty("results").EnumerateArray().Single(o => o.GetProperty("formats").EnumerateArray().Any(f => f.GetString() == "image/png"));
        Assert.That(listed.GetProperty("note").GetString(), Does.Contain("turned off"));
        Assert.That(listed.TryGetProperty("image", out _), Is.False);
    }

    [Test]
    public async Task Unbound_functions_act_for_the_ambient_user_and_refuse_without_one()
    {
        var tools = new SandboxAgentTools(_sessions).CreateAIFunctions();
        var user = NewUser("ambient");

        var (_, without) = await RunAsync([.. tools], turn => turn.Step == 0 ? ScriptedReply.Call("run_command", new { command = "true" }) : null);
        Assert.That(without[0].Json.GetProperty("status").GetString(), Is.EqualTo("error"));
        Assert.That(without[0].Json.GetProperty("error").GetString(), Does.Contain("no sandbox user"));

        using (SandboxUserContext.BeginScope(user))
        {
            var (_, with) = await RunAsync([.. tools], turn => turn.Step == 0 ? ScriptedReply.Call("run_command", new { command = "echo $HOME" }) : null);
            Assert.That(with[0].Json.GetProperty("status").GetString(), Is.EqualTo("ok"));
        }
        Assert.That(SandboxUserContext.CurrentUserId, Is.Null);
        var sessions = await _client.ListSessionsAsync(user);
        Assert.That(sessions, Has.Count.EqualTo(1));
    }

    [Test]
    public async Task Uploads_from_the_host_are_off_by_default_and_confined_to_allowed_directories()
    {
        var user = NewUser("upload");
        var outside = Directory.CreateTempSubdirectory("sandboxkit-outside-").FullName;
        try
        {
            var allowed = Path.Combine(_uploads, "allowed");
            Directory.CreateDirectory(allowed);
            await File.WriteAllTextAsync(Path.Combine(allowed, "data.csv"), "a,b\n1,2\n");
            Directory.CreateDirectory(Path.Combine(allowed, "sub"));
            await File.WriteAllTextAsync(Path.Combine(outside, "secret.txt"), "host secret");
            File.CreateSymbolicLink(Path.Combine(allowed, "escape.txt"), Path.Combine(outside, "secret.txt"));
            Directory.CreateSymbolicLink(Path.Combine(allowed, "outdir"), outside);
            Directory.CreateSymbolicLink(Path.Combine(_uploads, "via-link"), allowed);

            // Off by default: not offered, and refused when called anyway.
            var off = new SandboxAgentTools(_sessions);
            Assert.That(off.CreateAIFunctions(user).Select(f => f.Name), Does.Not.Contain("upload_file_from_host"));
            var refused = await off.UploadFileFromHostAsync(user, Path.Combine(allowed, "data.csv"));
            Assert.That(refused.Status, Is.EqualTo("error"));
            Assert.That(refused.Error, Does.Contain("turned off"));

            var options = new SandboxToolOptions { MaxUploadBytes = 1024 };
            options.AllowedUploadDirectories.Add(Path.Combine(_uploads, "via-link"));
            var tools = new SandboxAgentTools(_sessions, options).CreateAIFunctions(user);
            Assert.That(tools.Select(f => f.Name), Does.Contain("upload_file_from_host"));

            await File.WriteAllBytesAsync(Path.Combine(allowed, "big.bin"), new byte[2048]);
            var (_, results) = await RunAsync([.. tools], turn => turn.Step switch
            {
                0 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(allowed, "data.csv") }),
                1 => ScriptedReply.Call("read_file", new { path = "/workspace/data.csv" }),
                2 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(allowed, "escape.txt") }),
                3 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(allowed, "outdir", "secret.txt") }),
                4 => ScriptedReply.Call("upload_file_from_host", new { hostPath = allowed + "/../../" + Path.GetFileName(outside) + "/secret.txt" }),
                5 => ScriptedReply.Call("upload_file_from_host", new { hostPath = "via-link/data.csv" }),
                6 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(allowed, "big.bin") }),
                7 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(allowed, "missing.txt") }),
                8 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(_uploads, "via-link", "data.csv"), sandboxPath = "in/copy.csv" }),
                9 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(allowed, "sub") }),
                10 => ScriptedReply.Call("upload_file_from_host", new { hostPath = Path.Combine(_uploads, "via-link") }),
                _ => null,
            });

            Assert.That(results[0].Json.GetProperty("status").GetString(), Is.EqualTo("ok"), results[0].Json.GetRawText());
            Assert.That(results[0].Json.GetProperty("path").GetString(), Is.EqualTo("/workspace/data.csv"));
            Assert.That(results[1].Json.GetProperty("content").GetString(), Is.EqualTo("a,b\n1,2\n"));
            foreach (var i in new[] { 2, 3, 4 })
            {
                Assert.That(results[i].Json.GetProperty("status").GetString(), Is.EqualTo("error"), $"escape {i}");
                Assert.That(results[i].Json.GetProperty("error").GetString(), Does.Contain("allows uploads from"), $"escape {i}");
            }
            Assert.That(results[5].Json.GetProperty("error").GetString(), Does.Contain("absolute"));
            Assert.That(results[6].Json.GetProperty("error").GetString(), Does.Contain("larger than 1024"));
            Assert.That(results[7].Json.GetProperty("error").GetString(), Does.Contain("allows uploads from"), "missing and forbidden look alike");
            Assert.That(results[8].Json.GetProperty("path").GetString(), Is.EqualTo("/workspace/in/copy.csv"));
            Assert.That(results[9].Json.GetProperty("status").GetString(), Is.EqualTo("error"), "a directory is not uploaded");
            Assert.That(results[10].Json.GetProperty("error").GetString(), Does.Contain("allows uploads from"), "nor the allowed directory itself");
            var session = await _sessions.GetSessionAsync(user);
            var listing = await session.ExecuteAsync("ls /workspace; cat /workspace/in/copy.csv");
            Assert.That(listing.Stdout, Does.Not.Contain("secret").And.Not.Contain("escape"));
            Assert.That(listing.Stdout, Does.EndWith("a,b\n1,2\n"));
        }
        finally
        {
            Directory.Delete(outside, recursive: true);
        }
    }

    [Test]
    public async Task A_fifo_in_an_allowed_directory_does_not_block_the_upload()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Ignore("FIFOs are a Unix matter.");
        }
        var dir = Directory.CreateDirectory(Path.Combine(_uploads, "fifo")).FullName;
        var fifo = Path.Combine(dir, "pipe");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", fifo))
        {
            await mkfifo.WaitForExitAsync();
        }
        var options = new SandboxToolOptions();
        options.AllowedUploadDirectories.Add(dir);
        var tools = new SandboxAgentTools(_sessions, options, defaultUserId: NewUser("fifo"));

        var result = await tools.UploadFileFromHostAsync(null, fifo).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.That(result.Status, Is.EqualTo("error"));
        Assert.That(result.Error, Does.Contain("not a regular file"));
    }

    [Test]
    public void Results_serialize_to_the_documented_shape()
    {
        var json = JsonSerializer.Serialize(SandboxCommandResult.Failed("nope"));
        Assert.That(json, Is.EqualTo("{\"status\":\"error\",\"exitCode\":null,\"stdout\":\"\",\"stderr\":\"\",\"truncated\":false,\"error\":\"nope\"}"));

        var code = SandboxCodeResult.Failed("nope") with { Images = [new SandboxImage { MimeType = "image/png", Data = new byte[] { 1, 2 } }] };
        const string expected = "{\"status\":\"error\",\"exitCode\":null,\"stdout\":\"\",\"stderr\":\"\",\"results\":[],\"error\":\"nope\",\"truncated\":false}";
        Assert.That(code.ToJson(), Is.EqualTo(expected));
        Assert.That(JsonSerializer.Serialize(code), Is.EqualTo(expected), "images are never serialized, whatever the serializer");
        var contents = code.ToAIContents();
        Assert.That(((TextContent)contents[0]).Text, Is.EqualTo(expected));
        Assert.That(((DataContent)contents[1]).MediaType, Is.EqualTo("image/png"));
    }
}
