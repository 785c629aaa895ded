using System.Net;
using System.Text.Json;
using SandboxKit.Contracts;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;

namespace SandboxKit.Client.Tests;

/// <summary>The code interpreter's client side: cells, mime bundles, streams and contexts, against canned answers.</summary>
public class CodeInterpreterTests : WireMockTestBase
{
    private static readonly byte[] PngBytes = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, (byte)'I', (byte)'H', (byte)'D', (byte)'R', 1, 2, 3];
    private static readonly byte[] JpegBytes = [0xFF, 0xD8, 0xFF, 0xE0, 0, 16, (byte)'J', (byte)'F', (byte)'I', (byte)'F'];

    private const string CodePath = "/v1/sessions/s1/code";
    private const string ContextsPath = "/v1/sessions/s1/contexts";

    /// <summary>An answer as the server writes it on the wire: mime types as properties beside isMainResult, images base64.</summary>
    private static string CellAnswer(string results, string error = "null", int exitCode = 0, string extra = "") => $$"""
        {"exitCode":{{exitCode}},"stdout":"set x\n","stderr":"","timedOut":false,"oomKilled":false,"truncated":false,
         "stdoutBytes":6,"stderrBytes":0,"durationMs":41.5,"results":{{results}},"error":{{error}},"executionCount":7,
         "contextId":"default-python","interrupted":false,"stateLost":false{{extra}}}
        """;

    private static IResponseBuilder JsonBody(int status, string body) =>
        Response.Create().WithStatusCode(status).WithHeader("Content-Type", "application/json").WithBody(body);

    private static IResponseBuilder Sse(string body) =>
        Response.Create().WithStatusCode(200).WithHeader("Content-Type", "text/event-stream").WithBody(body);

    private static CodeContext Context(string id = "ctx-1", string status = "idle", int count = 0, int generation = 1) => new()
    {
        Id = id,
        Language = "python",
        Status = status,
        ExecutionCount = count,
        CreatedAt = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero),
        Cwd = "/workspace",
        Version = "3.11.2",
        IPython = true,
        Generation = generation,
    };

    [Test]
    public async Task RunCodeAsync_SendsTheCell_AndDecodesEveryFormatOfTheMimeBundles()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var png = Convert.ToBase64String(PngBytes) + "\n"; // IPython ends its base64 with a newline
        var pngOnTheWire = png.Replace("\n", "\\n", StringComparison.Ordinal);
        var jpeg = Convert.ToBase64String(JpegBytes);
        Server.Given(Request.Create().WithPath(CodePath).UsingPost()).RespondWith(JsonBody(200, CellAnswer($$"""
            [{"isMainResult":false,"image/png":"{{pngOnTheWire}}","text/plain":"<Figure size 640x480 with 1 Axes>"},
             {"isMainResult":false,"image/jpeg":"{{jpeg}}","image/svg+xml":"<svg/>","text/markdown":"**bold**","text/latex":"$x$"},
             {"isMainResult":true,"text/plain":"42","text/html":"<b>42</b>","application/json":"{\"answer\":42}","application/x-custom":"raw"}]
            """)));

        var result = await session.RunCodeAsync("x * 2", options: new RunCodeOptions { Timeout = TimeSpan.FromSeconds(5) });

        using (var body = JsonDocument.Parse(Requests("POST", CodePath).Single().RequestMessage.Body!))
        {
            Assert.That(body.RootElement.GetProperty("language").GetString(), Is.EqualTo("python"), "python is the default language");
            Assert.That(body.RootElement.GetProperty("code").GetString(), Is.EqualTo("x * 2"));
            Assert.That(body.RootElement.GetProperty("timeoutSeconds").GetDouble(), Is.EqualTo(5));
            Assert.That(body.RootElement.TryGetProperty("contextId", out var context) ? context.ValueKind : JsonValueKind.Undefined,
                Is.AnyOf(JsonValueKind.Undefined, JsonValueKind.Null), "no context: the default one");
        }
        Assert.Multiple(() =>
        {
            Assert.That(result.Results, Has.Count.EqualTo(3));
            Assert.That(result.Succeeded, Is.True);
            Assert.That(result.Text, Is.EqualTo("42"));
            Assert.That(result.MainResult!.Html, Is.EqualTo("<b>42</b>"));
            Assert.That(result.MainResult.Json!.Value.GetProperty("answer").GetInt32(), Is.EqualTo(42));
            Assert.That(result.MainResult.Get("application/x-custom"), Is.EqualTo("raw"));
            Assert.That(result.MainResult.Formats, Is.EquivalentTo(new[] { "text/plain", "text/html", "application/json", "application/x-custom" }));
            Assert.That(result.MainResult.HasImage, Is.False);
            Assert.That(result.MainResult.Png, Is.Null);

            var figure = result.Results[0];
            Assert.That(figure.IsMainResult, Is.False);
            Assert.That(figure.HasImage, Is.True);
            Assert.That(figure.Png, Is.EqualTo(PngBytes), "base64 decoded, the trailing newline ignored");
            Assert.That(figure.Text, Is.EqualTo("<Figure size 640x480 with 1 Axes>"));
            Assert.That(figure.Data["image/png"], Is.EqualTo(png), "the raw bundle keeps the base64 text");

            var display = result.Results[1];
            Assert.That(display.Jpeg, Is.EqualTo(JpegBytes));
            Assert.That(display.GetBytes("image/jpeg"), Is.EqualTo(JpegBytes));
            Assert.That(display.Svg, Is.EqualTo("<svg/>"));
            Assert.That(display.Markdown, Is.EqualTo("**bold**"));
            Assert.That(display.Latex, Is.EqualTo("$x$"));
            Assert.That(display.Text, Is.Null);
            Assert.That(display.ToString(), Does.Contain("image/jpeg"));

            Assert.That(result.Stdout, Is.EqualTo("set x\n"));
            Assert.That(result.ExecutionCount, Is.EqualTo(7));
            Assert.That(result.ContextId, Is.EqualTo("default-python"));
            Assert.That(result.Duration, Is.EqualTo(TimeSpan.FromMilliseconds(41.5)));
            Assert.That(result.Error, Is.Null);
        });
    }

    [Test]
    public async Task A_cell_exception_is_a_result_with_the_error_and_the_flags()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CodePath).UsingPost()).RespondWith(JsonBody(200, CellAnswer("[]",
            error: """{"name":"KeyboardInterrupt","value":"","traceback":"Traceback (most recent call last):\n  KeyboardInterrupt"}""",
            exitCode: 1).Replace("\"timedOut\":false", "\"timedOut\":true").Replace("\"interrupted\":false", "\"interrupted\":true")));

        var result = await session.RunCodeAsync("while True: pass", CodeLanguages.Python);

        Assert.Multiple(() =>
        {
            Assert.That(result.Succeeded, Is.False);
            Assert.That(result.ExitCode, Is.EqualTo(1));
            Assert.That(result.Error!.Name, Is.EqualTo("KeyboardInterrupt"));
            Assert.That(result.Error.Traceback, Does.StartWith("Traceback"));
            Assert.That(result.TimedOut, Is.True);
            Assert.That(result.Interrupted, Is.True);
            Assert.That(result.StateLost, Is.False);
            Assert.That(result.MainResult, Is.Null);
            Assert.That(result.Text, Is.Null);
            Assert.That(result.ToString(), Does.StartWith("KeyboardInterrupt").And.Contain("timed out"));
        });
    }

    [Test]
    public async Task Malformed_values_in_a_bundle_read_as_absent_not_as_failures()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CodePath).UsingPost()).RespondWith(JsonBody(200, CellAnswer(
            """[{"isMainResult":true,"image/png":"not*base64!","application/json":"{broken","text/plain":"x"}]""")));

        var result = await session.RunCodeAsync("x");

        Assert.That(result.MainResult!.Png, Is.Null);
        Assert.That(result.MainResult.Json, Is.Null);
        Assert.That(result.MainResult.HasImage, Is.True, "the format is there, even if its value is unusable");
        Assert.That(result.Text, Is.EqualTo("x"));
    }

    [Test]
    public async Task Bash_and_javascript_and_a_context_go_in_the_request()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CodePath).UsingPost()).RespondWith(Json(200, Result(stdout: "42\n")));

        var bash = await session.RunCodeAsync("echo $((6*7)) $V", CodeLanguages.Bash,
            new RunCodeOptions { Stdin = "in", Environment = new Dictionary<string, string> { ["V"] = "v" }, IdempotencyKey = "my-key" });
        await session.RunCodeAsync("1 + 1", CodeLanguages.JavaScript, new RunCodeOptions { ContextId = "ctx-9" });

        var requests = Requests("POST", CodePath);
        using var first = JsonDocument.Parse(requests[0].RequestMessage.Body!);
        Assert.That(first.RootElement.GetProperty("language").GetString(), Is.EqualTo("bash"));
        Assert.That(first.RootElement.GetProperty("stdin").GetString(), Is.EqualTo("in"));
        Assert.That(first.RootElement.GetProperty("environment").GetProperty("V").GetString(), Is.EqualTo("v"));
        Assert.That(Header(requests[0].RequestMessage, "Idempotency-Key"), Is.EqualTo("my-key"));
        using var second = JsonDocument.Parse(requests[1].RequestMessage.Body!);
        Assert.That(second.RootElement.GetProperty("language").GetString(), Is.EqualTo("javascript"));
        Assert.That(second.RootElement.GetProperty("contextId").GetString(), Is.EqualTo("ctx-9"));
        Assert.That(bash.Stdout, Is.EqualTo("42\n"));
        Assert.That(bash.Results, Is.Empty, "a bash answer has no rich results");
        Assert.That(bash.ExecutionCount, Is.Null);
    }

    [Test]
    public async Task Swapped_arguments_are_refused_before_anything_is_sent()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);

        var ex = await Assert.ThrowsAsync<ArgumentException>(() => session.RunCodeAsync("python", "print(1)"));

        Assert.That(ex!.Message, Does.Contain("code first"));
        Assert.That(Requests("POST", CodePath), Is.Empty);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => session.RunCodeAsync("1", options: new RunCodeOptions { Timeout = TimeSpan.Zero }));
        Assert.Throws<ArgumentException>(() => session.RunCodeStreamAsync("js", "console.log(1)"), "validated when called, not when enumerated");
    }

    [TestCase(404, "session_not_found", typeof(SessionNotFoundException))]
    [TestCase(404, "not_found", typeof(SandboxException))]
    [TestCase(409, "conflict", typeof(SandboxException))]
    [TestCase(422, "language_unavailable", typeof(SandboxException))]
    [TestCase(401, "unauthorized", typeof(SandboxAuthenticationException))]
    [TestCase(429, "quota_exceeded", typeof(SandboxQuotaExceededException))]
    public async Task Problems_become_typed_exceptions(int status, string code, Type expected)
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 0);
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CodePath).UsingPost()).RespondWith(Problem(status, code, "Problem", "what went wrong"));

        var ex = await Assert.CatchAsync<SandboxException>(() => session.RunCodeAsync("1"));

        var sandbox = ex!;
        Assert.That(sandbox.GetType(), Is.EqualTo(expected));
        Assert.That(sandbox.Status, Is.EqualTo((HttpStatusCode)status));
        Assert.That(sandbox.Code, Is.EqualTo(code));
        Assert.That(sandbox.Detail, Is.EqualTo("what went wrong"));
    }

    [Test]
    public async Task A_context_is_created_used_restarted_interrupted_and_deleted_once()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(ContextsPath).UsingPost())
            .RespondWith(Json(201, Context(), SandboxJsonContext.Default.CodeContext).WithHeader("Location", ContextsPath + "/ctx-1"));
        Server.Given(Request.Create().WithPath(CodePath).UsingPost()).RespondWith(JsonBody(200, CellAnswer("""[{"isMainResult":true,"text/plain":"3"}]""")));
        Server.Given(Request.Create().WithPath(ContextsPath + "/ctx-1/restart").UsingPost())
            .RespondWith(Json(200, Context(generation: 2), SandboxJsonContext.Default.CodeContext));
        Server.Given(Request.Create().WithPath(ContextsPath + "/ctx-1/interrupt").UsingPost())
            .RespondWith(Json(200, Context(count: 4), SandboxJsonContext.Default.CodeContext));
        Server.Given(Request.Create().WithPath(ContextsPath + "/ctx-1").UsingGet())
            .RespondWith(Json(200, Context(status: "busy", count: 5), SandboxJsonContext.Default.CodeContext));
        Server.Given(Request.Create().WithPath(ContextsPath + "/ctx-1").UsingDelete()).RespondWith(Response.Create().WithStatusCode(204));

        var context = await session.CreateCodeContextAsync(cwd: "data");
        using (var body = JsonDocument.Parse(Requests("POST", ContextsPath).Single().RequestMessage.Body!))
        {
            Assert.That(body.RootElement.GetProperty("language").GetString(), Is.EqualTo("python"));
            Assert.That(body.RootElement.GetProperty("cwd").GetString(), Is.EqualTo("data"));
        }
        Assert.That((context.Id, context.Language, context.SessionId, context.Info.IPython), Is.EqualTo(("ctx-1", "python", "s1", true)));

        var run = await context.RunAsync("mine", TimeSpan.FromSeconds(3));
        using (var body = JsonDocument.Parse(Requests("POST", CodePath).Single().RequestMessage.Body!))
        {
            Assert.That(body.RootElement.GetProperty("contextId").GetString(), Is.EqualTo("ctx-1"));
            Assert.That(body.RootElement.GetProperty("language").GetString(), Is.EqualTo("python"));
            Assert.That(body.RootElement.GetProperty("timeoutSeconds").GetDouble(), Is.EqualTo(3));
        }
        Assert.That(run.Text, Is.EqualTo("3"));

        Assert.That((await context.RestartAsync()).Generation, Is.EqualTo(2));
        Assert.That(context.Info.Generation, Is.EqualTo(2), "Info follows the last answer");
        Assert.That((await context.InterruptAsync()).ExecutionCount, Is.EqualTo(4));
        Assert.That((await context.RefreshAsync()).Status, Is.EqualTo("busy"));
        Assert.That(context.ToString(), Does.Contain("ctx-1").And.Contain("busy"));

        await context.DisposeAsync();
        await context.DisposeAsync();
        Assert.That(Requests("DELETE", ContextsPath + "/ctx-1"), Has.Count.EqualTo(1), "disposal deletes once");
        await Assert.ThrowsAsync<ObjectDisposedException>(() => context.RunAsync("1"));
    }

    [Test]
    public async Task Contexts_are_listed_and_found_and_a_gone_one_is_fine_to_dispose()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(ContextsPath).UsingGet()).RespondWith(Json(200,
            new CodeContextList { Contexts = [Context("default-python", count: 2), Context("ctx-2")] }, SandboxJsonContext.Default.CodeContextList));
        Server.Given(Request.Create().WithPath(ContextsPath + "/default-python").UsingGet())
            .RespondWith(Json(200, Context("default-python", count: 2), SandboxJsonContext.Default.CodeContext));
        Server.Given(Request.Create().WithPath(ContextsPath + "/default-python").UsingDelete())
            .RespondWith(Problem(404, "not_found", "Context not found"));
        Server.Given(Request.Create().WithPath(ContextsPath + "/nope").UsingGet()).RespondWith(Problem(404, "not_found", "Context not found"));

        var list = await session.ListCodeContextsAsync();
        Assert.That(list.Select(c => c.Id), Is.EqualTo(new[] { "default-python", "ctx-2" }));

        var found = await session.GetCodeContextAsync("default-python");
        Assert.That(found.Info.ExecutionCount, Is.EqualTo(2));
        Assert.That(await found.DeleteAsync(), Is.False, "already gone");
        await found.DisposeAsync();
        Assert.That(Requests("DELETE", ContextsPath + "/default-python"), Has.Count.EqualTo(1), "DeleteAsync counts as the disposal");

        var missing = await Assert.ThrowsAsync<SandboxException>(() => session.GetCodeContextAsync("nope"));
        Assert.That(missing!.Code, Is.EqualTo(SandboxErrorCodes.NotFound));
    }

    [Test]
    public async Task A_failed_delete_on_disposal_is_swallowed_but_DeleteAsync_throws()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 0);
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(ContextsPath).UsingPost()).RespondWith(Json(201, Context(), SandboxJsonContext.Default.CodeContext));
        Server.Given(Request.Create().WithPath(ContextsPath + "/ctx-1").UsingDelete()).RespondWith(Problem(503, "supervisor_unavailable"));

        var first = await session.CreateCodeContextAsync();
        await Assert.ThrowsAsync<SandboxException>(() => first.DeleteAsync());
        await first.DisposeAsync(); // tries once more, swallows

        var second = await session.CreateCodeContextAsync();
        await Assert.DoesNotThrowAsync(async () => await second.DisposeAsync());
        Assert.That(Requests("DELETE", ContextsPath + "/ctx-1"), Has.Count.EqualTo(3));
    }

    [Test]
    public async Task RunCodeStreamAsync_parses_result_events_and_a_cell_error_does_not_end_the_stream()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var png = Convert.ToBase64String(PngBytes);
        var exited = CellAnswer($$"""[{"isMainResult":false,"image/png":"{{png}}"},{"isMainResult":true,"text/plain":"'last'"}]""",
            error: """{"name":"ValueError","value":"bad","traceback":"tb"}""", exitCode: 1).ReplaceLineEndings(" ");
        Server.Given(Request.Create().WithPath(CodePath + "/stream").UsingPost()).RespondWith(Sse(
            "event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"first\\n\"}\n\n" +
            ": comment\n\n" +
            "event: keepalive\ndata: {\"type\":\"keepalive\"}\n\n" +
            $"event: result\ndata: {{\"type\":\"result\",\"output\":{{\"isMainResult\":false,\"image/png\":\"{png}\"}}}}\n\n" +
            "event: stderr\ndata: {\"type\":\"stderr\",\"data\":\"warn\\n\"}\n\n" +
            "event: result\ndata: {\"type\":\"result\",\"output\":{\"isMainResult\":true,\"text/plain\":\"'last'\"}}\n\n" +
            "event: error\ndata: {\"type\":\"error\",\"error\":\"ValueError: bad\",\"exception\":{\"name\":\"ValueError\",\"value\":\"bad\",\"traceback\":\"tb\"}}\n\n" +
            $"event: exited\ndata: {{\"type\":\"exited\",\"result\":{exited}}}\n\n"));

        var events = new List<CodeEvent>();
        await foreach (var e in session.RunCodeStreamAsync("print('first')", options: new RunCodeOptions { ContextId = "ctx-1" }))
        {
            events.Add(e);
        }

        Assert.That(events.Select(e => e.Type), Is.EqualTo(new[] { "stdout", "result", "stderr", "result", "error", "exited" }));
        Assert.Multiple(() =>
        {
            Assert.That(events[0].Text, Is.EqualTo("first\n"));
            Assert.That(events[1].Output!.Png, Is.EqualTo(PngBytes));
            Assert.That(events[1].Output!.IsMainResult, Is.False);
            Assert.That(events[2].Text, Is.EqualTo("warn\n"));
            Assert.That(events[3].Output!.Text, Is.EqualTo("'last'"));
            Assert.That(events[3].Output!.IsMainResult, Is.True);
            Assert.That(events[4].Error!.Name, Is.EqualTo("ValueError"));
            Assert.That(events[5].Result!.Error!.Value, Is.EqualTo("bad"));
            Assert.That(events[5].Result!.Results, Has.Count.EqualTo(2));
            Assert.That(events[5].Result!.Text, Is.EqualTo("'last'"));
        });
        var request = Requests("POST", CodePath + "/stream").Single().RequestMessage;
        Assert.That(Header(request, "Accept"), Is.EqualTo("text/event-stream"));
        Assert.That(Header(request, "Idempotency-Key"), Is.Not.Null.And.Not.Empty);
        using var body = JsonDocument.Parse(request.Body!);
        Assert.That(body.RootElement.GetProperty("contextId").GetString(), Is.EqualTo("ctx-1"));
    }

    [Test]
    public async Task RunCodeStreamAsync_a_stream_error_or_an_early_end_throws()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/code/stream").UsingPost()).AtPriority(2)
            .RespondWith(Sse("event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"x\"}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":\"session gone\"}\n\n"));
        Server.Given(Request.Create().WithPath("/v1/sessions/s2/code/stream").UsingPost())
            .RespondWith(Sse("event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"x\"}\n\n"));

        var seen = new List<string>();
        var failed = await Assert.ThrowsAsync<SandboxException>(async () =>
        {
            await foreach (var e in session.RunCodeStreamAsync("1"))
            {
                seen.Add(e.Type);
            }
        });
        Assert.That(seen, Is.EqualTo(new[] { "stdout" }));
        Assert.That(failed!.Code, Is.EqualTo(SandboxErrorCodes.StreamError));
        Assert.That(failed.Detail, Is.EqualTo("session gone"));

        var other = await AttachAsync(client, "s2");
        var cut = await Assert.ThrowsAsync<SandboxException>(async () =>
        {
            await foreach (var unused in other.RunCodeStreamAsync("1"))
            {
            }
        });
        Assert.That(cut!.Code, Is.EqualTo(SandboxErrorCodes.StreamError));
    }

    [Test]
    public async Task RunCodeStreamAsync_a_problem_before_the_stream_is_a_typed_exception()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CodePath + "/stream").UsingPost()).RespondWith(Problem(409, "conflict", "Context busy"));

        var ex = await Assert.ThrowsAsync<SandboxException>(async () =>
        {
            await foreach (var unused in session.RunCodeStreamAsync("1"))
            {
            }
        });

        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.Conflict));
        Assert.That(ex.Title, Is.EqualTo("Context busy"));
    }

    [Test]
    public void The_contract_wrappers_are_usable_as_fakes()
    {
        var output = new CodeOutput { IsMainResult = true };
        output.Data["text/plain"] = JsonSerializer.SerializeToElement("hi");
        var result = new CodeResult(new ExecuteResult
        {
            ExitCode = 0, Stdout = "", Stderr = "", TimedOut = false, OomKilled = false, Truncated = false,
            StdoutBytes = 0, StderrBytes = 0, DurationMs = 1, Results = [output],
        });
        Assert.That(result.Text, Is.EqualTo("hi"));
        Assert.That(new CodeEvent(new CommandEvent { Type = "stdout", Data = "x" }).ToString(), Is.EqualTo("stdout: x"));
    }
}
