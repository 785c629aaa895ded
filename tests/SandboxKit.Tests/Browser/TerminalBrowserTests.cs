using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using PuppeteerSharp;
using PuppeteerSharp.Input;
using SandboxKit.Contracts;

namespace SandboxKit.Tests.Browser;

/// <summary>
/// The web terminal (<c>/terminal</c>) in the system Chromium against the real server: the page attaches to a
/// pseudo-terminal of a real session, and what a person types there — python, vim — changes the session's files.
/// </summary>
[TestFixture]
public sealed class TerminalBrowserTests : SessionFixture
{
    private const string ChromiumPath = "/usr/bin/chromium";

    private IBrowser _browser = null!;

    [OneTimeSetUp]
    public async Task LaunchBrowserAsync()
    {
        if (!File.Exists(ChromiumPath))
        {
            Assert.Fail($"These tests drive the system Chromium at {ChromiumPath} (apt-get install chromium); nothing is downloaded.");
        }
        _browser = await Puppeteer.LaunchAsync(new LaunchOptions
        {
            ExecutablePath = ChromiumPath,
            Headless = true,
            // --no-sandbox: tests run as root, where Chromium's own sandbox cannot start.
            Args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            // Also the README's screenshot: small enough that the session fills it.
            DefaultViewport = new ViewPortOptions { Width = 960, Height = 440 },
        });
    }

    [OneTimeTearDown]
    public async Task CloseBrowserAsync()
    {
        if (_browser is not null)
        {
            await _browser.CloseAsync();
            await _browser.DisposeAsync();
        }
    }

    [Test]
    public async Task Python_and_vim_typed_into_the_terminal_write_files_in_the_session()
    {
        await using var page = await OpenPageAsync(Host.BaseAddress, $"/terminal?session={SessionId}");
        await page.WaitForShellAsync();

        await page.TypeLineAsync("python3");
        await page.WaitForCursorLineAsync("python's >>> prompt", line => line.StartsWith(">>>", StringComparison.Ordinal));
        await page.TypeLineAsync(@"open('/workspace/from_python.txt','w').write('written by python\n')");
        // write() returns the count, and the next prompt follows it.
        await page.WaitForScreenAsync("python to print the count written", screen => screen.Contains("\n18\n>>>", StringComparison.Ordinal));
        await page.TypeLineAsync("exit()");
        await page.WaitForCursorLineAsync("the shell's prompt after python", line => line.Length > 0 && !line.StartsWith(">>>", StringComparison.Ordinal));

        await page.TypeLineAsync("vim /workspace/from_vim.txt");
        // TERM is xterm-256color: vim draws on the alternate screen, and leaving it means vim has exited.
        await page.WaitUntilAsync("vim's screen", "() => window.sandboxkitTerminal.term.buffer.active.type === 'alternate'");
        await page.WaitForScreenAsync("vim's empty buffer", screen => Lines(screen).Contains("~"));
        await page.Page.Keyboard.TypeAsync("i");
        await page.Page.Keyboard.TypeAsync("edited in vim");
        await page.WaitForScreenAsync("the typed text in vim", screen => screen.Contains("edited in vim", StringComparison.Ordinal));
        await page.Page.Keyboard.PressAsync("Escape");
        await page.TypeLineAsync(":wq");
        await page.WaitUntilAsync("vim to exit", "() => window.sandboxkitTerminal.term.buffer.active.type === 'normal'");
        await page.WaitForCursorLineAsync("the shell's prompt after vim", line => line.Length > 0);

        Assert.That(await ReadFileAsync("/workspace/from_python.txt"), Is.EqualTo("written by python\n"), await page.ScreenTextAsync());
        Assert.That(await ReadFileAsync("/workspace/from_vim.txt"), Is.EqualTo("edited in vim\n"), await page.ScreenTextAsync());

        await page.TypeLineAsync("ls -la --color /workspace");
        // Keys typed while a command runs are echoed by the terminal among its output: wait for the prompt.
        await page.WaitForScreenAsync("the listing", screen => Lines(screen).Any(l => l.StartsWith("-rw", StringComparison.Ordinal) && l.EndsWith(" from_vim.txt", StringComparison.Ordinal)));
        await page.WaitForCursorLineAsync("the shell's prompt after ls", line => line.EndsWith('$'));
        await page.TypeLineAsync("python3 -c \"print('hello')\"");
        await page.WaitForScreenAsync("python's hello", screen => Lines(screen).Contains("hello"));
        await page.WaitForCursorLineAsync("the shell's prompt after hello", line => line.Length > 0);
        await SaveScreenshotAsync(page.Page);
        page.AssertNoScriptErrors();
    }

