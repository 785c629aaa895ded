using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;

namespace SandboxKit.Client.Tests;

public class RetryTests : WireMockTestBase
{
    private const string CommandsPath = "/v1/sessions/s1/commands";

    private void Answer503ThenResult(string path, string body = "done")
    {
        Server.Given(Request.Create().WithPath(path).UsingPost())
            .InScenario("flaky").WillSetStateTo("recovered")
            .RespondWith(Problem(503, "engine_unavailable", "Engine unavailable"));
        Server.Given(Request.Create().WithPath(path).UsingPost())
            .InScenario("flaky").WhenStateIs("recovered")
            .RespondWith(Json(200, Result(stdout: body)));
    }

    [Test]
    public async Task Post_503ThenSuccess_IsRetriedWithTheSameIdempotencyKey()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Answer503ThenResult(CommandsPath);

        var result = await session.ExecuteAsync("echo done");

        Assert.That(result.Stdout, Is.EqualTo("done"));
        var attempts = Requests("POST", CommandsPath);
        Assert.That(attempts, Has.Count.EqualTo(2));
        var keys = attempts.Select(a => Header(a.RequestMessage, "Idempotency-Key")).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(keys[0], Is.Not.Null.And.Not.Empty);
            Assert.That(keys[1], Is.EqualTo(keys[0]), "every attempt of one call carries the same key");
            Assert.That(attempts[1].RequestMessage.Body, Is.EqualTo(attempts[0].RequestMessage.Body), "the body is replayed");
        });
    }

    [Test]
    public async Task SeparateCalls_GetDifferentIdempotencyKeys()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost()).RespondWith(Json(200, Result()));

        await session.ExecuteAsync("true");
        await session.ExecuteAsync("true");

        var keys = Requests("POST", CommandsPath).Select(a => Header(a.RequestMessage, "Idempotency-Key")).ToList();
        Assert.That(keys, Has.Count.EqualTo(2));
        Assert.That(keys[0], Is.Not.EqualTo(keys[1]));
    }

    [Test]
    public async Task CallerIdempotencyKey_IsSentOnEveryAttempt()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Answer503ThenResult(CommandsPath);

        await session.ExecuteAsync("echo done", new ExecuteOptions { IdempotencyKey = "my-key-1" });

        var keys = Requests("POST", CommandsPath).Select(a => Header(a.RequestMessage, "Idempotency-Key")).ToList();
        Assert.That(keys, Is.EqualTo(new[] { "my-key-1", "my-key-1" }));
    }

    [Test]
    public async Task CreateSession_503ThenSuccess_IsRetriedWithTheSameKey()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost())
            .InScenario("create").WillSetStateTo("ok")
            .RespondWith(Response.Create().WithStatusCode(502));
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost())
            .InScenario("create").WhenStateIs("ok")
            .RespondWith(Json(201, Session("new-1")));

        var session = await client.CreateSessionAsync();
        session.Detach();

        Assert.That(session.Id, Is.EqualTo("new-1"));
        var keys = Requests("POST", "/v1/sessions").Select(a => Header(a.RequestMessage, "Idempotency-Key")).ToList();
        Assert.That(keys, Has.Count.EqualTo(2));
        Assert.That(keys.Distinct().Count(), Is.EqualTo(1));
    }

    [TestCase(400, "invalid_request")]
    [TestCase(404, "session_not_found")]
    [TestCase(409, "conflict")]
    [TestCase(413, "payload_too_large")]
    [TestCase(500, "internal")]
    public async Task NonTransientStatus_IsNotRetried(int status, string code)
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost()).RespondWith(Problem(status, code));

        var ex = await Assert.ThrowsAsync(Is.InstanceOf<SandboxException>(), () => session.ExecuteAsync("true")) as SandboxException;

        Assert.That(ex!.Status, Is.EqualTo((HttpStatusCode)status));
        Assert.That(ex.Code, Is.EqualTo(code));
        Assert.That(Requests("POST", CommandsPath), Has.Count.EqualTo(1), "exactly one request");
    }

    [Test]
    public async Task Get404_IsNotRetried()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions/gone").UsingGet()).RespondWith(Problem(404, "session_not_found"));

        await Assert.ThrowsAsync<SessionNotFoundException>(() => client.AttachSessionAsync("gone"));

        Assert.That(Requests("GET", "/v1/sessions/gone"), Has.Count.EqualTo(1));
    }

    [Test]
    public async Task Status429_WithRetryAfter1_IsWaitedOut()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost())
            .InScenario("limited").WillSetStateTo("free")
            .RespondWith(Problem(429, "rate_limited", "Rate limited").WithHeader("Retry-After", "1"));
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost())
            .InScenario("limited").WhenStateIs("free")
            .RespondWith(Json(200, Result(stdout: "ok")));

        var result = await session.ExecuteAsync("true");

        Assert.That(result.Stdout, Is.EqualTo("ok"));
        var attempts = Requests("POST", CommandsPath);
        Assert.That(attempts, Has.Count.EqualTo(2));
        var gap = attempts[1].RequestMessage.DateTime - attempts[0].RequestMessage.DateTime;
        // RetryDelay is 10 ms in these tests: only Retry-After explains a gap near one second.
        Assert.That(gap, Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(900)));
    }

    [Test]
    public async Task Status429_WithRetryAfterBeyondMax_FailsAtOnceWithQuotaException()
    {
        using var client = CreateClient(o => o.MaxRetryAfter = TimeSpan.FromSeconds(5));
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost())
            .RespondWith(Problem(429, "quota_exceeded", "Too many sessions").WithHeader("Retry-After", "120"));

        var ex = await Assert.ThrowsAsync<SandboxQuotaExceededException>(() => client.CreateSessionAsync());

        Assert.That(ex!.RetryAfter, Is.EqualTo(TimeSpan.FromSeconds(120)));
        Assert.That(ex.Code, Is.EqualTo("quota_exceeded"));
        Assert.That(Requests("POST", "/v1/sessions"), Has.Count.EqualTo(1));
    }

    [Test]
    public async Task Persistent503_IsTriedMaxRetryAttemptsPlusOne_ThenThrows()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 2);
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost()).RespondWith(Problem(503, "engine_unavailable"));

        var ex = await Assert.ThrowsAsync<SandboxException>(() => session.ExecuteAsync("true"));

        Assert.That(ex!.Code, Is.EqualTo("engine_unavailable"));
        Assert.That(ex.IsTransient, Is.True);
        Assert.That(Requests("POST", CommandsPath), Has.Count.EqualTo(3));
    }

    [Test]
    public async Task ConnectionRefused_IsRetried_ThenSurfacesAsTransportError()
    {
        // A port that was just free: nothing listens there.
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();

        var counter = new CountingHandler(new SocketsHttpHandler());
        var options = new SandboxClientOptions
        {
            BaseAddress = new Uri($"http://127.0.0.1:{port}"),
            MaxRetryAttempts = 2,
            RetryDelay = TimeSpan.FromMilliseconds(10),
        };
        using var client = CreateClient(options, counter);

        var ex = await Assert.ThrowsAsync<SandboxException>(() => client.CreateSessionAsync());

        Assert.Multiple(() =>
        {
            Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.TransportError));
            Assert.That(ex.Status, Is.Null);
            Assert.That(ex.InnerException, Is.InstanceOf<HttpRequestException>());
            Assert.That(counter.Count, Is.EqualTo(3), "first attempt + 2 retries");
            Assert.That(counter.IdempotencyKeys.Distinct().Count(), Is.EqualTo(1), "one key for all attempts");
            Assert.That(counter.IdempotencyKeys[0], Is.Not.Null);
        });
    }

    [Test]
    public async Task Health_503_IsAReport_AndNotRetried()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/healthz").UsingGet())
            .RespondWith(Response.Create().WithStatusCode(503).WithHeader("Content-Type", "application/json").WithBody(
                """{"status":"unhealthy","engine":{"reachable":false,"endpoint":"unix:///var/run/docker.sock","error":"no engine"},"image":{"name":"sandboxkit/sandbox:0.1.0","present":false},"version":"0.1.0"}"""));

        var report = await client.GetHealthAsync();

        Assert.That(report.Status, Is.EqualTo("unhealthy"));
        Assert.That(report.Engine!.Reachable, Is.False);
        Assert.That(report.Engine!.Error, Is.EqualTo("no engine"));
        Assert.That(Requests("GET", "/healthz"), Has.Count.EqualTo(1));
    }

    [Test]
    public async Task NonSeekableUpload_IsSentOnce_WithoutRetry()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingPut()).RespondWith(Problem(503, "engine_unavailable"));
        using var stream = new TricklingStream("hello"u8.ToArray(), seed: 1);

        await Assert.ThrowsAsync<SandboxException>(() => session.WriteFileAsync("a.txt", stream));

        Assert.That(Requests("PUT", "/v1/sessions/s1/files"), Has.Count.EqualTo(1));
    }

    [Test]
    public async Task SeekableUpload_IsReplayedOnRetry()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingPut())
            .InScenario("upload").WillSetStateTo("ok")
            .RespondWith(Response.Create().WithStatusCode(503));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingPut())
            .InScenario("upload").WhenStateIs("ok")
            .RespondWith(Response.Create().WithStatusCode(201).WithHeader("Content-Type", "application/json")
                .WithBody("""{"name":"a.bin","path":"/workspace/a.bin","type":"file","size":5}"""));
        using var stream = new MemoryStream("hello"u8.ToArray());

        var entry = await session.WriteFileAsync("a.bin", stream);

        Assert.That(entry.Size, Is.EqualTo(5));
        var attempts = Requests("PUT", "/v1/sessions/s1/files");
        Assert.That(attempts, Has.Count.EqualTo(2));
        Assert.That(attempts[1].RequestMessage.BodyAsBytes, Is.EqualTo("hello"u8.ToArray()));
        Assert.That(stream.CanRead, Is.True, "the caller's stream is left open");
    }

    [Test]
    public async Task CancellationDuringRetryAfterWait_StopsPromptly()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost())
            .RespondWith(Problem(503, "engine_unavailable").WithHeader("Retry-After", "20"));
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var watch = Stopwatch.StartNew();

        await Assert.CatchAsync<OperationCanceledException>(() => session.ExecuteAsync("true", cancellationToken: cts.Token));

        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(5)));
        Assert.That(Requests("POST", CommandsPath), Has.Count.EqualTo(1));
    }
}
