using System.Text.Json;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using SandboxKit.Agents;
using SandboxKit.Client;
using SandboxKit.Samples;
using SandboxKit.SemanticKernel;

namespace SandboxKit.Tests.Integrations;

/// <summary>The Semantic Kernel plugin, called by a Kernel's own function calling (driven by the scripted chat client) against the real server and engine.</summary>
[TestFixture]
public sealed class SemanticKernelPluginTests
{
    private ServerHost _host = null!;
    private SandboxClient _client = null!;
    private UserSandboxSessionProvider _sessions = null!;
    private SandboxAgentTools _tools = null!;
    private readonly List<string> _users = [];

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync();
        _client = new SandboxClient(_host.BaseAddress);
        _sessions = new UserSandboxSessionProvider(_client, new UserSandboxSessionProviderOptions { DeleteSessionsOnDispose = true });
        _tools = new SandboxAgentTools(_sessions);
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

    /// <summary>A kernel whose chat service is the scripted client, with the sandbox plugin; SK invokes the functions itself.</summary>
    private Kernel NewKernel(ScriptedChatClient model)
    {
        var builder = Kernel.CreateBuilder();
        // SK's own function invocation (with its filters) around the chat client.
        builder.Services.AddSingleton(model.AsBuilder().UseKernelFunctionInvocation().Build());
        builder.Plugins.AddSandboxPlugin(_tools);
        return builder.Build();
    }

    private static async Task<string> AskAsync(Kernel kernel, string prompt)
    {
        var chat = kernel.GetRequiredService<IChatClient>().AsChatCompletionService(kernel.Services);
        var history = new ChatHistory("You solve tasks by running code in your sandbox.");
        history.AddUserMessage(prompt);
        var reply = await chat.GetChatMessageContentAsync(
            history, new PromptExecutionSettings { FunctionChoiceBehavior = FunctionChoiceBehavior.Auto() }, kernel);
        return reply.Content ?? "";
    }

