using System.Text;
using SandboxKit.Contracts;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;

namespace SandboxKit.Client.Tests;

public class SessionTests : WireMockTestBase
{
    private void MapCreate(string id = "s1") =>
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost()).RespondWith(Json(201, Session(id)));

    private void MapDelete(string id = "s1", int status = 204) =>
        Server.Given(Request.Create().WithPath($"/v1/sessions/{id}").UsingDelete())
            .RespondWith(status == 204 ? Response.Create().WithStatusCode(204) : Problem(status, "session_not_found"));

    [Test]
    public async Task CreateExecuteDispose_SendsTheExpectedRequests()
    {
        using var client = CreateClient(o => o.ApiKey = "k-123");
        MapCreate();
        MapDelete();
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/commands").UsingPost())
            .RespondWith(Json(200, Result(exitCode: 1, stdout: "total 0\n", stderr: "warn")));

        await using (var session = await client.CreateSessionAsync(new CreateSessionRequest { Image = "img", Metadata = new Dictionary<string, string> { ["app"] = "t" } }))
        {
            Assert.That(session.Id, Is.EqualTo("s1"));
            Assert.That(session.Info.Runtime, Is.EqualTo("runc"));

            var result = await session.ExecuteAsync("ls -la", new ExecuteOptions
            {
                Timeout = TimeSpan.FromSeconds(60),
                WorkingDirectory = "/tmp",
                Environment = new Dictionary<string, string> { ["A"] = "1" },
            });

            Assert.Multiple(() =>
            {
                Assert.That(result.ExitCode, Is.EqualTo(1), "a non-zero exit is a result, not an exception");
                Assert.That(result.Stdout, Is.EqualTo("total 0\n"));
                Assert.That(result.Stderr, Is.EqualTo("warn"));
                Assert.That(result.Succeeded, Is.False);
                Assert.That(result.Duration, Is.EqualTo(TimeSpan.FromMilliseconds(12.5)));
                Assert.That(result.WorkingDirectory, Is.EqualTo("/workspace"));
            });
        }

        var create = Requests("POST", "/v1/sessions").Single().RequestMessage;
        Assert.That(create.Body, Does.Contain("\"image\":\"img\"").And.Contain("\"metadata\":{\"app\":\"t\"}"));
        Assert.That(create.Body, Does.Not.Contain("null"), "nulls are omitted");
        Assert.That(Header(create, "Authorization"), Is.EqualTo("Bearer k-123"));
        Assert.That(Header(create, "User-Agent"), Does.StartWith("SandboxKit.Client/"));

        var exec = Requests("POST", "/v1/sessions/s1/commands").Single().RequestMessage;
        Assert.That(exec.Body, Does.Contain("\"command\":\"ls -la\"")
            .And.Contain("\"timeoutSeconds\":60")
            .And.Contain("\"workingDirectory\":\"/tmp\"")
            .And.Contain("\"environment\":{\"A\":\"1\"}"));
        Assert.That(Requests("DELETE", "/v1/sessions/s1"), Has.Count.EqualTo(1), "disposal deletes the session");
    }

    [Test]
    public async Task DisposeAsync_Twice_SendsOneDelete()
    {
        using var client = CreateClient();
        MapCreate();
        MapDelete();
        var session = await client.CreateSessionAsync();

        await session.DisposeAsync();
        await session.DisposeAsync();

        Assert.That(Requests("DELETE", "/v1/sessions/s1"), Has.Count.EqualTo(1));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => session.ExecuteAsync("ls"));
    }

    [Test]
    public async Task DisposeAsync_ConcurrentCalls_SendOneDelete()
    {
        using var client = CreateClient();
        MapCreate();
        MapDelete();
        var session = await client.CreateSessionAsync();

        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => session.DisposeAsync().AsTask()));

        Assert.That(Requests("DELETE", "/v1/sessions/s1"), Has.Count.EqualTo(1));
    }

    [Test]
    public async Task DisposeAsync_OfASessionAlreadyGone_DoesNotThrow()
    {
        using var client = CreateClient();
        MapCreate();
        MapDelete(status: 404);
        var session = await client.CreateSessionAsync();

        await Assert.DoesNotThrowAsync(async () => await session.DisposeAsync());
        Assert.That(Requests("DELETE", "/v1/sessions/s1"), Has.Count.EqualTo(1), "a 404 is not retried");
    }

    [Test]
    public async Task DisposeAsync_WhenTheServerKeepsFailing_DoesNotThrow()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 1);
        MapCreate();
        Server.Given(Request.Create().WithPath("/v1/sessions/s1").UsingDelete()).RespondWith(Problem(503, "engine_unavailable"));
        var session = await client.CreateSessionAsync();

        await Assert.DoesNotThrowAsync(async () => await session.DisposeAsync());
        Assert.That(Requests("DELETE", "/v1/sessions/s1"), Has.Count.EqualTo(2), "the delete was retried before giving up");
    }

    [Test]
    public async Task DeleteAsync_ReportsWhetherTheSessionExisted_AndFailuresThrow()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 0);
        MapCreate("a");
        var a = await client.CreateSessionAsync();
        Server.Given(Request.Create().WithPath("/v1/sessions/a").UsingDelete()).RespondWith(Problem(404, "session_not_found"));

        Assert.That(await a.DeleteAsync(), Is.False);
        await a.DisposeAsync();
        Assert.That(Requests("DELETE", "/v1/sessions/a"), Has.Count.EqualTo(1), "nothing left to delete on dispose");

        Server.Given(Request.Create().WithPath("/v1/sessions/b").UsingDelete()).RespondWith(Problem(503, "engine_unavailable"));
        await Assert.ThrowsAsync<SandboxException>(() => client.DeleteSessionAsync("b"));

        // A failed DeleteAsync leaves the session undisposed: DisposeAsync still tries (and swallows the failure).
        var b = await AttachAsync(client, "b");
        await Assert.ThrowsAsync<SandboxException>(() => b.DeleteAsync());
        await b.DisposeAsync();
        Assert.That(Requests("DELETE", "/v1/sessions/b"), Has.Count.EqualTo(3));
    }

    [Test]
    public async Task Detach_KeepsTheSessionOnDispose()
    {
        using var client = CreateClient();
        MapCreate();
        MapDelete();
        var session = await client.CreateSessionAsync();

        session.Detach();
        await session.DisposeAsync();

        Assert.That(session.IsDetached, Is.True);
        Assert.That(Requests("DELETE", "/v1/sessions/s1"), Is.Empty);
    }

    [Test]
    public async Task Files_WriteReadDownloadListDeleteMkdir()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var text = "héllo 世界\n";
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingPut())
            .RespondWith(Response.Create().WithStatusCode(201).WithHeader("Content-Type", "application/json")
                .WithBody("""{"name":"a.txt","path":"/workspace/a.txt","type":"file","size":14,"mode":420}"""));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingGet())
            .RespondWith(Response.Create().WithStatusCode(200).WithHeader("Content-Type", "application/octet-stream")
                .WithBody(Encoding.UTF8.GetBytes(text)));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files/list").UsingGet())
            .RespondWith(Response.Create().WithStatusCode(200).WithHeader("Content-Type", "application/json")
                .WithBody("""{"path":"/workspace","entries":[{"name":"a.txt","path":"/workspace/a.txt","type":"file","size":14},{"name":"d","path":"/workspace/d","type":"dir","size":4096}]}"""));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingDelete()).RespondWith(Response.Create().WithStatusCode(204));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/directories").UsingPost())
            .RespondWith(Response.Create().WithStatusCode(201).WithHeader("Content-Type", "application/json")
                .WithBody("""{"name":"d","path":"/workspace/d","type":"dir","size":4096}"""));

        var written = await session.WriteFileAsync("/workspace/a b.txt", text);
        var bytes = await session.ReadFileAsync("a.txt");
        var read = await session.ReadTextAsync("a.txt");
        using var sink = new MemoryStream();
        var copied = await session.DownloadAsync("a.txt", sink);
        var entries = await session.ListFilesAsync();
        await session.DeleteFileAsync("/workspace/d", recursive: true);
        var dir = await session.CreateDirectoryAsync("/workspace/d");

        Assert.Multiple(() =>
        {
            Assert.That(written.Mode, Is.EqualTo(420));
            Assert.That(bytes, Is.EqualTo(Encoding.UTF8.GetBytes(text)));
            Assert.That(read, Is.EqualTo(text));
            Assert.That(copied, Is.EqualTo(bytes.Length));
            Assert.That(sink.ToArray(), Is.EqualTo(bytes));
            Assert.That(entries.Select(e => e.Type), Is.EqualTo(new[] { "file", "dir" }));
            Assert.That(dir.Type, Is.EqualTo("dir"));
        });

        var put = Requests("PUT", "/v1/sessions/s1/files").Single().RequestMessage;
        Assert.That(Query(put, "path"), Is.EqualTo("/workspace/a b.txt"));
        Assert.That(Header(put, "Content-Type"), Does.StartWith("application/octet-stream"));
        Assert.That(put.BodyAsBytes, Is.EqualTo(Encoding.UTF8.GetBytes(text)), "UTF-8 without BOM");
        Assert.That(Header(put, "Idempotency-Key"), Is.Not.Null);
        Assert.That(Header(Requests("GET", "/v1/sessions/s1/files").First().RequestMessage, "Idempotency-Key"), Is.Null, "GETs carry no key");
        Assert.That(Query(Requests("GET", "/v1/sessions/s1/files/list").Single().RequestMessage, "path"), Is.EqualTo("/workspace"));
        var delete = Requests("DELETE", "/v1/sessions/s1/files").Single().RequestMessage;
        Assert.That(Query(delete, "path"), Is.EqualTo("/workspace/d"));
        Assert.That(Query(delete, "recursive"), Is.EqualTo("true"));
        Assert.That(Query(Requests("POST", "/v1/sessions/s1/directories").Single().RequestMessage, "path"), Is.EqualTo("/workspace/d"));
    }

    [Test]
    public async Task ListSessions_SendsUserAndMetadataFilters()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingGet())
            .RespondWith(Json(200, new SessionList { Sessions = [Session("x")] }, SandboxJsonContext.Default.SessionList));

        var sessions = await client.ListSessionsAsync("u1", new Dictionary<string, string> { ["team"] = "a b", ["env"] = "prod" });

        Assert.That(sessions.Single().Id, Is.EqualTo("x"));
        var request = Requests("GET", "/v1/sessions").Single().RequestMessage;
        Assert.That(Query(request, "userId"), Is.EqualTo("u1"));
        Assert.That(Query(request, "metadata[team]"), Is.EqualTo("a b"));
        Assert.That(Query(request, "metadata[env]"), Is.EqualTo("prod"));
    }

    [Test]
    public async Task GetOrCreateForUser_ReusesTheMostRecentRunningSession()
    {
        using var client = CreateClient();
        var old = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingGet())
            .RespondWith(Json(200, new SessionList
            {
                Sessions =
                [
                    Session("gone", status: "gone", userId: "u1", lastActivity: old.AddHours(2)),
                    Session("older", userId: "u1", lastActivity: old),
                    Session("newer", userId: "u1", lastActivity: old.AddHours(1)),
                ],
            }, SandboxJsonContext.Default.SessionList));

        var session = await client.GetOrCreateSessionForUserAsync("u1");
        session.Detach();

        Assert.That(session.Id, Is.EqualTo("newer"));
        Assert.That(Requests("POST", "/v1/sessions"), Is.Empty);
    }

    [Test]
    public async Task GetOrCreateForUser_CreatesWithTheUserIdWhenNoneRuns()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingGet())
            .RespondWith(Json(200, new SessionList { Sessions = [] }, SandboxJsonContext.Default.SessionList));
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost()).RespondWith(Json(201, Session("fresh", userId: "u1")));

        var session = await client.GetOrCreateSessionForUserAsync("u1", new CreateSessionRequest { Cpus = 1 });
        session.Detach();

        Assert.That(session.Id, Is.EqualTo("fresh"));
        Assert.That(Requests("POST", "/v1/sessions").Single().RequestMessage.Body, Does.Contain("\"userId\":\"u1\"").And.Contain("\"cpus\":1"));
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetOrCreateSessionForUserAsync("u1", new CreateSessionRequest { UserId = "u2" }));
    }

    [Test]
    public async Task KeepAliveAndRefresh_UpdateInfo()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var later = Session("s1") with { ExpiresAt = new DateTimeOffset(2030, 1, 1, 0, 0, 0, TimeSpan.Zero) };
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/keepalive").UsingPost()).RespondWith(Json(200, later));

        var info = await session.KeepAliveAsync();

        Assert.That(info.ExpiresAt.Year, Is.EqualTo(2030));
        Assert.That(session.Info.ExpiresAt.Year, Is.EqualTo(2030));
        Assert.That((await session.RefreshAsync()).ExpiresAt.Year, Is.EqualTo(2026));
        Assert.That(session.Info.ExpiresAt.Year, Is.EqualTo(2026));
    }

    [Test]
    public async Task DeleteUserStorage_SendsDelete()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/users/u 1/storage").UsingDelete()).RespondWith(Response.Create().WithStatusCode(204));

        await client.DeleteUserStorageAsync("u 1");

        Assert.That(Requests("DELETE", "/v1/users/u 1/storage"), Has.Count.EqualTo(1), "the user id is escaped in the path and decoded by the server");
    }

    [Test]
    public async Task BaseAddressWithAPathPrefix_IsKeptForEveryKindOfCall()
    {
        using var client = new SandboxClient(FastOptions(o => o.BaseAddress = new Uri(BaseUri, "/sandbox")));
        Server.Given(Request.Create().WithPath("/sandbox/v1/sessions/s1").UsingGet()).RespondWith(Json(200, Session("s1")));
        Server.Given(Request.Create().WithPath("/sandbox/v1/sessions/s1/files").UsingGet())
            .RespondWith(Response.Create().WithStatusCode(200).WithBody("x"));

        var session = await client.AttachSessionAsync("s1");
        var text = await session.ReadTextAsync("a.txt");

        Assert.That(text, Is.EqualTo("x"));
        Assert.That(Server.LogEntries.Select(e => e.RequestMessage.Path), Is.EquivalentTo(new[] { "/sandbox/v1/sessions/s1", "/sandbox/v1/sessions/s1/files" }));
    }

    [Test]
    public async Task BackgroundProcess_StartReadInputWaitKill()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var started = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        var running = new ProcessInfo { Id = "p1", Command = "python3 -i", Status = "running", Pid = 10, StartedAt = started };
        var exited = running with { Status = "exited", Result = Result(exitCode: 0, stdout: "bye") };
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/processes").UsingPost())
            .RespondWith(Json(201, running, SandboxJsonContext.Default.ProcessInfo));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/processes/p1/output").UsingGet())
            .RespondWith(Json(200, new ProcessOutput
            {
                Events = [new CommandEvent { Type = "stdout", Data = ">>> " }],
                NextCursor = 4,
                Dropped = false,
                Process = running,
            }, SandboxJsonContext.Default.ProcessOutput));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/processes/p1/stdin").UsingPost()).RespondWith(Response.Create().WithStatusCode(204));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/processes/p1").UsingGet())
            .InScenario("proc").WillSetStateTo("done")
            .RespondWith(Json(200, running, SandboxJsonContext.Default.ProcessInfo));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/processes/p1").UsingGet())
            .InScenario("proc").WhenStateIs("done")
            .RespondWith(Json(200, exited, SandboxJsonContext.Default.ProcessInfo));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/processes/p1").UsingDelete()).RespondWith(Response.Create().WithStatusCode(204));

        var process = await session.StartProcessAsync("python3 -i", new StartProcessOptions { KeepStdinOpen = true });
        var output = await process.GetOutputAsync();
        await process.SendStdinAsync("exit()\n", close: true);
        var result = await process.WaitAsync(TimeSpan.FromMilliseconds(20));
        await process.KillAsync();

        Assert.Multiple(() =>
        {
            Assert.That(process.Id, Is.EqualTo("p1"));
            Assert.That(output.NextCursor, Is.EqualTo(4));
            Assert.That(output.Events.Single().Data, Is.EqualTo(">>> "));
            Assert.That(result.Stdout, Is.EqualTo("bye"));
            Assert.That(process.HasExited, Is.True);
        });
        Assert.That(Requests("POST", "/v1/sessions/s1/processes").Single().RequestMessage.Body, Does.Contain("\"keepStdinOpen\":true"));
        Assert.That(Query(Requests("GET", "/v1/sessions/s1/processes/p1/output").Single().RequestMessage, "cursor"), Is.EqualTo("0"));
        Assert.That(Requests("POST", "/v1/sessions/s1/processes/p1/stdin").Single().RequestMessage.Body, Does.Contain("\"text\":\"exit()\\n\"").And.Contain("\"close\":true"));
        Assert.That(Requests("GET", "/v1/sessions/s1/processes/p1"), Has.Count.EqualTo(2), "polled until exited");
        Assert.That(Requests("DELETE", "/v1/sessions/s1/processes/p1"), Has.Count.EqualTo(1));
    }

    [Test]
    public async Task ArgumentsAreValidatedBeforeAnyCall()
    {
        using var client = CreateClient();

        await Assert.ThrowsAsync<ArgumentException>(() => client.AttachSessionAsync(" "));
        await Assert.ThrowsAsync<ArgumentException>(() => client.DeleteUserStorageAsync(""));
        Assert.That(Server.LogEntries, Is.Empty);
    }
}