    [Test]
    public async Task A_dropped_connection_and_a_reload_resume_the_terminal_without_repeating_or_losing_output()
    {
        await using var page = await OpenPageAsync(Host.BaseAddress, $"/terminal?session={SessionId}");
        await page.WaitForShellAsync();
        await page.TypeLineAsync("echo before-$((40+2))");
        await page.WaitForScreenAsync("the first echo", screen => Lines(screen).Contains("before-42"));

        // Closed without the page asking: to the page that is a network blip.
        await page.Page.EvaluateExpressionAsync("window.sandboxkitTestSockets.at(-1).close()");
        await page.WaitUntilAsync("a reconnect", "() => window.sandboxkitTestSockets.length === 2 && window.sandboxkitTerminal.state() === 'connected'");
        var resumedFrom = await page.Page.EvaluateExpressionAsync<string>("new URL(window.sandboxkitTestSockets[1].url).searchParams.get('since')");
        Assert.That(long.Parse(resumedFrom, System.Globalization.CultureInfo.InvariantCulture), Is.GreaterThan(0), "the reconnect asked for all output again");
        await page.TypeLineAsync("echo after-$((40+2))");
        await page.WaitForScreenAsync("the echo after the reconnect", screen => Lines(screen).Contains("after-42"));
        Assert.That(Lines(await page.ScreenTextAsync()).Count(l => l == "before-42"), Is.EqualTo(1), await page.ScreenTextAsync());

        var terminalId = await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.terminalId");
        Assert.That(page.Page.Url, Does.EndWith($"/terminal?session={SessionId}&terminal={terminalId}"), "a reload would not reattach");
        await page.Page.ReloadAsync();
        await page.WaitUntilAsync("the reattach after a reload", "() => window.sandboxkitTerminal?.state() === 'connected'");
        Assert.That(await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.terminalId"), Is.EqualTo(terminalId));
        await page.WaitForScreenAsync("the replayed output after a reload",
            screen => Lines(screen).Count(l => l == "before-42") == 1 && Lines(screen).Count(l => l == "after-42") == 1);
        page.AssertNoScriptErrors();
    }

    [Test]
    public async Task An_exited_terminal_offers_a_new_one_and_its_recording_downloads()
    {
        var downloads = Directory.CreateTempSubdirectory("sandboxkit-downloads-");
        var context = await _browser.CreateBrowserContextAsync(new BrowserContextOptions
        {
            DownloadBehavior = new DownloadBehavior { Policy = DownloadPolicy.Allow, DownloadPath = downloads.FullName },
        });
        try
        {
            await using var page = await OpenPageAsync(Host.BaseAddress, $"/terminal?session={SessionId}", context);
            await page.WaitForShellAsync();
            var exited = await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.terminalId");
            await page.TypeLineAsync("echo recorded-$((2+3)); exit 3");
            await page.WaitUntilAsync("the terminal to exit", "() => window.sandboxkitTerminal.state() === 'closed'");
            Assert.That(await page.Page.EvaluateExpressionAsync<string>("document.getElementById('status-message').textContent"),
                Is.EqualTo("terminal exited (code 3)"));

            await page.Page.ClickAsync("#download-recording");
            var recording = Path.Combine(downloads.FullName, exited + ".cast");
            var deadline = DateTime.UtcNow + TerminalPage.Patience;
            while (!File.Exists(recording))
            {
                Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"no {exited}.cast downloaded; the folder has: {string.Join(", ", downloads.GetFiles().Select(f => f.Name))}");
                await Task.Delay(100);
            }
            var cast = await File.ReadAllLinesAsync(recording);
            Assert.That(cast[0], Does.Contain("\"version\":2"), "not an asciicast v2 header");
            Assert.That(string.Join("\n", cast), Does.Contain("recorded-5"));

            await page.Page.ClickAsync("#new-terminal");
            await page.WaitForShellAsync();
            var fresh = await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.terminalId");
            Assert.That(fresh, Is.Not.EqualTo(exited));
            Assert.That(page.Page.Url, Does.EndWith($"&terminal={fresh}"));
            Assert.That(await page.ScreenTextAsync(), Does.Not.Contain("recorded-5"), "the new terminal shows the old one's output");
            page.AssertNoScriptErrors();
        }
        finally
        {
            await context.CloseAsync();
            downloads.Delete(recursive: true);
        }
    }