    [Test]
    public async Task The_kernel_solves_a_task_with_code_files_and_commands_in_the_users_sandbox()
    {
        var user = NewUser("sk");
        IReadOnlyList<ScriptedToolResult> results = [];
        var model = new ScriptedChatClient(turn =>
        {
            results = turn.Results;
            return turn.Step switch
            {
                0 => ScriptedReply.Call(SandboxToolNames.RunCode, new
                {
                    language = "python",
                    code = "p=[n for n in range(2,100) if all(n%d for d in range(2,n))][:20]\nopen('primes.txt','w').write(' '.join(map(str,p))+'\\n')\nprint(len(p))",
                }),
                1 => ScriptedReply.Call(SandboxToolNames.ReadFile, new { path = "primes.txt" }),
                2 => ScriptedReply.Call(SandboxToolNames.ListFiles, new { }),
                3 => ScriptedReply.Call(SandboxToolNames.RunCommand, new { command = "echo oops >&2; exit 3" }),
                4 => ScriptedReply.Call(SandboxToolNames.RunCommand, new { command = "echo start; sleep 30", timeoutSeconds = 1.0 }),
                5 => ScriptedReply.Call(SandboxToolNames.WriteFile, new { path = "bad\0name", content = "x" }),
                _ => ScriptedReply.Answer("primes: " + turn.Json(1).GetProperty("content").GetString()!.Trim()),
            };
        });
        var kernel = NewKernel(model).ForSandboxUser(user);

        var answer = await AskAsync(kernel, "Compute the first 20 primes, save them to primes.txt and read the file back.");

        const string primes = "2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71";
        Assert.That(answer, Is.EqualTo("primes: " + primes));
        Assert.That(model.IssuedCalls.Select(c => c.Name), Has.All.StartsWith("sandbox_"), "SK offered the plugin's functions under its own names");
        Assert.That(results, Has.Count.EqualTo(6));

        var code = results[0].Json;
        Assert.That(code.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(code.GetProperty("exitCode").GetInt32(), Is.Zero);
        Assert.That(code.GetProperty("stdout").GetString(), Is.EqualTo("20\n"));
        Assert.That(code.TryGetProperty("error", out _), Is.False);

        var read = results[1].Json;
        Assert.That(read.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(read.GetProperty("path").GetString(), Is.EqualTo("/workspace/primes.txt"));
        Assert.That(read.GetProperty("truncated").GetBoolean(), Is.False);

        var list = results[2].Json;
        Assert.That(list.GetProperty("entries").EnumerateArray().Select(e => e.GetProperty("name").GetString()), Does.Contain("primes.txt"));

        var failed = results[3].Json;
        Assert.That(failed.GetProperty("status").GetString(), Is.EqualTo("error"));
        Assert.That(failed.GetProperty("exitCode").GetInt32(), Is.EqualTo(3));
        Assert.That(failed.GetProperty("stderr").GetString(), Is.EqualTo("oops\n"));
        Assert.That(failed.GetProperty("error").GetString(), Does.Contain("code 3"));

        var slow = results[4].Json;
        Assert.That(slow.GetProperty("status").GetString(), Is.EqualTo("timeout"));
        Assert.That(slow.GetProperty("exitCode").ValueKind, Is.EqualTo(JsonValueKind.Null));
        Assert.That(slow.GetProperty("stdout").GetString(), Is.EqualTo("start\n"));

        var invalid = results[5].Json;
        Assert.That(invalid.GetProperty("status").GetString(), Is.EqualTo("error"));
        Assert.That(invalid.GetProperty("error").GetString(), Does.Contain("NUL"));

        // The file is really in the user's sandbox.
        var session = await _sessions.GetSessionAsync(user);
        Assert.That(session.Info.UserId, Is.EqualTo(user));
        Assert.That(await session.ReadTextAsync("/workspace/primes.txt"), Is.EqualTo(primes + "\n"));
    }

    [Test]
    public async Task Run_code_keeps_state_and_returns_figures_as_image_content_with_only_json_as_text()
    {
        var user = NewUser("skplot");
        IReadOnlyList<ScriptedToolResult> results = [];
        var model = new ScriptedChatClient(turn =>
        {
            results = turn.Results;
            return turn.Step switch
            {
                0 => ScriptedReply.Call(SandboxToolNames.RunCode, new { language = "python", code = "x = 21" }),
                1 => ScriptedReply.Call(SandboxToolNames.RunCode, new { language = "python", code = "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()\nx * 2" }),
                _ => ScriptedReply.Answer("done"),
            };
        });
        var kernel = NewKernel(model).ForSandboxUser(user);

        Assert.That(await AskAsync(kernel, "plot"), Is.EqualTo("done"));

        // Through function calling the model gets the JSON only (what any serializer makes of the result).
        var plotted = results[1].Json;
        Assert.That(plotted.GetProperty("status").GetString(), Is.EqualTo("ok"), plotted.GetRawText());
        var outputs = plotted.GetProperty("results").EnumerateArray().ToList();
        Assert.That(outputs.Single(o => o.GetProperty("isMainResult").GetBoolean()).GetProperty("text").GetString(), Is.EqualTo("42"), "state persists");
        Assert.That(outputs.Single(o => o.TryGetProperty("image", out _)).GetProperty("text").GetString(), Does.StartWith("<Figure"));
        Assert.That(plotted.GetRawText(), Does.Not.Contain("iVBOR"), "no base64 in the text");

        // Invoked directly, the images are there as ImageContent.
        var result = await kernel.InvokeAsync(kernel.Plugins[SandboxPlugin.DefaultName][SandboxToolNames.RunCode], new KernelArguments
        {
            ["language"] = "python",
            ["code"] = "plt.plot([1, 2]); plt.show()",
        });
        var content = result.GetValue<SandboxKernelCodeContents>()!;
        var image = content.Images.Single();
        Assert.That(image.MimeType, Is.EqualTo("image/png"));
        Assert.That(image.Data!.Value.ToArray().Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }));
        Assert.That(content.OfType<Microsoft.Extensions.AI.DataContent>().Single().MediaType, Is.EqualTo("image/png"), "and as M.E.AI content");
        var message = content.ToChatMessageContent();
        Assert.That(message.Items.OfType<ImageContent>().Count(), Is.EqualTo(1));
        Assert.That(message.Content, Is.EqualTo(content.Result.ToJson()));
        Assert.That(content.ToString(), Is.EqualTo(content.Result.ToJson()));
        Assert.That(JsonSerializer.Serialize<object>(content), Is.EqualTo(content.Result.ToJson()), "serialized, it is the JSON alone");
        Assert.That(JsonSerializer.Serialize<object>(content, AIJsonUtilities.DefaultOptions), Is.EqualTo(content.Result.ToJson()));
    }

