using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>Interpreter contexts (X): live Python (IPython) and node interpreters owned by the supervisor.</summary>
public sealed class ContextTests : AgentTest
{
    private static readonly byte[] PngSignature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    internal static ContextInfo Create(AgentClient client, string id, string language = "python", string? cwd = null)
    {
        var created = client.Context(new ContextRequest { Op = "create", Id = id, Language = language, Cwd = cwd }, TimeSpan.FromSeconds(60));
        Assert.That(created.Error, Is.Null, created.ToString());
        Assert.That(created.Context?.Context?.Status, Is.EqualTo("idle"), created.ToString());
        return created.Context!.Context!;
    }

    internal static Result Ok(AgentClient client, string context, string code, long timeoutMs = 0)
    {
        var result = client.Cell(context, code, timeoutMs);
        Assert.That(result.Error, Is.Null, result.ToString());
        Assert.That(result.Cell?.Status, Is.EqualTo("ok"), $"{result} stderr={result.Err} events={string.Join(" ", result.Events)}");
        return result;
    }

    /// <summary>The driver's switch to plain Python, in the session state (the container's own SANDBOXKIT_*
    /// variables never reach commands or contexts).</summary>
    private AgentClient PlainPython()
    {
        AssertRan(A.Run("export SANDBOXKIT_PYTHON_IPYTHON=0"));
        return A;
    }

    private static string MainText(Result result) =>
        result.Results.Single(e => e.GetProperty("isMainResult").GetBoolean()).GetProperty("data").GetProperty("text/plain").GetString()!;

    [Test]
    public void PythonKeepsStateAcrossCellsAndReportsResultsErrorsAndOutputInOrder()
    {
        var info = Create(A, "py");
        Assert.Multiple(() =>
        {
            Assert.That(info.Language, Is.EqualTo("python"));
            Assert.That(info.IPython, Is.True);
            Assert.That(info.Version, Does.StartWith("3."));
            Assert.That(info.Generation, Is.EqualTo(1));
            Assert.That(info.Pid, Is.Positive);
            Assert.That(info.Cwd, Is.EqualTo(Workdir));
        });
        var assign = Ok(A, "py", "x = 6 * 7");
        Assert.That((assign.Cell!.ExecutionCount, assign.Results.Count()), Is.EqualTo((1, 0)));
        var shown = Ok(A, "py", "import sys\nprint('before')\nprint('to stderr', file=sys.stderr)\nx");
        Assert.Multiple(() =>
        {
            Assert.That(MainText(shown), Is.EqualTo("42"));
            Assert.That(shown.Out, Is.EqualTo("before\n"));
            Assert.That(shown.Err, Is.EqualTo("to stderr\n"));
            // printed before the result: forwarded before it
            Assert.That(shown.Order.ToString().IndexOf('o'), Is.LessThan(shown.Order.ToString().IndexOf('E')), shown.Order.ToString());
            Assert.That(shown.Order.ToString().IndexOf('e'), Is.LessThan(shown.Order.ToString().IndexOf('E')), shown.Order.ToString());
            Assert.That(shown.Cell!.ExecutionCount, Is.EqualTo(2));
            Assert.That(shown.Context!.Context!.Status, Is.EqualTo("idle"));
        });
        var failed = A.Cell("py", "def f():\n    return 1 / 0\nf()");
        Assert.Multiple(() =>
        {
            Assert.That(failed.Cell!.Status, Is.EqualTo("error"));
            Assert.That(failed.Cell.StateLost, Is.False);
            var error = failed.Events.Single(e => e.GetProperty("type").GetString() == "error");
            Assert.That(error.GetProperty("name").GetString(), Is.EqualTo("ZeroDivisionError"));
            Assert.That(error.GetProperty("traceback").GetString(), Does.Contain("1 / 0"));
        });
        Assert.That(MainText(Ok(A, "py", "x + 1")), Is.EqualTo("43"), "the state survives an error");
        Assert.That(Ok(A, "py", "   \n").Cell!.ExecutionCount, Is.EqualTo(4), "an empty cell does not count");
        var custom = A.Cell("py", "x", cellId: "my-cell");
        Assert.That(custom.Cell!.CellId, Is.EqualTo("my-cell"));
        Assert.That(custom.Events.All(e => e.GetProperty("id").GetString() == "my-cell"), Is.True);
    }

