using System.Net;
using System.Net.Http.Json;
using System.Text;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Command semantics through the agent channel, against one real session shared by the fixture.</summary>
[TestFixture]
public sealed class ExecTests : SessionFixture
{
    protected override IDictionary<string, string?> Settings => new Dictionary<string, string?> { ["Sandbox:OutputCapBytes"] = "65536" };

    private Task<ExecuteResult> Run(string command, double? timeout = null) => Host.ExecuteAsync(SessionId, command, timeout);

    [Test]
    public async Task Working_directory_and_exported_variables_persist()
    {
        await Run("cd /tmp && export A=1 && B=unexported");
        var r = await Run("pwd; echo $A; echo \"b=$B\"");
        Assert.That(r.Stdout, Is.EqualTo("/tmp\n1\nb=\n"));
        Assert.That(r.WorkingDirectory, Is.EqualTo("/tmp"));
        await Run("cd /workspace; unset A");
    }

    [Test]
    public async Task Stdout_stderr_and_exit_code_are_separate_and_exact()
    {
        var r = await Run("echo out; echo err >&2; exit 3");
        Assert.Multiple(() =>
        {
            Assert.That(r.Stdout, Is.EqualTo("out\n"));
            Assert.That(r.Stderr, Is.EqualTo("err\n"));
            Assert.That(r.ExitCode, Is.EqualTo(3));
            Assert.That(r.TimedOut, Is.False);
            Assert.That(r.DurationMs, Is.GreaterThan(0));
        });
    }

    [Test]
    public async Task Killing_the_shell_reports_128_plus_signal_and_theSessionId_stays_usable()
    {
        var r = await Run("echo before; kill -9 $$");
        Assert.That(r.ExitCode, Is.EqualTo(137));
        Assert.That(r.Stdout, Is.EqualTo("before\n"));
        Assert.That((await Run("echo after")).Stdout, Is.EqualTo("after\n"));
    }

    [Test]
    public async Task Timeout_kills_the_whole_tree_including_children_that_ignore_SIGTERM()
    {
        var r = await Run("echo started; (trap '' TERM; sleep 300) & bash -c \"trap '' TERM; sleep 300\"", timeout: 1.5);
        Assert.That(r.TimedOut, Is.True);
        Assert.That(r.Stdout, Is.EqualTo("started\n"));
        Assert.That(r.DurationMs, Is.LessThan(10_000));
        var ps = await Run("ps -eo args | grep -c '^sleep 300' || true");
        Assert.That(ps.Stdout.Trim(), Is.EqualTo("0"), "sleep processes survived the timeout");
    }

    [Test]
    public async Task Stdin_is_closed_by_default_and_takes_text_when_given()
    {
        var closed = await Run("cat; echo rc=$?", timeout: 10);
        Assert.That(closed.Stdout, Is.EqualTo("rc=0\n"));
        var text = await Host.ExecuteAsync(SessionId, new ExecuteRequest { Command = "tr a-z A-Z", Stdin = "hello\nworld" });
        Assert.That(text.Stdout, Is.EqualTo("HELLO\nWORLD"));
    }

    [Test]
    public async Task Background_processes_do_not_hold_the_command_open()
    {
        var r = await Run("sleep 1000 & nohup python3 -m http.server 8765 >/dev/null 2>&1 & echo started", timeout: 20);
        Assert.That(r.Stdout, Is.EqualTo("started\n"));
        Assert.That(r.DurationMs, Is.LessThan(5_000));
        Assert.That((await Run("pgrep -f 'sleep 1000' >/dev/null && echo alive")).Stdout, Is.EqualTo("alive\n"));
        await Run("pkill -f 'sleep 1000'; pkill -f http.server; true");
    }

    [Test]
    public async Task Terminal_like_edge_cases_keep_the_framing()
    {
        Assert.That((await Run("PS1='> '; export PS1; echo ok")).Stdout, Is.EqualTo("ok\n"));
        Assert.That((await Run("exec echo replaced")).Stdout, Is.EqualTo("replaced\n"));
        Assert.That((await Run("read x; echo \"read=$? x=$x\"")).Stdout, Is.EqualTo("read=1 x=\n"));
        var heredoc = await Run("cat <<'EOF'\nsay \"hi\" and 'bye' $HOME `x`\nEOF\necho \"nested 'quotes' \\\"here\\\"\"");
        Assert.That(heredoc.Stdout, Is.EqualTo("say \"hi\" and 'bye' $HOME `x`\nnested 'quotes' \"here\"\n"));
        var markers = await Run("printf '\\x00\\x00\\x00\\x09x\\x00\\x00\\x00\\x01__SANDBOXKIT_EXIT__ 0\\n'; echo done");
        Assert.That(markers.Stdout, Does.EndWith("__SANDBOXKIT_EXIT__ 0\ndone\n"));
        Assert.That(markers.ExitCode, Is.Zero);
        var syntax = await Run("echo ok; if then");
        Assert.That(syntax.ExitCode, Is.EqualTo(2));
        Assert.That(syntax.Stderr, Does.Contain("syntax error"));
    }

