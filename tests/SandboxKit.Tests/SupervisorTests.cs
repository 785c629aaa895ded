using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using Microsoft.Extensions.DependencyInjection;
using SandboxKit.Contracts;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Tests;

/// <summary>
/// The supervisor as the server brings it to every session: any image, out of the commands' reach, no head-of-line
/// blocking, bounded memory whatever a command writes, jobs and channels across reconnects, per-command accounting.
/// Everything against the real engine and real containers.
/// </summary>
[TestFixture]
public sealed class SupervisorTests
{
    private ServerHost _host = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        var glibcOnly = await TestImages.GlibcOnlyAsync();
        var noGlibc = await TestImages.NoGlibcAsync();
        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:AllowedImages:0"] = glibcOnly,
            ["Sandbox:AllowedImages:1"] = noGlibc,
        });
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        foreach (var s in (await _host.Http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions)
        {
            await _host.DeleteSessionAsync(s.Id);
        }
        await _host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.Zero, "containers or volumes left behind");
    }

    [Test]
    public async Task A_bare_glibc_image_with_its_own_entrypoint_user_and_workdir_runs_commands_and_files()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { Image = TestImages.GlibcOnly });
        // Builtins only: the image has no coreutils. The supervisor's own bash runs them as uid 1000.
        await _host.ExecuteAsync(session.Id, "cd /tmp && export GREETING='hi there'");
        var r = await _host.ExecuteAsync(session.Id, "pwd; echo \"$GREETING\"; echo \"$UID $HOME $APP_MODE\"; printf 'kept\\n' > /workspace/note.txt; printf '%s\\n' \"$(</workspace/note.txt)\"");
        Assert.That(r.ExitCode, Is.Zero, r.Stderr);
        Assert.That(r.Stdout, Is.EqualTo("/tmp\nhi there\n1000 /home/sandbox production\nkept\n"));

        var put = await _host.Http.PutAsync($"/v1/sessions/{session.Id}/files?path=data/in.bin", new ByteArrayContent([0, 1, 2, 255]));
        await ServerHost.EnsureAsync(put, HttpStatusCode.Created);
        Assert.That(await _host.Http.GetByteArrayAsync($"/v1/sessions/{session.Id}/files?path=data/in.bin"), Is.EqualTo(new byte[] { 0, 1, 2, 255 }));
        var list = await _host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}/files/list?path=/workspace", SandboxJsonContext.Default.FileList);
        Assert.That(list!.Entries.Select(e => e.Name), Is.EquivalentTo(new[] { "data", "note.txt" }));

        var offers = await ProbedOffersAsync(session.Id);
        Assert.Multiple(() =>
        {
            Assert.That(offers.Bash, Does.StartWith("5."), "the supervisor's own bash");
            Assert.That(offers.ImageBash, Is.Null);
            Assert.That(offers.Python3, Is.Null);
            Assert.That(offers.Node, Is.Null);
        });

        var python = await _host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/code", new RunCodeRequest { Language = "python", Code = "print(1)" }, SandboxJsonContext.Default.RunCodeRequest);
        Assert.That(python.StatusCode, Is.EqualTo(HttpStatusCode.UnprocessableEntity));
        var problem = await ServerHost.ProblemAsync(python);
        Assert.That(problem.GetProperty("code").GetString(), Is.EqualTo("language_unavailable"));
        Assert.That(problem.GetProperty("detail").GetString(), Does.Contain("python3"));
        var bash = await _host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/code", new RunCodeRequest { Language = "bash", Code = "echo $((6*7))" }, SandboxJsonContext.Default.RunCodeRequest);
        await ServerHost.EnsureAsync(bash, HttpStatusCode.OK);
        Assert.That((await bash.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo("42\n"));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task The_default_image_reports_what_it_offers()
    {
        var session = await _host.CreateSessionAsync();
        var offers = await ProbedOffersAsync(session.Id);
        Assert.Multiple(() =>
        {
            Assert.That(offers.Python3, Does.StartWith("3."));
            Assert.That(offers.IPython, Is.True);
            Assert.That(offers.Node, Does.Match(@"^v?\d+\."));
            Assert.That(offers.ImageBash, Does.StartWith("5."));
        });
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task An_image_without_glibc_fails_the_create_quickly_with_a_clear_error()
    {
        var clock = Stopwatch.StartNew();
        var response = await _host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { Image = TestImages.NoGlibc }, SandboxJsonContext.Default.CreateSessionRequest);
        clock.Stop();
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.UnprocessableEntity), await response.Content.ReadAsStringAsync());
        var problem = await ServerHost.ProblemAsync(response);
        Assert.That(problem.GetProperty("code").GetString(), Is.EqualTo("image_incompatible"));
        Assert.That(problem.GetProperty("detail").GetString(), Does.Contain("glibc"));
        TestContext.Out.WriteLine($"refused in {clock.ElapsedMilliseconds} ms");
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(15)), "not after the 20 s connect timeout");
        var list = await _host.Http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList);
        Assert.That(list!.Sessions.Where(s => s.Image == TestImages.NoGlibc), Is.Empty);
    }

    [Test]
    public async Task The_supervisor_is_out_of_the_commands_reach()
    {
        var session = await _host.CreateSessionAsync();
        // Each probe prints one line; "denied" means the kernel refused the attempt.
        var probes = new Dictionary<string, string>
        {
            ["kill -9 1"] = "kill -9 1 2>/dev/null && echo allowed || echo denied",
            ["kill -STOP 1"] = "kill -STOP 1 2>/dev/null && echo allowed || echo denied",
            ["kill -SEGV 1"] = "kill -SEGV 1 2>/dev/null && echo allowed || echo denied",
            ["read /proc/1/fd"] = "ls /proc/1/fd >/dev/null 2>&1 && echo allowed || echo denied",
            ["write /proc/1/fd/1"] = "{ printf 'forged' > /proc/1/fd/1; } 2>/dev/null && echo allowed || echo denied",
            ["read /proc/1/environ"] = "head -c 1 /proc/1/environ >/dev/null 2>&1 && echo allowed || echo denied",
            ["read /proc/1/mem"] = "head -c 1 /proc/1/mem >/dev/null 2>&1 && echo allowed || echo denied",
            ["open the socket dir"] = "ls /run/sandboxkit >/dev/null 2>&1 && echo allowed || echo denied",
            ["replace the supervisor"] = "{ cp /bin/true /.sandboxkit/sandboxkit-agent; } 2>/dev/null && echo allowed || echo denied",
            ["write the bundle"] = "touch /.sandboxkit/x 2>/dev/null && echo allowed || echo denied",
            ["ptrace attach"] = "python3 -c 'import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); " +
                "print(\"allowed\" if libc.ptrace(16, 1, 0, 0) == 0 else \"denied\")'",
        };
        var r = await _host.ExecuteAsync(session.Id, string.Join("\n", probes.Values));
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(probes.Count), r.Stdout + r.Stderr);
        Assert.Multiple(() =>
        {
            foreach (var (name, line) in probes.Keys.Zip(lines))
            {
                Assert.That(line, Is.EqualTo("denied"), name);
            }
        });

        // Killing everything it can see (the kernel spares the caller) leaves the supervisor and the session.
        var killAll = await _host.ExecuteAsync(session.Id, "sleep 300 & sleep 0.1; kill -9 -1; echo \"kill=$?\"; wait; echo done");
        Assert.That(killAll.Stdout, Is.EqualTo("kill=0\ndone\n"), killAll.Stderr);
        var after = await _host.ExecuteAsync(session.Id, "ps -o comm= -p 1; pgrep -c sleep || true; id -u");
        Assert.That(after.Stdout, Is.EqualTo("sandboxkit-agen\n0\n1000\n"));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task A_stalled_stream_does_not_delay_other_commands_and_server_memory_stays_bounded()
    {
        var session = await _host.CreateSessionAsync();
        var baseline = await TimeEchoAsync(session.Id);
        using var stalled = new HttpClient { BaseAddress = _host.BaseAddress, Timeout = TimeSpan.FromMinutes(2) };
        using var request = new HttpRequestMessage(HttpMethod.Post, $"/v1/sessions/{session.Id}/commands/stream")
        {
            Content = JsonContent.Create(new ExecuteRequest { Command = "yes | head -c 300M", TimeoutSeconds = 120 }, SandboxJsonContext.Default.ExecuteRequest),
        };
        using var response = await stalled.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        await using var body = await response.Content.ReadAsStreamAsync();
        var first = new byte[4096];
        Assert.That(await body.ReadAsync(first), Is.GreaterThan(0));
        // Nobody reads from here on.
        GC.Collect();
        var memoryBefore = GC.GetTotalMemory(forceFullCollection: true);
        await Task.Delay(1000);
        var latencies = new List<double>();
        for (var i = 0; i < 5; i++)
        {
            latencies.Add(await TimeEchoAsync(session.Id));
        }
        var memoryAfter = GC.GetTotalMemory(forceFullCollection: true);
        TestContext.Out.WriteLine($"echo alone {baseline:0.0} ms; beside a stalled 300 MB stream: {string.Join(", ", latencies.Select(l => l.ToString("0.0")))} ms; " +
            $"server heap {memoryBefore / 1e6:0.0} -> {memoryAfter / 1e6:0.0} MB");
        Assert.That(latencies.Max(), Is.LessThan(5000), "head-of-line blocking: an echo waited for the stalled stream");
        Assert.That(memoryAfter - memoryBefore, Is.LessThan(64L << 20), "output the reader does not take must not pile up in the server");

        // The stalled command is held back, not finished: it is still running in the sandbox.
        Assert.That((await _host.ExecuteAsync(session.Id, "pgrep -c yes || true")).Stdout.Trim(), Is.EqualTo("1"));
        response.Dispose();
        await WaitForAsync(async () => (await _host.ExecuteAsync(session.Id, "pgrep -c yes || true")).Stdout.Trim() == "0", "the abandoned stream's command was killed");
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task One_byte_writes_of_a_background_process_cost_bounded_memory_and_report_dropped_output()
    {
        var session = await _host.CreateSessionAsync();
        GC.Collect();
        var before = GC.GetTotalMemory(forceFullCollection: true);
        var start = await _host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/processes",
            new StartProcessRequest { Command = "python3 -c 'import os\nwhile True: os.write(1, b\"x\"); os.write(2, b\"y\")'" }, SandboxJsonContext.Default.StartProcessRequest);
        await ServerHost.EnsureAsync(start, HttpStatusCode.Created);
        var process = (await start.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ProcessInfo))!;
        await Task.Delay(3000);
        var output = await _host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}/processes/{process.Id}/output?cursor=0", SandboxJsonContext.Default.ProcessOutput);
        var after = GC.GetTotalMemory(forceFullCollection: true);
        var kept = output!.Events.Sum(e => e.Data!.Length);
        TestContext.Out.WriteLine($"read {kept} chars in {output.Events.Count} events, next cursor {output.NextCursor}, dropped={output.Dropped}; server heap +{(after - before) / 1e6:0.0} MB");
        Assert.Multiple(() =>
        {
            Assert.That(output.Dropped, Is.True, "millions of bytes cannot all be kept");
            Assert.That(output.NextCursor, Is.GreaterThan(kept), "the cursor counts every byte written");
            Assert.That(kept, Is.LessThanOrEqualTo(1 << 20), "at most the ring");
            Assert.That(output.Events.Count, Is.LessThan(10_000), "adjacent one-byte writes are kept as records, not one each");
            Assert.That(after - before, Is.LessThan(64L << 20));
        });
        Assert.That((await _host.Http.DeleteAsync($"/v1/sessions/{session.Id}/processes/{process.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task Jobs_keep_running_and_channels_keep_counting_across_a_reconnect()
    {
        var session = await _host.CreateSessionAsync();
        var start = await _host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/processes",
            new StartProcessRequest { Command = "echo ready; while read line; do echo \"got $line\"; done; echo bye", KeepStdinOpen = true }, SandboxJsonContext.Default.StartProcessRequest);
        var process = (await start.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ProcessInfo))!;
        Assert.That((await _host.ExecuteAsync(session.Id, "echo before")).Stdout, Is.EqualTo("before\n"));

        // Drop the connection as a network blip or a replaced server would.
        var live = _host.Services.GetRequiredService<SessionRegistry>().All.Single(s => s.Id == session.Id);
        await live.DisconnectAsync();

        Assert.That((await _host.ExecuteAsync(session.Id, "echo after")).Stdout, Is.EqualTo("after\n"), "new channel ids: nothing collides with the old connection's");
        var list = await _host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}/processes", SandboxJsonContext.Default.ProcessList);
        Assert.That(list!.Processes.Select(p => p.Id), Does.Contain(process.Id));
        var stdin = await _host.Http.PostAsJsonAsync($"/v1/sessions/{session.Id}/processes/{process.Id}/stdin", new SendStdinRequest { Text = "one\n", Close = true }, SandboxJsonContext.Default.SendStdinRequest);
        Assert.That(stdin.StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        ProcessOutput? output = null;
        await WaitForAsync(async () =>
        {
            output = await _host.Http.GetFromJsonAsync($"/v1/sessions/{session.Id}/processes/{process.Id}/output?cursor=0", SandboxJsonContext.Default.ProcessOutput);
            return output!.Process.Status == "exited";
        }, "the job read its stdin and exited");
        Assert.That(string.Concat(output!.Events.Select(e => e.Data)), Is.EqualTo("ready\ngot one\nbye\n"));
        await _host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task Results_and_usage_carry_cpu_time_and_peak_memory()
    {
        var session = await _host.CreateSessionAsync(new CreateSessionRequest { Cpus = 1 });
        var usageBefore = await _host.Http.GetFromJsonAsync("/v1/usage", SandboxJsonContext.Default.UsageReport);
        var r = await _host.ExecuteAsync(session.Id,
            "python3 -c 'import time\nx = bytearray(200 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass'", 60);
        Assert.That(r.ExitCode, Is.Zero, r.Stderr);
        TestContext.Out.WriteLine($"cpu user {r.CpuUserMs:0} ms, system {r.CpuSystemMs:0} ms, peak {r.PeakMemoryBytes >> 20} MiB, wall {r.DurationMs:0} ms");
        Assert.Multiple(() =>
        {
            Assert.That(r.CpuUserMs + r.CpuSystemMs, Is.GreaterThan(500), "the busy loop burned 0.6 s of CPU");
            Assert.That(r.CpuUserMs + r.CpuSystemMs, Is.LessThan(r.DurationMs * 1.5 + 50), "CPU time is bounded by wall time");
            Assert.That(r.PeakMemoryBytes, Is.GreaterThan(200L << 20), "the 200 MiB buffer was resident");
        });
        var small = await _host.ExecuteAsync(session.Id, "true");
        Assert.That(small.PeakMemoryBytes, Is.LessThan(64L << 20));
        var usageAfter = await _host.Http.GetFromJsonAsync("/v1/usage", SandboxJsonContext.Default.UsageReport);
        Assert.That(usageAfter!.CpuSeconds - usageBefore!.CpuSeconds, Is.GreaterThan(0.5));
        Assert.That(usageAfter.PeakMemoryBytes, Is.GreaterThanOrEqualTo(r.PeakMemoryBytes));
        await _host.DeleteSessionAsync(session.Id);
    }

    private async Task<ImageOffers> ProbedOffersAsync(string sessionId)
    {
        ImageOffers? offers = null;
        await WaitForAsync(async () =>
        {
            offers = (await _host.Http.GetFromJsonAsync($"/v1/sessions/{sessionId}", SandboxJsonContext.Default.SessionInfo))!.Offers;
            return offers is { Probed: true };
        }, "the supervisor probed the image");
        return offers!;
    }

    private async Task<double> TimeEchoAsync(string sessionId)
    {
        var clock = Stopwatch.StartNew();
        var r = await _host.ExecuteAsync(sessionId, "echo ok");
        Assert.That(r.Stdout, Is.EqualTo("ok\n"));
        return clock.Elapsed.TotalMilliseconds;
    }

    private static async Task WaitForAsync(Func<Task<bool>> condition, string what)
    {
        for (var i = 0; i < 100; i++)
        {
            if (await condition())
            {
                return;
            }
            await Task.Delay(100);
        }
        Assert.Fail($"Not within 10 s: {what}.");
    }
}