    [Test]
    public void JavaScriptKeepsStateAcrossCellsAndInterruptsAnEndlessLoop()
    {
        var info = Create(A, "js", "javascript");
        Assert.That((info.Language, info.IPython), Is.EqualTo(("javascript", false)));
        Assert.That(info.Version, Does.StartWith("18."));
        Ok(A, "js", "const a = 20; let b = 2; function twice(n) { return 2 * n; }");
        var sum = Ok(A, "js", "console.log('hi'); console.error('oops'); twice(a + b)");
        Assert.That((MainText(sum), sum.Out, sum.Err), Is.EqualTo(("44", "hi\n", "oops\n")));
        var thrown = A.Cell("js", "throw new TypeError('bad thing')");
        Assert.That(thrown.Cell!.Status, Is.EqualTo("error"));
        Assert.That(thrown.Events.Single().GetProperty("name").GetString(), Is.EqualTo("TypeError"));
        var looped = A.Cell("js", "let n = 0; while (true) { n++; }", timeoutMs: 1500);
        Assert.That((looped.Cell!.Status, looped.Cell.TimedOut, looped.Cell.StateLost), Is.EqualTo(("interrupted", true, false)), looped.ToString());
        Assert.That(MainText(Ok(A, "js", "n > 0 && a === 20")), Is.EqualTo("true"));
        var exited = A.Cell("js", "process.exit(5)");
        Assert.That((exited.Cell!.Status, exited.Cell.ExitCode, exited.Cell.StateLost), Is.EqualTo(("died", (int?)5, true)));
        Assert.That(MainText(Ok(A, "js", "typeof a")), Is.EqualTo("'undefined'"), "a fresh interpreter after the exit");
    }

    [Test]
    public void FiguresArriveAsPngInChunksWithinCreditAndDataFramesAsHtml()
    {
        // A small window: the figure (and a 1.5 MB text result) must be sent in many chunks, each within credit
        // (the client checks every data frame against what it granted).
        var client = Track(Box.Connect(window: 8192));
        Create(client, "plots");
        var figure = Ok(client, "plots", "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 3, 2])\nplt.show()");
        var png = figure.Results.Single(e => e.GetProperty("data").TryGetProperty("image/png", out _));
        var bytes = Convert.FromBase64String(png.GetProperty("data").GetProperty("image/png").GetString()!);
        Assert.That(bytes.Take(8), Is.EqualTo(PngSignature));
        Assert.That(png.GetProperty("data").GetProperty("text/plain").GetString(), Does.StartWith("<Figure size"));
        Assert.That(figure.Frames.Count(f => f.Type == FrameType.EventChunk), Is.GreaterThan(1));
        Assert.That(figure.Frames.Where(f => f.Type == FrameType.EventChunk).Max(f => f.Payload.Length), Is.LessThanOrEqualTo(8192));

        var table = Ok(client, "plots", "import pandas as pd\npd.DataFrame({'name': ['a', 'b'], 'value': [1, 2]})");
        var data = table.Results.Single().GetProperty("data");
        Assert.That(data.GetProperty("text/html").GetString(), Does.Contain("<table").And.Contain("value"));
        Assert.That(data.GetProperty("text/plain").GetString(), Does.Contain("name"));

        var large = Ok(client, "plots", "'x' * 1500000");
        Assert.That(MainText(large), Has.Length.EqualTo(1_500_002)); // with its quotes
    }

