using System.Net;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;

namespace SandboxKit.Client.Tests;

public class ErrorMappingTests : WireMockTestBase
{
    [Test]
    public async Task SessionNotFound_MapsToSessionNotFoundException_WithProblemFields()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client, "s1");
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/commands").UsingPost())
            .RespondWith(Problem(404, "session_not_found", "Session not found", "Session s1 expired.", "req-42"));

        var ex = await Assert.ThrowsAsync<SessionNotFoundException>(() => session.ExecuteAsync("ls"));

        Assert.Multiple(() =>
        {
            Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.NotFound));
            Assert.That(ex.Code, Is.EqualTo(SandboxErrorCodes.SessionNotFound));
            Assert.That(ex.SessionId, Is.EqualTo("s1"));
            Assert.That(ex.Title, Is.EqualTo("Session not found"));
            Assert.That(ex.Detail, Is.EqualTo("Session s1 expired."));
            Assert.That(ex.RequestId, Is.EqualTo("req-42"));
            Assert.That(ex.Message, Does.Contain("session_not_found").And.Contain("req-42"));
            Assert.That(ex.IsTransient, Is.False);
        });
    }

    [Test]
    public async Task Attach_UnknownSession_ThrowsSessionNotFound()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions/nope").UsingGet()).RespondWith(Problem(404, "session_not_found"));

        var ex = await Assert.ThrowsAsync<SessionNotFoundException>(() => client.AttachSessionAsync("nope"));

        Assert.That(ex!.SessionId, Is.EqualTo("nope"));
    }

    [Test]
    public async Task FileNotFound_IsAPlainSandboxException_NotSessionNotFound()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files").UsingGet()).RespondWith(Problem(404, "not_found", "No such file"));

        var ex = await Assert.ThrowsAsync<SandboxException>(() => session.ReadFileAsync("/workspace/missing.txt"));

        Assert.That(ex, Is.Not.InstanceOf<SessionNotFoundException>());
        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.NotFound));
        Assert.That(ex.Status, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task Unauthorized_MapsToAuthenticationException()
    {
        using var client = CreateClient(o => o.ApiKey = "wrong");
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost()).RespondWith(Problem(401, "unauthorized", "Unauthorized"));

        var ex = await Assert.ThrowsAsync<SandboxAuthenticationException>(() => client.CreateSessionAsync());

        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.Unauthorized));
        Assert.That(ex.Code, Is.EqualTo(SandboxErrorCodes.Unauthorized));
        Assert.That(Header(Server.LogEntries.Single().RequestMessage, "Authorization"), Is.EqualTo("Bearer wrong"));
    }

    [Test]
    public async Task QuotaExceeded_MapsToQuotaException_WithRetryAfter()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 0);
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost())
            .RespondWith(Problem(429, "quota_exceeded", "Session quota exceeded").WithHeader("Retry-After", "7"));

        var ex = await Assert.ThrowsAsync<SandboxQuotaExceededException>(() => client.CreateSessionAsync());

        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.QuotaExceeded));
        Assert.That(ex.RetryAfter, Is.EqualTo(TimeSpan.FromSeconds(7)));
        Assert.That(ex.Status, Is.EqualTo(HttpStatusCode.TooManyRequests));
    }

    [Test]
    public async Task NonProblemBody_StillGivesStatusAndText()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 0);
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingGet())
            .RespondWith(Response.Create().WithStatusCode(502).WithHeader("Content-Type", "text/html").WithBody("<html>bad gateway</html>"));

        var ex = await Assert.ThrowsAsync<SandboxException>(() => client.ListSessionsAsync());

        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.BadGateway));
        Assert.That(ex.Code, Is.Null);
        Assert.That(ex.Message, Does.Contain("502").And.Contain("bad gateway"));
    }

    [Test]
    public async Task MalformedSuccessBody_IsAnInvalidResponse()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions/s1").UsingGet())
            .RespondWith(Response.Create().WithStatusCode(200).WithHeader("Content-Type", "application/json").WithBody("{\"id\": 12"));

        var ex = await Assert.ThrowsAsync<SandboxException>(() => client.AttachSessionAsync("s1"));

        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.InvalidResponse));
    }

    [Test]
    public void EnsureSuccess_ThrowsCommandFailed_WithTheResult()
    {
        var failed = new CommandResult(Result(exitCode: 2, stderr: "ls: cannot access 'x'"));
        var ok = new CommandResult(Result(exitCode: 0, stdout: "fine"));
        var timedOut = new CommandResult(Result(exitCode: 137, timedOut: true));

        var ex = Assert.Throws<CommandFailedException>(() => failed.EnsureSuccess());

        Assert.Multiple(() =>
        {
            Assert.That(ex!.Result, Is.SameAs(failed));
            Assert.That(ex.ExitCode, Is.EqualTo(2));
            Assert.That(ex.Code, Is.EqualTo(SandboxErrorCodes.CommandFailed));
            Assert.That(ex.Message, Does.Contain("exited with code 2").And.Contain("cannot access"));
            Assert.That(ex, Is.InstanceOf<SandboxException>());
            Assert.That(ok.EnsureSuccess(), Is.SameAs(ok));
            Assert.That(Assert.Throws<CommandFailedException>(() => timedOut.EnsureSuccess())!.Message, Does.Contain("timed out"));
        });
    }
}