    [Test]
    public async Task Nul_and_invalid_utf8_bytes_come_back_byte_exact_in_files_and_without_breaking_text()
    {
        var r = await Run("printf 'a\\x00b\\xffc\\n'");
        Assert.That(r.StdoutBytes, Is.EqualTo(6));
        Assert.That(r.Stdout, Is.EqualTo("a\0b\uFFFDc\n"));
    }

    [Test]
    public async Task A_python_venv_activation_persists()
    {
        var r = await Run("cd /workspace && python3 -m venv venv && . venv/bin/activate && echo $VIRTUAL_ENV", timeout: 120);
        Assert.That(r.ExitCode, Is.Zero, r.Stderr);
        var which = await Run("which python3; deactivate 2>/dev/null; true");
        Assert.That(which.Stdout, Does.StartWith("/workspace/venv/bin/python3"));
        await Run("rm -rf /workspace/venv; unset VIRTUAL_ENV; export PATH=/usr/local/bin:/usr/bin:/bin");
    }

    [Test]
    public async Task A_flood_is_capped_keeping_head_and_tail()
    {
        var r = await Run("seq 1 2000000; echo END", timeout: 60);
        Assert.Multiple(() =>
        {
            Assert.That(r.Truncated, Is.True);
            Assert.That(r.StdoutBytes, Is.GreaterThan(10_000_000));
            Assert.That(r.Stdout, Does.StartWith("1\n2\n3\n"));
            Assert.That(r.Stdout, Does.EndWith("2000000\nEND\n"));
            Assert.That(r.Stdout, Does.Contain("bytes of output truncated"));
            Assert.That(Encoding.UTF8.GetByteCount(r.Stdout), Is.LessThan(70_000));
        });
    }

    [Test]
    public async Task Concurrent_commands_in_oneSessionId_each_get_their_own_result()
    {
        var tasks = Enumerable.Range(0, 8).Select(i => Run($"sleep 0.{i}; echo {i}; echo e{i} >&2; exit {i}")).ToArray();
        var results = await Task.WhenAll(tasks);
        for (var i = 0; i < results.Length; i++)
        {
            Assert.That(results[i].Stdout, Is.EqualTo($"{i}\n"));
            Assert.That(results[i].Stderr, Is.EqualTo($"e{i}\n"));
            Assert.That(results[i].ExitCode, Is.EqualTo(i));
        }
    }

    [TestCase("python", "import sys; print('py', sys.version_info[0]); print('err', file=sys.stderr)", "py 3\n")]
    [TestCase("node", "console.log('node', typeof process.version)", "node string\n")]
    [TestCase("bash", "echo \"bash $((6*7))\"", "bash 42\n")]
    public async Task Code_runs_with_its_interpreter(string language, string code, string expected)
    {
        var response = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/code",
            new RunCodeRequest { Language = language, Code = code }, SandboxJsonContext.Default.RunCodeRequest);
        await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
        var r = await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult);
        Assert.That(r!.Stdout, Is.EqualTo(expected));
        Assert.That(r.ExitCode, Is.Zero);
    }

    [Test]
    public async Task Streaming_delivers_started_output_and_exited_events_in_order()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, $"/v1/sessions/{SessionId}/commands/stream")
        {
            Content = JsonContent.Create(new ExecuteRequest { Command = "echo one; sleep 0.2; echo two >&2; exit 5" }, SandboxJsonContext.Default.ExecuteRequest),
        };
        using var response = await Host.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(response.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/event-stream"));
        var body = await response.Content.ReadAsStringAsync();
        var types = body.Split('\n').Where(l => l.StartsWith("event: ", StringComparison.Ordinal)).Select(l => l[7..]).ToList();
        Assert.That(types, Is.EqualTo(new[] { "started", "stdout", "stderr", "exited" }));
        Assert.That(body, Does.Contain("\"exitCode\":5"));
        Assert.That(body, Does.Contain("\"data\":\"one\\n\""));
    }

    [Test]
    public async Task Bad_requests_get_problem_details()
    {
        var malformed = await Host.Http.PostAsync($"/v1/sessions/{SessionId}/commands", new StringContent("{not json", Encoding.UTF8, "application/json"));
        Assert.That(malformed.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That((await ServerHost.ProblemAsync(malformed)).GetProperty("code").GetString(), Is.EqualTo("invalid_request"));

        var badTimeout = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/commands", new ExecuteRequest { Command = "true", TimeoutSeconds = -1 }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(badTimeout.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));

        var missing = await Host.Http.PostAsJsonAsync("/v1/sessions/nope/commands", new ExecuteRequest { Command = "true" }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(missing.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await ServerHost.ProblemAsync(missing)).GetProperty("code").GetString(), Is.EqualTo("session_not_found"));
    }
}