    [Test]
    public async Task Each_user_of_a_kernel_gets_their_own_sandbox()
    {
        var alice = NewUser("alice");
        var bob = NewUser("bob");
        var model = new ScriptedChatClient(turn => turn.UserText switch
        {
            "write" when turn.Step == 0 => ScriptedReply.Call(SandboxToolNames.WriteFile, new { path = "/workspace/note.txt", content = "alice's secret" }),
            "read" when turn.Step == 0 => ScriptedReply.Call(SandboxToolNames.ReadFile, new { path = "/workspace/note.txt" }),
            _ => ScriptedReply.Answer(turn.Json(0).GetRawText()),
        });
        var kernel = NewKernel(model);

        var written = JsonDocument.Parse(await AskAsync(kernel.ForSandboxUser(alice), "write")).RootElement;
        var aliceReads = JsonDocument.Parse(await AskAsync(kernel.ForSandboxUser(alice), "read")).RootElement;
        var bobReads = JsonDocument.Parse(await AskAsync(kernel.ForSandboxUser(bob), "read")).RootElement;

        Assert.That(written.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(aliceReads.GetProperty("content").GetString(), Is.EqualTo("alice's secret"));
        Assert.That(bobReads.GetProperty("status").GetString(), Is.EqualTo("error"));
        Assert.That(bobReads.GetProperty("error").GetString(), Does.StartWith("not found"));
        var aliceSession = await _sessions.GetSessionAsync(alice);
        var bobSession = await _sessions.GetSessionAsync(bob);
        Assert.That(bobSession.Id, Is.Not.EqualTo(aliceSession.Id));
        Assert.That(kernel.Data.ContainsKey(SandboxPlugin.UserIdKey), Is.False, "ForSandboxUser leaves the shared kernel alone");
    }

    [Test]
    public async Task A_session_that_expired_is_replaced_and_the_model_is_told()
    {
        var user = NewUser("expiry");
        var first = await _tools.RunCommandAsync(user, "echo one > /workspace/one.txt");
        Assert.That(first.Status, Is.EqualTo("ok"));
        var old = await _sessions.GetSessionAsync(user);

        // Behind the provider's back, as the idle reaper would.
        Assert.That(await _client.DeleteSessionAsync(old.Id), Is.True);

        var again = await _tools.RunCommandAsync(user, "ls /workspace");
        Assert.That(again.Status, Is.EqualTo("ok"));
        Assert.That(again.Notice, Does.Contain("new sandbox"));
        Assert.That(again.Stdout, Does.Not.Contain("one.txt"));
        var replacement = await _sessions.GetSessionAsync(user);
        Assert.That(replacement.Id, Is.Not.EqualTo(old.Id));

        var next = await _tools.RunCommandAsync(user, "true");
        Assert.That(next.Notice, Is.Null, "only the call that met the expired session carries the notice");
    }

    [Test]
    public void The_plugin_offers_the_upload_function_only_when_directories_are_allowed()
    {
        var plain = SandboxKernelExtensions.CreatePlugin(_tools);
        Assert.That(plain.Select(f => f.Name), Is.EquivalentTo(new[] { "run_command", "run_code", "write_file", "read_file", "list_files" }));
        Assert.That(plain["run_command"].Description, Is.EqualTo(SandboxToolDescriptions.RunCommand));

        var options = new SandboxToolOptions();
        options.AllowedUploadDirectories.Add(Path.GetTempPath());
        var withUploads = SandboxKernelExtensions.CreatePlugin(new SandboxAgentTools(_sessions, options));
        Assert.That(withUploads.Select(f => f.Name), Does.Contain("upload_file_from_host"));
    }
}