    [Test]
    public void ATimeoutInterruptsAndKeepsTheStateAndInterruptStopsARunningCell()
    {
        Create(A, "py");
        Ok(A, "py", "y = 5");
        var looped = A.Cell("py", "while True: pass", timeoutMs: 2000);
        Assert.That((looped.Cell!.Status, looped.Cell.TimedOut, looped.Cell.StateLost), Is.EqualTo(("interrupted", true, false)), looped.ToString());
        Assert.That(looped.Events.Single().GetProperty("name").GetString(), Is.EqualTo("KeyboardInterrupt"));
        Assert.That(MainText(Ok(A, "py", "y")), Is.EqualTo("5"));

        var channel = A.StartContext(new ContextRequest { Op = "run", Id = "py", Code = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)" });
        Assert.That((char)A.Next(channel).Type, Is.EqualTo('o')); // the cell runs (SIGINT before it would be ignored)
        var busy = A.Cell("py", "1");
        Assert.That(busy.Error?.Code, Is.EqualTo(ErrorCodes.Busy));
        Assert.That(A.Context(new ContextRequest { Op = "get", Id = "py" }).Context!.Context!.Status, Is.EqualTo("busy"));
        var interrupt = A.Context(new ContextRequest { Op = "interrupt", Id = "py" });
        Assert.That(interrupt.Error, Is.Null);
        var ended = A.Collect(channel);
        Assert.That((ended.Cell!.Status, ended.Cell.TimedOut, ended.Cell.StateLost), Is.EqualTo(("interrupted", false, false)),
            $"{ended} err={ended.Err} events={string.Join(" ", ended.Events)} order={ended.Order} logs={A.LogText()}");
        Assert.That(MainText(Ok(A, "py", "y * 2")), Is.EqualTo("10"));

        // An interrupt right after the run, before the driver can have taken the cell up (drivers ignore SIGINT while
        // idle): it is sent again a second later, so the cell still ends interrupted with its state.
        var early = A.StartContext(new ContextRequest { Op = "run", Id = "py", Code = "import time\ntime.sleep(60)" });
        A.Context(new ContextRequest { Op = "interrupt", Id = "py" });
        var stopped = A.Collect(early);
        Assert.That((stopped.Cell!.Status, stopped.Cell.StateLost), Is.EqualTo(("interrupted", false)), stopped.ToString());
        Assert.That(MainText(Ok(A, "py", "y")), Is.EqualTo("5"));
    }

    [Test]
    public void AnInterpreterKilledByTheOomKillerDiesWithOomKilled()
    {
        var (_, client) = Another(new SandboxOptions { Memory = "256m" });
        Create(client, "py");
        Ok(client, "py", "before = 1");
        var hog = client.Cell("py", "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))");
        Assert.That((hog.Cell!.Status, hog.Cell.OomKilled, hog.Cell.ExitCode, hog.Cell.StateLost), Is.EqualTo(("died", true, (int?)137, true)), hog.ToString());
        Assert.That(MainText(Ok(client, "py", "'before' in globals()")), Is.EqualTo("False"));
    }

    [Test]
    public void ACellThatIgnoresSigintIsKilledAfterTheGraceAndTheNextCellGetsAFreshInterpreter()
    {
        var before = Create(A, "py");
        Ok(A, "py", "z = 1");
        var stuck = A.Cell("py", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeoutMs: 1000, graceMs: 1000);
        Assert.Multiple(() =>
        {
            Assert.That(stuck.Cell!.Status, Is.EqualTo("died"), stuck.ToString());
            Assert.That(stuck.Cell.StateLost, Is.True);
            Assert.That(stuck.Cell.TimedOut, Is.True);
            Assert.That(stuck.Cell.ExitCode, Is.EqualTo(137));
            Assert.That(stuck.Cell.OomKilled, Is.False);
            Assert.That(stuck.Context!.Context!.Status, Is.EqualTo("dead"));
        });
        Assert.That(Box.WaitDead(before.Pid), Is.True);
        var fresh = Ok(A, "py", "'z' in globals()");
        Assert.That(MainText(fresh), Is.EqualTo("False"));
        Assert.That((fresh.Context!.Context!.Generation, fresh.Cell!.ExecutionCount), Is.EqualTo((2, 1)));

        var exited = A.Cell("py", "import os\nprint('last words', flush=True)\nos._exit(3)");
        Assert.That((exited.Cell!.Status, exited.Cell.ExitCode, exited.Cell.StateLost, exited.Cell.TimedOut), Is.EqualTo(("died", (int?)3, true, false)));
        Assert.That(exited.Out, Is.EqualTo("last words\n"));
        var dead = A.Context(new ContextRequest { Op = "get", Id = "py" }).Context!.Context!;
        Assert.That((dead.Status, dead.Pid), Is.EqualTo(("dead", 0)));
        Assert.That(Ok(A, "py", "print(3)").Out, Is.EqualTo("3\n"));
    }

    [Test]
    public void ContextsAreIsolatedRunInParallelAndCanBeRestartedDeletedAndListed()
    {
        Create(A, "one");
        Create(A, "two", cwd: "/tmp");
        Ok(A, "one", "secret = 'mine'");
        Assert.That(MainText(Ok(A, "two", "'secret' in globals()")), Is.EqualTo("False"));
        Assert.That(MainText(Ok(A, "two", "import os; os.getcwd()")), Is.EqualTo("'/tmp'"));
        Assert.That(Ok(A, "two", "import os; print(os.environ['SANDBOXKIT_CONTEXT_ID'], os.environ['MPLBACKEND'], os.getuid())").Out, Is.EqualTo("two Agg 1000\n"));

        // Both cells sleep at the same time.
        var first = A.StartContext(new ContextRequest { Op = "run", Id = "one", Code = "import time\nprint('a', flush=True)\ntime.sleep(2)" });
        var second = A.StartContext(new ContextRequest { Op = "run", Id = "two", Code = "import time\nprint('b', flush=True)\ntime.sleep(2)" });
        Assert.That((char)A.Next(first).Type, Is.EqualTo('o'));
        Assert.That((char)A.Next(second).Type, Is.EqualTo('o'));
        var listed = A.Context(new ContextRequest { Op = "list" }).Context!.Contexts!;
        Assert.That(listed.Select(c => (c.Id, c.Status)), Is.EqualTo(new[] { ("one", "busy"), ("two", "busy") }));
        Assert.That(A.Collect(first).Cell!.Status, Is.EqualTo("ok"));
        Assert.That(A.Collect(second).Cell!.Status, Is.EqualTo("ok"));

        var restarted = A.Context(new ContextRequest { Op = "restart", Id = "one" }, TimeSpan.FromSeconds(60));
        Assert.That((restarted.Context!.Context!.Status, restarted.Context.Context.Generation, restarted.Context.Context.ExecutionCount), Is.EqualTo(("idle", 2, 0)));
        Assert.That(MainText(Ok(A, "one", "'secret' in globals()")), Is.EqualTo("False"));

        Assert.That(A.Context(new ContextRequest { Op = "create", Id = "two", Language = "javascript" }).Error?.Code, Is.EqualTo(ErrorCodes.Conflict));
        var again = A.Context(new ContextRequest { Op = "create", Id = "two", Language = "python" });
        Assert.That(again.Context!.Context!.Generation, Is.EqualTo(1), "a create retry answers with the existing context");

        var pid = A.Context(new ContextRequest { Op = "get", Id = "two" }).Context!.Context!.Pid;
        Assert.That(A.Context(new ContextRequest { Op = "delete", Id = "two" }).Final, Is.EqualTo("{}"u8.ToArray()));
        Assert.That(Box.WaitDead(pid), Is.True);
        Assert.That(A.Context(new ContextRequest { Op = "get", Id = "two" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
        Assert.That(A.Cell("two", "1").Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
        Assert.That(A.Context(new ContextRequest { Op = "list" }).Context!.Contexts!.Select(c => c.Id), Is.EqualTo(new[] { "one" }));
        foreach (var bad in new[]
        {
            new ContextRequest { Op = "create", Id = "x", Language = "ruby" },
            new ContextRequest { Op = "create", Id = "bad id!", Language = "python" },
            new ContextRequest { Op = "run", Id = "one" },
            new ContextRequest { Op = "run", Id = "one", Code = "1", GraceMs = 60_000 },
            new ContextRequest { Op = "fly", Id = "one" },
        })
        {
            Assert.That(A.Context(bad).Error?.Code, Is.EqualTo(ErrorCodes.Invalid), bad.ToString());
        }
        Assert.That(A.Context(new ContextRequest { Op = "create", Id = "nowhere", Language = "python", Cwd = "/does/not/exist" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
        Assert.That(A.Context(new ContextRequest { Op = "get", Id = "nowhere" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound), "a failed create leaves no context");
    }

    [Test]
    public void ContextsSurviveReconnectsAndARunWhoseConnectionEndedGoesOn()
    {
        Create(A, "py");
        Ok(A, "py", "kept = 'yes'");
        var channel = A.StartContext(new ContextRequest { Op = "run", Id = "py", Code = "import time\nprint('x' * 100000)\ntime.sleep(1)\nlater = 9" });
        A.Next(channel);
        A.Dispose();
        var client = Track(Box.Connect());
        Assert.That(Sandbox.WaitUntil(() => client.Context(new ContextRequest { Op = "get", Id = "py" }).Context!.Context!.Status == "idle", 20), Is.True);
        var result = Ok(client, "py", "kept, later");
        Assert.That(MainText(result), Is.EqualTo("('yes', 9)"));
    }

    [Test]
    public void DriverProtocolViolationsKillTheInterpreterAndItsCellDies()
    {
        // Plain Python (no IPython) starts in a fraction of the time, and every case needs a fresh interpreter.
        var client = PlainPython();
        Assert.That(Create(client, "py").IPython, Is.False);
        const string Send = "import os, json\ndef send(raw):\n    os.write(4, len(raw).to_bytes(4, 'big') + raw)\n";
        var cases = new (string Name, string Code)[]
        {
            ("not JSON", Send + "send(b'not json')"),
            ("not an object", Send + "send(b'[1, 2]')"),
            ("invalid UTF-8", Send + "send(b'{\"type\":\"result\",\"id\":\"' + b'\\xff' + b'\",\"data\":{}}')"),
            ("event for another cell", Send + "send(json.dumps({'type': 'done', 'id': 'another', 'executionCount': 1, 'status': 'ok'}).encode())"),
            ("wrong type", Send + "import sys\nsend(json.dumps({'type': 'done', 'id': CELL, 'executionCount': 'one', 'status': 'ok'}).encode())"),
            ("duplicate field", Send + "send(('{\"type\":\"done\",\"type\":\"result\",\"id\":\"' + CELL + '\",\"executionCount\":1,\"status\":\"ok\"}').encode())"),
            ("unknown type", Send + "send(json.dumps({'type': 'bogus', 'id': CELL}).encode())"),
            ("oversized frame", "import os\nos.write(4, (32 << 20).to_bytes(4, 'big'))"),
            ("second ready", Send + "send(json.dumps({'type': 'ready', 'language': 'python'}).encode())"),
        };
        var cell = 0;
        foreach (var (name, code) in cases)
        {
            var id = $"cell-{cell++}";
            Ok(client, "py", $"CELL = {JsonSerializer.Serialize(id)}");
            var result = client.Cell("py", code, cellId: id);
            Assert.That((result.Cell?.Status, result.Cell?.StateLost), Is.EqualTo(("died", (bool?)true)), $"{name}: {result}");
            Assert.That(result.Cell!.ExitCode, Is.EqualTo(137), name);
        }
        Assert.That(client.Logs.Count(l => l.Level == "warn" && l.Message.Contains("broke the protocol")), Is.EqualTo(cases.Length), client.LogText());
        Assert.That(Ok(client, "py", "print('alive')").Out, Is.EqualTo("alive\n"));

        // Between cells: an event while no cell runs kills it too, and the next run gets a fresh interpreter.
        var generation = Ok(client, "py", "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), os.write(4, b'\\x00\\x00\\x00\\x02{}'))).start()")
            .Context!.Context!.Generation;
        Assert.That(Sandbox.WaitUntil(() => client.Context(new ContextRequest { Op = "get", Id = "py" }).Context!.Context!.Status == "dead", 10), Is.True);
        var fresh = Ok(client, "py", "print('fresh')");
        Assert.That((fresh.Out, fresh.Context!.Context!.Generation), Is.EqualTo(("fresh\n", generation + 1)));
    }

    [Test]
    public void AtMostSixteenContexts()
    {
        var client = PlainPython();
        var creates = Enumerable.Range(0, 16).Select(i => client.StartContext(new ContextRequest { Op = "create", Id = $"c{i}", Language = "python" })).ToList();
        foreach (var channel in creates)
        {
            Assert.That(client.Collect(channel, TimeSpan.FromSeconds(60)).Context?.Context?.Status, Is.EqualTo("idle"));
        }
        Assert.That(client.Context(new ContextRequest { Op = "create", Id = "c16", Language = "python" }).Error?.Code, Is.EqualTo(ErrorCodes.Busy));
        Assert.That(client.Context(new ContextRequest { Op = "delete", Id = "c3" }).Error, Is.Null);
        Create(client, "c16");
        Assert.That(client.Context(new ContextRequest { Op = "list" }).Context!.Contexts, Has.Count.EqualTo(16));
    }

    /// <summary>Not an assertion of speed: prints a trivial cell's round trip and an idle context's memory.</summary>
    [Test]
    public void CellLatencyAndContextMemoryReport()
    {
        var created = Stopwatch.StartNew();
        var python = Create(A, "py");
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"create python (IPython): {created.Elapsed.TotalMilliseconds:0} ms"));
        created.Restart();
        var node = Create(A, "js", "javascript");
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"create javascript: {created.Elapsed.TotalMilliseconds:0} ms"));
        foreach (var (id, code) in new[] { ("py", "1 + 1"), ("js", "1 + 1") })
        {
            var times = new List<double>();
            for (var i = 0; i < 20; i++)
            {
                var clock = Stopwatch.StartNew();
                Assert.That(MainText(Ok(A, id, code)), Is.EqualTo("2"));
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{id}: cell '1 + 1' median {times[10]:0.0} ms, p90 {times[18]:0.0} ms"));
        }
        foreach (var (name, pid) in new[] { ("python (IPython)", python.Pid), ("node", node.Pid) })
        {
            var status = File.ReadAllLines(Box.InContainer($"/proc/{pid}/status"));
            TestContext.Out.WriteLine($"{name}: {status.First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))}");
        }
        TestContext.Out.WriteLine($"supervisor Private_Dirty: {Box.SupervisorPrivateDirtyKb()} kB");
    }
}