    [Test]
    public async Task With_api_keys_the_page_asks_for_one_and_keeps_it_out_of_urls()
    {
        const string key = "browser-test-key";
        var keyed = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Key"] = key,
            ["Auth:ApiKeys:0:Tenant"] = "browser",
        });
        keyed.Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        try
        {
            await using var page = await OpenPageAsync(keyed.BaseAddress, "/terminal");
            await page.Page.WaitForSelectorAsync("#key-form:not([hidden])", new WaitForSelectorOptions { Timeout = 30_000 });
            await page.Page.TypeAsync("#key-input", key);
            await page.Page.Keyboard.PressAsync("Enter");
            await page.WaitForShellAsync();

            var sessionId = await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.sessionId");
            var terminalId = await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.terminalId");
            Assert.That(page.Page.Url, Does.EndWith($"/terminal?session={sessionId}&terminal={terminalId}"));
            var socketUrls = await page.Page.EvaluateExpressionAsync<string[]>("window.sandboxkitTestSockets.map(s => s.url)");
            Assert.That(socketUrls, Has.Length.EqualTo(1).And.All.Contains("ticket=").And.None.Contains(key));
            Assert.That(await page.Page.EvaluateExpressionAsync<string>("sessionStorage.getItem('sandboxkit-key')"), Is.EqualTo(key));

            await page.TypeLineAsync("echo $((6*7))");
            await page.WaitForScreenAsync("the shell's answer", screen => Lines(screen).Contains("42"));
            page.AssertNoScriptErrors();
        }
        finally
        {
            foreach (var s in (await keyed.Http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions)
            {
                await keyed.DeleteSessionAsync(s.Id);
            }
            await keyed.DisposeAsync();
        }
        Assert.That(await Engine.CountResourcesAsync(keyed.Instance), Is.Zero, "containers or volumes left behind");
    }

    [Test]
    public async Task A_session_that_does_not_exist_is_reported_in_the_status_line()
    {
        const string missing = "0123456789abcdef0123456789abcdef";
        await using var page = await OpenPageAsync(Host.BaseAddress, $"/terminal?session={missing}");
        await page.WaitUntilAsync("the page to give up on the session", "() => window.sandboxkitTerminal?.state() === 'closed'");
        var status = await page.Page.EvaluateExpressionAsync<string>("document.getElementById('status-message').textContent");
        Assert.That(status, Does.Contain("not found").And.Contain(missing));
        Assert.That(await page.Page.EvaluateExpressionAsync<string>("window.sandboxkitTerminal.sessionId"), Is.EqualTo(missing));
        Assert.That(await page.Page.EvaluateExpressionAsync<bool>("document.querySelector('#terminal .xterm') !== null"), Is.True,
            "xterm.js did not render into the page");
        page.AssertNoScriptErrors();
    }

    [Test]
    public async Task The_page_and_its_assets_are_served_with_their_types_a_csp_and_validators()
    {
        var page = await Host.Http.GetAsync("/terminal");
        Assert.That(page.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(page.Content.Headers.ContentType?.ToString(), Is.EqualTo("text/html; charset=utf-8"));
        Assert.That(page.Headers.CacheControl?.NoCache, Is.True);
        Assert.That(string.Join(",", page.Headers.GetValues("Content-Security-Policy")), Does.Contain("default-src 'self'").And.Not.Contain("unsafe-eval"));
        Assert.That(await page.Content.ReadAsStringAsync(), Does.Contain("/terminal/assets/terminal.js").And.Not.Contain("<script>"));

        foreach (var (name, type) in new[]
                 {
                     ("terminal.js", "text/javascript; charset=utf-8"), ("terminal.css", "text/css; charset=utf-8"),
                     ("xterm.js", "text/javascript; charset=utf-8"), ("xterm.css", "text/css; charset=utf-8"),
                     ("addon-fit.js", "text/javascript; charset=utf-8"),
                 })
        {
            var asset = await Host.Http.GetAsync($"/terminal/assets/{name}");
            Assert.That(asset.StatusCode, Is.EqualTo(HttpStatusCode.OK), name);
            Assert.That(asset.Content.Headers.ContentType?.ToString(), Is.EqualTo(type), name);
            Assert.That(asset.Headers.CacheControl?.MaxAge, Is.EqualTo(TimeSpan.FromHours(1)), name);
            var etag = asset.Headers.ETag;
            Assert.That(etag?.Tag, Does.Match("^\"[0-9a-f]{64}\"$"), name);

            using var revalidate = new HttpRequestMessage(HttpMethod.Get, $"/terminal/assets/{name}");
            revalidate.Headers.IfNoneMatch.Add(etag!);
            var notModified = await Host.Http.SendAsync(revalidate);
            Assert.That(notModified.StatusCode, Is.EqualTo(HttpStatusCode.NotModified), name);
            Assert.That(await notModified.Content.ReadAsByteArrayAsync(), Is.Empty, name);
        }

        var unknown = await Host.Http.GetAsync("/terminal/assets/LICENSE.xterm");
        Assert.That(unknown.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await ServerHost.ProblemAsync(unknown)).GetProperty("title").GetString(), Is.EqualTo("Not found"));
    }

    private static string[] Lines(string screen) => screen.Split('\n');

    private async Task<string> ReadFileAsync(string path)
    {
        var deadline = DateTime.UtcNow + TerminalPage.Patience;
        while (true)
        {
            var response = await Host.Http.GetAsync($"/v1/sessions/{SessionId}/files?path={Uri.EscapeDataString(path)}");
            // The editor's write can land a moment after its screen closed.
            if (response.StatusCode != HttpStatusCode.NotFound || DateTime.UtcNow > deadline)
            {
                await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
                return Encoding.UTF8.GetString(await response.Content.ReadAsByteArrayAsync());
            }
            await Task.Delay(100);
        }
    }

    private async Task<TerminalPage> OpenPageAsync(Uri server, string pathAndQuery, IBrowserContext? context = null)
    {
        var page = new TerminalPage(await (context?.NewPageAsync() ?? _browser.NewPageAsync()));
        // Lets a test see the page's sockets and close one as a network failure would.
        await page.Page.EvaluateFunctionOnNewDocumentAsync("""
            () => {
              const NativeWebSocket = window.WebSocket;
              window.sandboxkitTestSockets = [];
              window.WebSocket = class extends NativeWebSocket {
                constructor(...args) { super(...args); window.sandboxkitTestSockets.push(this); }
              };
            }
            """);
        var response = await page.Page.GoToAsync(new Uri(server, pathAndQuery).ToString(), WaitUntilNavigation.Load);
        // 304: the page is revalidated on every load, and an earlier test's copy is still current.
        Assert.That(response.Status, Is.AnyOf(HttpStatusCode.OK, HttpStatusCode.NotModified), $"GET {pathAndQuery}");
        return page;
    }

    /// <summary>Saves the screenshot as a test attachment, and where <c>SANDBOXKIT_SCREENSHOT_DIR</c> names a directory (the README's image), there too.</summary>
    private static async Task SaveScreenshotAsync(IPage page)
    {
        var path = Path.Combine(TestContext.CurrentContext.WorkDirectory, "terminal.png");
        await page.ScreenshotAsync(path);
        TestContext.AddTestAttachment(path, "The web terminal after python, vim and ls");
        if (Environment.GetEnvironmentVariable("SANDBOXKIT_SCREENSHOT_DIR") is { Length: > 0 } directory)
        {
            Assert.That(Directory.Exists(directory), Is.True, $"SANDBOXKIT_SCREENSHOT_DIR={directory} is not a directory");
            File.Copy(path, Path.Combine(directory, "terminal.png"), overwrite: true);
        }
    }

    /// <summary>A browser tab on the terminal page: what it reported as errors, typing, and waits that read the xterm.js screen.</summary>
    private sealed class TerminalPage : IAsyncDisposable
    {
        /// <summary>How long one step (a connect, a prompt, a program's output) may take.</summary>
        public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

        // Lines without trailing blanks (vim pads its lines with them): python's prompt reads ">>>".
        private const string ScreenText = """
            () => {
              const buffer = window.sandboxkitTerminal?.term.buffer.active;
              if (!buffer) return '(no terminal)';
              const lines = [];
              for (let i = 0; i < buffer.length; i++) lines.push((buffer.getLine(i)?.translateToString(true) ?? '').trimEnd());
              return lines.join('\n').replace(/\n+$/, '\n');
            }
            """;

        private const string CursorLine = """
            () => {
              const buffer = window.sandboxkitTerminal.term.buffer.active;
              return (buffer.getLine(buffer.baseY + buffer.cursorY)?.translateToString(true) ?? '').trimEnd();
            }
            """;

        private const string Diagnosis = $$"""
            () => {
              const t = window.sandboxkitTerminal;
              const status = document.getElementById('status')?.innerText ?? '(no status line)';
              return 'state: ' + (t ? t.state() : '(no terminal)') + '\nstatus: ' + status.replace(/\s+/g, ' ') + '\nscreen:\n' + ({{ScreenText}})();
            }
            """;

        private readonly List<string> _scriptErrors = [];

        public TerminalPage(IPage page)
        {
            Page = page;
            page.PageError += (_, e) => _scriptErrors.Add("uncaught: " + e.Message);
            page.Console += (_, e) =>
            {
                // Chromium logs every non-2xx fetch as a console error; the page's answers to those are what is tested.
                if (e.Message.Type == ConsoleType.Error && !e.Message.Text.StartsWith("Failed to load resource", StringComparison.Ordinal))
                {
                    _scriptErrors.Add("console: " + e.Message.Text);
                }
            };
        }

        public IPage Page { get; }

        /// <summary>Waits for the socket and the shell's first prompt, and focuses the terminal as a click would.</summary>
        public async Task WaitForShellAsync()
        {
            await WaitUntilAsync("the terminal to connect", "() => window.sandboxkitTerminal?.state() === 'connected'");
            // Input typed before the prompt would still arrive, but its echo would come out of order.
            await WaitForCursorLineAsync("the shell's prompt", line => line.Length > 0);
            await Page.ClickAsync("#terminal");
        }

        public async Task TypeLineAsync(string text)
        {
            await Page.Keyboard.TypeAsync(text, new TypeOptions { Delay = 5 });
            await Page.Keyboard.PressAsync("Enter");
        }

        public Task<string> ScreenTextAsync() => Page.EvaluateFunctionAsync<string>(ScreenText);

        public Task WaitForScreenAsync(string what, Func<string, bool> condition) => WaitForTextAsync(what, ScreenText, condition);

        public Task WaitForCursorLineAsync(string what, Func<string, bool> condition) => WaitForTextAsync(what, CursorLine, condition);

        /// <summary>Polls a JavaScript predicate in the page until it holds.</summary>
        public async Task WaitUntilAsync(string what, string predicate)
        {
            try
            {
                await Page.WaitForFunctionAsync(predicate, new WaitForFunctionOptions { Timeout = (int)Patience.TotalMilliseconds, PollingInterval = 100 });
            }
            catch (WaitTaskTimeoutException)
            {
                await FailWithDiagnosisAsync(what);
            }
        }

        private async Task WaitForTextAsync(string what, string function, Func<string, bool> condition)
        {
            var deadline = DateTime.UtcNow + Patience;
            while (!condition(await Page.EvaluateFunctionAsync<string>(function)))
            {
                if (DateTime.UtcNow > deadline)
                {
                    await FailWithDiagnosisAsync(what);
                }
                await Task.Delay(100);
            }
        }

        private async Task FailWithDiagnosisAsync(string what)
        {
            var errors = _scriptErrors.Count == 0 ? "" : "\nscript errors:\n" + string.Join("\n", _scriptErrors);
            Assert.Fail($"Timed out after {Patience.TotalSeconds} s waiting for {what} on {Page.Url}.\n{await Page.EvaluateFunctionAsync<string>(Diagnosis)}{errors}");
        }

        public void AssertNoScriptErrors() => Assert.That(_scriptErrors, Is.Empty, "the page reported script errors");

        public async ValueTask DisposeAsync() => await Page.CloseAsync();
    }
}
