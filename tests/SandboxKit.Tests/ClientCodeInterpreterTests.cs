using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>The code interpreter through the client SDK, against the real server and engine (the default image's IPython and Node).</summary>
[TestFixture]
public sealed class ClientCodeInterpreterTests
{
    private static readonly byte[] PngMagic = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    private ServerHost _host = null!;
    private SandboxClient _client = null!;
    private SandboxSession _session = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync();
        _client = new SandboxClient(_host.BaseAddress);
        _session = await _client.CreateSessionAsync();
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        await _session.DisposeAsync();
        _client.Dispose();
        await _host.DisposeAsync();
        var left = await Engine.CountResourcesAsync(_host.Instance);
        await Engine.RemoveAllAsync(_host.Instance);
        Assert.That(left, Is.Zero, "containers or volumes left behind");
    }

    [Test]
    public async Task State_persists_from_cell_to_cell_and_the_last_expression_is_the_result()
    {
        var first = await _session.RunCodeAsync("x = 21\nprint('set x')");
        Assert.That(first.Succeeded, Is.True, first.ToString());
        Assert.That(first.Stdout, Is.EqualTo("set x\n"));
        Assert.That(first.MainResult, Is.Null, "an assignment has no value");
        Assert.That(first.ContextId, Is.EqualTo("default-python"));

        var second = await _session.RunCodeAsync("x * 2");
        Assert.That(second.Text, Is.EqualTo("42"));
        Assert.That(second.MainResult!.IsMainResult, Is.True);
        Assert.That(second.ExecutionCount, Is.EqualTo(first.ExecutionCount + 1));

        var js = await _session.RunCodeAsync("globalThis.n = 40; n + 2", CodeLanguages.JavaScript);
        Assert.That(js.Text, Is.EqualTo("42"));
        Assert.That(js.ContextId, Is.EqualTo("default-javascript"));

        var failed = await _session.RunCodeAsync("1 / 0");
        Assert.That(failed.Succeeded, Is.False);
        Assert.That(failed.Error!.Name, Is.EqualTo("ZeroDivisionError"));
        Assert.That(failed.Error.Traceback, Does.Contain("ZeroDivisionError"));
        Assert.That((await _session.RunCodeAsync("x")).Text, Is.EqualTo("21"), "an exception keeps the state");

        var bash = await _session.RunCodeAsync("echo $((6*7))", CodeLanguages.Bash);
        Assert.That(bash.Stdout, Is.EqualTo("42\n"));
        Assert.That(bash.Results, Is.Empty);
    }

    [Test]
    public async Task A_matplotlib_figure_comes_back_as_png_bytes_and_a_dataframe_as_html()
    {
        var chart = await _session.RunCodeAsync(
            "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16])\nplt.title('squares')\nplt.show()");
        Assert.That(chart.Succeeded, Is.True, chart.Stderr);
        var figure = chart.Results.Single(r => r.HasImage);
        var png = figure.Png!;
        Assert.That(png.Take(8), Is.EqualTo(PngMagic), "a PNG");
        Assert.That(png.Length, Is.GreaterThan(2000));
        Assert.That(figure.IsMainResult, Is.False);
        Assert.That(figure.Text, Does.StartWith("<Figure"));

        var frame = await _session.RunCodeAsync("import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [4, 19]})");
        Assert.That(frame.MainResult!.Html, Does.Contain("<table").And.Contain("Oslo").And.Contain("Lima"));
        Assert.That(frame.Text, Does.Contain("Oslo").And.Contain("19"));
        Assert.That(frame.MainResult.Formats, Is.SupersetOf(new[] { "text/plain", "text/html" }));
    }

    [Test]
    public async Task An_explicit_context_is_separate_and_a_restart_forgets_its_variables()
    {
        await _session.RunCodeAsync("only_default = 1");
        await using var context = await _session.CreateCodeContextAsync(CodeLanguages.Python);
        Assert.That(context.Language, Is.EqualTo("python"));
        Assert.That(context.Info.IPython, Is.True);

        Assert.That((await context.RunAsync("only_default")).Error!.Name, Is.EqualTo("NameError"), "contexts do not share state");
        await context.RunAsync("mine = 3");
        Assert.That((await context.RunAsync("mine")).Text, Is.EqualTo("3"));
        Assert.That((await _session.RunCodeAsync("mine", options: new RunCodeOptions { ContextId = context.Id })).Text, Is.EqualTo("3"));
        Assert.That((await _session.ListCodeContextsAsync()).Select(c => c.Id), Is.SupersetOf(new[] { "default-python", context.Id }));

        var generation = context.Info.Generation;
        var restarted = await context.RestartAsync();
        Assert.That(restarted.Generation, Is.GreaterThan(generation));
        Assert.That((await context.RunAsync("mine")).Error!.Name, Is.EqualTo("NameError"), "a restart is a fresh interpreter");
        Assert.That((await _session.RunCodeAsync("only_default")).Text, Is.EqualTo("1"), "the default context is untouched");

        Assert.That(await context.DeleteAsync(), Is.True);
        var gone = await Assert.ThrowsAsync<SandboxException>(() => _session.GetCodeContextAsync(context.Id));
        Assert.That(gone!.Code, Is.EqualTo(SandboxErrorCodes.NotFound));
    }

    [Test]
    public async Task A_running_cell_is_interrupted_and_its_context_keeps_the_state()
    {
        await using var context = await _session.CreateCodeContextAsync();
        await context.RunAsync("kept = 'yes'");
        var sleeping = context.RunAsync("import time\ntime.sleep(60)");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((await context.RefreshAsync()).Status != "busy")
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "the cell never ran");
            await Task.Delay(100);
        }
        await context.InterruptAsync();
        var interrupted = await sleeping;
        Assert.That(interrupted.Interrupted, Is.True);
        Assert.That(interrupted.TimedOut, Is.False);
        Assert.That(interrupted.Error!.Name, Is.EqualTo("KeyboardInterrupt"));
        Assert.That((await context.RunAsync("kept")).Text, Is.EqualTo("'yes'"));

        var timedOut = await context.RunAsync("while True: pass", TimeSpan.FromSeconds(1));
        Assert.That(timedOut.TimedOut, Is.True);
        Assert.That(timedOut.StateLost, Is.False);
    }

    [Test]
    public async Task A_streamed_cell_yields_output_results_the_exception_and_the_result_in_order()
    {
        var events = new List<CodeEvent>();
        await foreach (var e in _session.RunCodeStreamAsync(
            "print('first')\nfrom IPython.display import display, Markdown\ndisplay(Markdown('**bold**'))\nraise ValueError('bad')"))
        {
            events.Add(e);
        }

        // Output may come in more than one chunk: consecutive stdout events are one for the order.
        var types = events.Select(e => e.Type).Where((type, i) => i == 0 || type != "stdout" || events[i - 1].Type != "stdout").ToList();
        Assert.That(types, Is.EqualTo(new[] { "stdout", "result", "error", "exited" }));
        Assert.That(string.Concat(events.Where(e => e.Type == "stdout").Select(e => e.Text)), Is.EqualTo("first\n"));
        Assert.That(events.Single(e => e.Type == "result").Output!.Markdown, Is.EqualTo("**bold**"));
        Assert.That(events.Single(e => e.Type == "error").Error!.Name, Is.EqualTo("ValueError"));
        var result = events[^1].Result!;
        Assert.That(result.Error!.Value, Is.EqualTo("bad"));
        Assert.That(result.Results.Single().Markdown, Is.EqualTo("**bold**"));
        Assert.That(result.Stdout, Is.EqualTo("first\n"));
    }
}
