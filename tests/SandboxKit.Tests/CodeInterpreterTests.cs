using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>The code interpreter against the real engine: live Python (IPython) and JavaScript contexts in the default image.</summary>
[TestFixture]
public sealed class CodeInterpreterTests : SessionFixture
{
    private async Task<ExecuteResult> RunAsync(string language, string code, string? contextId = null, double? timeoutSeconds = null, string? session = null)
    {
        var response = await Host.Http.PostAsJsonAsync($"/v1/sessions/{session ?? SessionId}/code",
            new RunCodeRequest { Language = language, Code = code, ContextId = contextId, TimeoutSeconds = timeoutSeconds }, SandboxJsonContext.Default.RunCodeRequest);
        await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
    }

    private static string? MainText(ExecuteResult result) => result.Results?.SingleOrDefault(r => r.IsMainResult)?.Get("text/plain");

    [Test]
    public async Task Python_state_persists_across_cells_and_the_last_expression_is_the_main_result()
    {
        var first = await RunAsync("python", "x = 21\nprint('set x')");
        Assert.That(first.ExitCode, Is.Zero);
        Assert.That(first.Stdout, Is.EqualTo("set x\n"));
        Assert.That(first.ContextId, Is.EqualTo("default-python"));
        var second = await RunAsync("python", "x * 2");
        Assert.That(MainText(second), Is.EqualTo("42"));
        Assert.That(second.ExecutionCount, Is.EqualTo(first.ExecutionCount + 1));
        Assert.That(second.Error, Is.Null);
    }

    [Test]
    public async Task JavaScript_keeps_its_globals_supports_top_level_await_and_shows_the_last_value()
    {
        await RunAsync("javascript", "globalThis.counter = 40; let label = 'n';");
        var result = await RunAsync("js", "const wait = await new Promise(r => setTimeout(() => r(2), 50));\nconsole.log(label);\ncounter + wait");
        Assert.That(result.Stdout, Is.EqualTo("n\n"));
        Assert.That(MainText(result), Is.EqualTo("42"));
        Assert.That(result.ContextId, Is.EqualTo("default-javascript"));
    }

    [Test]
    public async Task A_matplotlib_figure_comes_back_as_a_png_and_a_dataframe_as_html()
    {
        var chart = await RunAsync("python", "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16])\nplt.title('squares')\nplt.show()");
        var png = chart.Results!.Single(r => r.Get("image/png") is not null);
        var bytes = Convert.FromBase64String(png.Get("image/png")!);
        Assert.That(bytes.Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), "a PNG");
        Assert.That(bytes.Length, Is.GreaterThan(2000));
        Assert.That(png.IsMainResult, Is.False);

        var frame = await RunAsync("python", "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [4, 19]})");
        var html = frame.Results!.Single(r => r.IsMainResult).Get("text/html");
        Assert.That(html, Does.Contain("<table").And.Contain("Oslo").And.Contain("Lima"));
    }

    [Test]
    public async Task An_exception_is_a_structured_error_and_the_state_survives_it()
    {
        await RunAsync("python", "kept = 'still here'");
        var failed = await RunAsync("python", "1 / 0");
        Assert.That(failed.ExitCode, Is.EqualTo(1));
        Assert.That(failed.Error!.Name, Is.EqualTo("ZeroDivisionError"));
        Assert.That(failed.Error.Value, Is.EqualTo("division by zero"));
        Assert.That(failed.Error.Traceback, Does.Contain("ZeroDivisionError"));
        Assert.That(failed.StateLost, Is.False);
        Assert.That(MainText(await RunAsync("python", "kept")), Is.EqualTo("'still here'"));
    }

    [Test]
    public async Task An_endless_cell_is_interrupted_by_its_timeout_and_the_state_survives()
    {
        await RunAsync("python", "before_loop = 7");
        var looped = await RunAsync("python", "n = 0\nwhile True:\n    n += 1", timeoutSeconds: 2);
        Assert.That(looped.TimedOut, Is.True);
        Assert.That(looped.Interrupted, Is.True);
        Assert.That(looped.StateLost, Is.False);
        Assert.That(looped.Error!.Name, Is.EqualTo("KeyboardInterrupt"));
        Assert.That(MainText(await RunAsync("python", "before_loop * 6 if n > 0 else 0")), Is.EqualTo("42"));

        var jsLoop = await RunAsync("javascript", "globalThis.kept = 5; while (true) {}", timeoutSeconds: 2);
        Assert.That(jsLoop.Interrupted, Is.True);
        Assert.That(jsLoop.StateLost, Is.False);
        Assert.That(MainText(await RunAsync("javascript", "kept")), Is.EqualTo("5"));
    }

    [Test]
    public async Task A_new_context_is_separate_and_contexts_can_be_restarted_interrupted_and_deleted()
    {
        await RunAsync("python", "only_default = 1");
        var created = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/contexts", new CreateContextRequest { Language = "python" }, SandboxJsonContext.Default.CreateContextRequest);
        await ServerHost.EnsureAsync(created, HttpStatusCode.Created);
        var context = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.CodeContext))!;
        Assert.That(context.Language, Is.EqualTo("python"));
        Assert.That(context.IPython, Is.True);

        var isolated = await RunAsync("python", "only_default", context.Id);
        Assert.That(isolated.Error!.Name, Is.EqualTo("NameError"));
        await RunAsync("python", "mine = 3", context.Id);
        Assert.That(MainText(await RunAsync("python", "mine", context.Id)), Is.EqualTo("3"));

        var list = await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}/contexts", SandboxJsonContext.Default.CodeContextList);
        Assert.That(list!.Contexts.Select(c => c.Id), Is.SupersetOf(new[] { "default-python", context.Id }));

        // An explicit interrupt of a running cell keeps the state.
        var sleeping = Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/code",
            new RunCodeRequest { Language = "python", Code = "import time\ntime.sleep(60)", ContextId = context.Id }, SandboxJsonContext.Default.RunCodeRequest);
        await WaitUntilAsync(async () => (await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}/contexts/{context.Id}", SandboxJsonContext.Default.CodeContext))!.Status == "busy");
        var interrupt = await Host.Http.PostAsync($"/v1/sessions/{SessionId}/contexts/{context.Id}/interrupt", null);
        await ServerHost.EnsureAsync(interrupt, HttpStatusCode.OK);
        var interrupted = (await (await sleeping).Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
        Assert.That(interrupted.Interrupted, Is.True);
        Assert.That(interrupted.TimedOut, Is.False);
        Assert.That(MainText(await RunAsync("python", "mine", context.Id)), Is.EqualTo("3"));

        var restart = await Host.Http.PostAsync($"/v1/sessions/{SessionId}/contexts/{context.Id}/restart", null);
        await ServerHost.EnsureAsync(restart, HttpStatusCode.OK);
        Assert.That((await RunAsync("python", "mine", context.Id)).Error!.Name, Is.EqualTo("NameError"), "a restart is a fresh interpreter");

        Assert.That((await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/contexts/{context.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        var gone = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/code",
            new RunCodeRequest { Language = "python", Code = "1", ContextId = context.Id }, SandboxJsonContext.Default.RunCodeRequest);
        Assert.That(gone.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task An_interpreter_killed_from_inside_is_reported_and_the_next_cell_gets_a_fresh_one()
    {
        var created = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/contexts", new CreateContextRequest { Language = "python" }, SandboxJsonContext.Default.CreateContextRequest);
        var context = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.CodeContext))!;
        await RunAsync("python", "lost = True", context.Id);
        var died = await RunAsync("python", "import os\nos._exit(3)", context.Id);
        Assert.That(died.StateLost, Is.True);
        Assert.That(died.ExitCode, Is.EqualTo(1));
        Assert.That(died.Error!.Name, Is.EqualTo("InterpreterDied"));
        Assert.That(died.Error.Value, Does.Contain("status 3"));
        var next = await RunAsync("python", "'lost' in globals()", context.Id);
        Assert.That(MainText(next), Is.EqualTo("False"));
        await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/contexts/{context.Id}");
    }

    [Test]
    public async Task A_cell_streams_its_events_in_order()
    {
        var response = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/code/stream",
            new RunCodeRequest { Language = "python", Code = "print('first')\nfrom IPython.display import display, Markdown\ndisplay(Markdown('**bold**'))\n'last'" },
            SandboxJsonContext.Default.RunCodeRequest);
        await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
        var text = await response.Content.ReadAsStringAsync();
        var types = text.Split('\n').Where(l => l.StartsWith("event: ", StringComparison.Ordinal)).Select(l => l["event: ".Length..]).Where(t => t != "keepalive").ToList();
        // A print may reach the pipe in more than one write ("first", then the newline): output comes in chunks, results do not.
        var merged = types.Where((t, i) => t != "stdout" || i == 0 || types[i - 1] != "stdout").ToList();
        Assert.That(merged, Is.EqualTo(new[] { "stdout", "result", "result", "exited" }), text);
        Assert.That(text, Does.Contain("text/markdown"));
    }

    [Test]
    public async Task A_cell_over_a_websocket_streams_its_events_and_takes_an_interrupt()
    {
        await RunAsync("python", "ws_state = 'kept'");
        using var socket = new ClientWebSocket();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await socket.ConnectAsync(new UriBuilder(Host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{SessionId}/code/ws" }.Uri, timeout.Token);
        await SendTextAsync(socket, JsonSerializer.Serialize(new RunCodeRequest { Language = "python", Code = "print('waiting', flush=True)\nimport time\ntime.sleep(120)" },
            SandboxJsonContext.Default.RunCodeRequest), timeout.Token);

        var events = new List<CommandEvent>();
        var buffer = new byte[1 << 20];
        while (true)
        {
            var received = await socket.ReceiveAsync(buffer, timeout.Token);
            if (received.MessageType == WebSocketMessageType.Close)
            {
                break;
            }
            var e = JsonSerializer.Deserialize(buffer.AsSpan(0, received.Count), SandboxJsonContext.Default.CommandEvent)!;
            events.Add(e);
            if (e.Type == CommandEventTypes.Stdout && events.Count(x => x.Type == CommandEventTypes.Stdout) == 1)
            {
                await SendTextAsync(socket, "{\"interrupt\":true}", timeout.Token);
            }
        }
        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);

        Assert.That(string.Concat(events.Where(e => e.Type == CommandEventTypes.Stdout).Select(e => e.Data)), Is.EqualTo("waiting\n"));
        Assert.That(events.Single(e => e.Type == CommandEventTypes.Error).Exception!.Name, Is.EqualTo("KeyboardInterrupt"));
        var exited = events.Last();
        Assert.That(exited.Type, Is.EqualTo(CommandEventTypes.Exited));
        Assert.That((exited.Result!.Interrupted, exited.Result.StateLost, exited.Result.TimedOut), Is.EqualTo((true, false, false)));
        Assert.That(MainText(await RunAsync("python", "ws_state")), Is.EqualTo("'kept'"), "the interrupt kept the context's state");
    }

    [Test]
    public async Task A_bad_first_message_on_the_code_websocket_is_an_error_event_and_a_close()
    {
        foreach (var first in new[] { "not json", "{\"language\":\"cobol\",\"code\":\"1\"}", "{\"language\":\"bash\",\"code\":\"echo\"}" })
        {
            using var socket = new ClientWebSocket();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await socket.ConnectAsync(new UriBuilder(Host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{SessionId}/code/ws" }.Uri, timeout.Token);
            await SendTextAsync(socket, first, timeout.Token);
            var buffer = new byte[64 * 1024];
            var received = await socket.ReceiveAsync(buffer, timeout.Token);
            var e = JsonSerializer.Deserialize(buffer.AsSpan(0, received.Count), SandboxJsonContext.Default.CommandEvent)!;
            Assert.That(e.Type, Is.EqualTo(CommandEventTypes.Error), first);
            Assert.That((await socket.ReceiveAsync(buffer, timeout.Token)).MessageType, Is.EqualTo(WebSocketMessageType.Close), first);
        }
    }

    private static Task SendTextAsync(ClientWebSocket socket, string text, CancellationToken cancellationToken) =>
        socket.SendAsync(Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, true, cancellationToken);

    [Test]
    public async Task Code_in_an_image_without_the_interpreter_is_a_422()
    {
        var image = await TestImages.GlibcOnlyAsync();
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:AllowedImages:0"] = image });
        var session = await host.CreateSessionAsync(new CreateSessionRequest { Image = image });
        var response = await host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/code", new RunCodeRequest { Language = "python", Code = "1" }, SandboxJsonContext.Default.RunCodeRequest);
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.UnprocessableEntity));
        Assert.That((await ServerHost.ProblemAsync(response)).GetProperty("code").GetString(), Is.EqualTo("language_unavailable"));
        var bash = await host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/code", new RunCodeRequest { Language = "bash", Code = "echo $((6*7))" }, SandboxJsonContext.Default.RunCodeRequest);
        await ServerHost.EnsureAsync(bash, HttpStatusCode.OK);
        Assert.That((await bash.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo("42\n"));
        await host.DeleteSessionAsync(session.Id);
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!await condition())
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "condition not met within 30 s");
            await Task.Delay(100);
        }
    }
}
