using System.Net;
using System.Text.Json;
using SandboxKit.Contracts;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;

namespace SandboxKit.Client.Tests;

/// <summary>Egress policy and preview URLs: what goes on the wire, and how the server's answers come back.</summary>
public class NetworkTests : WireMockTestBase
{
    private static readonly DateTimeOffset Expiry = new(2026, 1, 1, 1, 0, 0, TimeSpan.Zero);

    private static EgressPolicyInfo PolicyInfo(params string[] allow) => new()
    {
        Allow = allow,
        Deny = ["evil.pypi.org"],
        Headers = [new EgressHeaderNames { Match = "pypi.org", Names = ["Authorization"], TerminateTls = true }],
    };

    private static ExposedPort Port(int port, string token) => new()
    {
        Port = port,
        Url = $"http://sandbox.example:8080/preview/s1/{port}/?sk_token={token}",
        ExpiresAt = Expiry,
    };

    private void MapPorts(params ExposedPort[] ports) =>
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingGet())
            .RespondWith(Json(200, new ExposedPortList { Ports = ports }, SandboxJsonContext.Default.ExposedPortList));

    private void MapRevoke(int port, int status = 204) =>
        Server.Given(Request.Create().WithPath($"/v1/sessions/s1/ports/{port}").UsingDelete())
            .RespondWith(status == 204 ? Response.Create().WithStatusCode(204) : Problem(status, status == 404 ? "not_found" : "internal"));

    [Test]
    public async Task Create_SendsTheEgressPolicy_AndTheSessionShowsThePolicyInForce()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost())
            .RespondWith(Json(201, Session("s1") with { Egress = PolicyInfo("pypi.org", "*.pythonhosted.org") }));

        var session = await client.CreateSessionAsync(new CreateSessionRequest
        {
            Egress = new EgressPolicyRequest
            {
                Allow = ["pypi.org", "*.pythonhosted.org"],
                Deny = ["evil.pypi.org"],
                Headers = [new EgressHeaderRule { Match = "pypi.org", Headers = new Dictionary<string, string> { ["Authorization"] = "Bearer x" }, TerminateTls = true }],
            },
        });
        session.Detach();

        using var body = JsonDocument.Parse(Requests("POST", "/v1/sessions").Single().RequestMessage.Body!);
        var egress = body.RootElement.GetProperty("egress");
        Assert.Multiple(() =>
        {
            Assert.That(egress.GetProperty("allow").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "pypi.org", "*.pythonhosted.org" }));
            Assert.That(egress.GetProperty("deny")[0].GetString(), Is.EqualTo("evil.pypi.org"));
            var header = egress.GetProperty("headers")[0];
            Assert.That(header.GetProperty("match").GetString(), Is.EqualTo("pypi.org"));
            Assert.That(header.GetProperty("headers").GetProperty("Authorization").GetString(), Is.EqualTo("Bearer x"));
            Assert.That(header.GetProperty("terminateTls").GetBoolean(), Is.True);

            Assert.That(session.Info.Egress!.Allow, Is.EqualTo(new[] { "pypi.org", "*.pythonhosted.org" }));
            Assert.That(session.Info.Egress.Headers![0].Names, Is.EqualTo(new[] { "Authorization" }));
            Assert.That(session.Info.Egress.Headers[0].TerminateTls, Is.True);
        });
    }

    [Test]
    public async Task UpdateEgress_PatchesThePolicy_AndRefreshesInfo()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Assert.That(session.Info.Egress, Is.Null, "no network before");
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/egress").UsingPatch())
            .RespondWith(Json(200, Session("s1") with { Egress = PolicyInfo("files.pypi.test:8080") }));

        var info = await session.UpdateEgressAsync(new EgressPolicyRequest { Allow = ["files.pypi.test:8080"] });

        var patch = Requests("PATCH", "/v1/sessions/s1/egress").Single().RequestMessage;
        Assert.That(patch.Body, Is.EqualTo("{\"allow\":[\"files.pypi.test:8080\"]}"), "nulls are omitted");
        Assert.That(info.Egress!.Allow, Is.EqualTo(new[] { "files.pypi.test:8080" }));
        Assert.That(session.Info, Is.SameAs(info));
        await Assert.ThrowsAsync<ArgumentNullException>(() => session.UpdateEgressAsync(null!));
    }

    [Test]
    public async Task UpdateEgress_APolicyTheOperatorForbids_IsA400InvalidRequest_NotRetried()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/egress").UsingPatch())
            .RespondWith(Problem(400, "invalid_request", "Invalid request", "egress: pypi.org is outside the allowed rule patterns", "req-7"));

        var ex = await Assert.ThrowsAsync<SandboxException>(() => session.UpdateEgressAsync(new EgressPolicyRequest { Allow = ["pypi.org"] }));

        Assert.Multiple(() =>
        {
            Assert.That(ex, Is.Not.InstanceOf<SessionNotFoundException>());
            Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That(ex.Code, Is.EqualTo(SandboxErrorCodes.InvalidRequest));
            Assert.That(ex.Detail, Does.StartWith("egress:"));
            Assert.That(ex.RequestId, Is.EqualTo("req-7"));
            Assert.That(ex.IsTransient, Is.False);
            Assert.That(Requests("PATCH", "/v1/sessions/s1/egress"), Has.Count.EqualTo(1));
        });
        Assert.That(session.Info.Egress, Is.Null, "a refused policy leaves Info alone");
    }

    [Test]
    public async Task Create_WithAForbiddenPolicy_IsA400()
    {
        using var client = CreateClient();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost())
            .RespondWith(Problem(400, "invalid_request", "Invalid request", "egress: 10.0.0.0/8 is a private range the operator does not allow"));

        var ex = await Assert.ThrowsAsync<SandboxException>(() =>
            client.CreateSessionAsync(new CreateSessionRequest { Egress = new EgressPolicyRequest { Allow = ["10.0.0.0/8"] } }));

        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(ex.Detail, Does.StartWith("egress:"));
    }

    [Test]
    public async Task GetEgressLog_SendsTheLimit_AndReadsTheEntries()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/egress/log").UsingGet())
            .RespondWith(Json(200, new EgressLog
            {
                Entries =
                [
                    new EgressLogEntry { At = Expiry, Kind = "dns", Allowed = false, Reason = "not on the allow list", Name = "evil.test" },
                    new EgressLogEntry
                    {
                        At = Expiry, Kind = "tcp", Allowed = true, Reason = "allow pypi.test", Name = "pypi.test", Port = 443,
                        DialedAddress = "127.77.0.1", ResolvedAddress = "127.0.0.1", Protocol = "tls", InjectedHeaders = ["Authorization"],
                    },
                ],
                Allowed = 1,
                Denied = 1,
                BytesOut = 10,
                BytesIn = 20,
            }, SandboxJsonContext.Default.EgressLog));

        var log = await session.GetEgressLogAsync(limit: 5);
        var all = await session.GetEgressLogAsync();

        var requests = Requests("GET", "/v1/sessions/s1/egress/log");
        Assert.Multiple(() =>
        {
            Assert.That(Query(requests[0].RequestMessage, "limit"), Is.EqualTo("5"));
            Assert.That(requests[1].RequestMessage.RawQuery, Is.Null.Or.Empty, "no limit: the server's default");
            Assert.That(log.Entries, Has.Count.EqualTo(2));
            Assert.That(log.Entries[0].Allowed, Is.False);
            Assert.That(log.Entries[0].Name, Is.EqualTo("evil.test"));
            Assert.That(log.Entries[1].InjectedHeaders, Is.EqualTo(new[] { "Authorization" }));
            Assert.That((log.Allowed, log.Denied, log.BytesOut, log.BytesIn), Is.EqualTo((1L, 1L, 10L, 20L)));
            Assert.That(all.Entries, Has.Count.EqualTo(2));
        });
        Assert.Throws<ArgumentOutOfRangeException>(() => session.GetEgressLogAsync(limit: 0));
    }

    [Test]
    public async Task ExposePort_PostsPortAndExpiry_AndDisposalRevokesOnce()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var exposed = Port(8000, "tok-1");
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost())
            .RespondWith(Json(201, exposed, SandboxJsonContext.Default.ExposedPort));
        MapPorts(exposed);
        MapRevoke(8000);

        var preview = await session.ExposePortAsync(8000, TimeSpan.FromSeconds(90.2));

        Assert.Multiple(() =>
        {
            Assert.That(Requests("POST", "/v1/sessions/s1/ports").Single().RequestMessage.Body, Is.EqualTo("{\"port\":8000,\"expiresInSeconds\":91}"),
                "whole seconds, rounded up");
            Assert.That(preview.Url, Is.EqualTo(new Uri(exposed.Url)));
            Assert.That(preview.ExpiresAt, Is.EqualTo(Expiry));
            Assert.That(preview.Port, Is.EqualTo(8000));
            Assert.That(preview.SessionId, Is.EqualTo("s1"));
            Assert.That(preview.ToString(), Does.Not.Contain("tok-1"), "the token stays out of logs");
            Assert.That(preview.IsRevoked, Is.False);
        });

        await preview.DisposeAsync();
        await preview.DisposeAsync();

        Assert.That(Requests("DELETE", "/v1/sessions/s1/ports/8000"), Has.Count.EqualTo(1));
        Assert.That(preview.IsRevoked, Is.True);
        Assert.That(await preview.RevokeAsync(), Is.False, "already revoked");
    }

    [Test]
    public async Task ExposePort_WithoutExpiry_LeavesItToTheServer()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost())
            .RespondWith(Json(201, Port(3000, "t"), SandboxJsonContext.Default.ExposedPort));

        _ = await session.ExposePortAsync(3000);

        Assert.That(Requests("POST", "/v1/sessions/s1/ports").Single().RequestMessage.Body, Is.EqualTo("{\"port\":3000}"));
    }

    [Test]
    public async Task ExposePort_OutOfRange_FailsBeforeAnyRequest()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var before = Server.LogEntries.Count();

        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => session.ExposePortAsync(0));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => session.ExposePortAsync(65536));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => session.ExposePortAsync(80, TimeSpan.Zero));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => session.ExposePortAsync(80, TimeSpan.MaxValue));

        Assert.That(Server.LogEntries.Count(), Is.EqualTo(before));
    }

    [Test]
    public async Task ExposePort_AnExpiryBeyondTheServersMaximum_IsA400()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost())
            .RespondWith(Problem(400, "invalid_request", "Invalid request", "expiresInSeconds must be between 1 and 86400."));

        var ex = await Assert.ThrowsAsync<SandboxException>(() => session.ExposePortAsync(8000, TimeSpan.FromDays(30)));

        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(ex.Code, Is.EqualTo(SandboxErrorCodes.InvalidRequest));
    }

    [Test]
    public async Task ExposePort_OfAGoneSession_IsSessionNotFound()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost()).RespondWith(Problem(404, "session_not_found"));

        var ex = await Assert.ThrowsAsync<SessionNotFoundException>(() => session.ExposePortAsync(8000));

        Assert.That(ex!.SessionId, Is.EqualTo("s1"));
    }

    [Test]
    public async Task ListExposedPorts_GivesHandles_ThatRevokeTheirPort()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        MapPorts(Port(3000, "a"), Port(8000, "b"));
        MapRevoke(8000);

        var previews = await session.ListExposedPortsAsync();

        Assert.That(previews.Select(p => p.Port), Is.EqualTo(new[] { 3000, 8000 }));
        Assert.That(previews[1].Url.Query, Is.EqualTo("?sk_token=b"));
        Assert.That(await previews[1].RevokeAsync(), Is.True);
        Assert.That(Requests("DELETE", "/v1/sessions/s1/ports/8000"), Has.Count.EqualTo(1));
        Assert.That(Requests("DELETE", "/v1/sessions/s1/ports/3000"), Is.Empty);
    }

    [Test]
    public async Task Revoke_OfAPortExposedAgainSince_LeavesTheNewerUrlAlone()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost())
            .RespondWith(Json(201, Port(8000, "old"), SandboxJsonContext.Default.ExposedPort));
        MapPorts(Port(8000, "new"));
        MapRevoke(8000);
        var preview = await session.ExposePortAsync(8000);

        Assert.That(await preview.RevokeAsync(), Is.False);
        await preview.DisposeAsync();

        Assert.That(Requests("DELETE", "/v1/sessions/s1/ports/8000"), Is.Empty);
    }

    [Test]
    public async Task Revoke_WhenTheServerNoLongerHasIt_IsFalse()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        var exposed = Port(8000, "t");
        MapPorts(exposed);
        MapRevoke(8000, status: 404);
        var preview = (await session.ListExposedPortsAsync()).Single();

        Assert.That(await preview.RevokeAsync(), Is.False, "revoked by someone else between the check and the DELETE");
        Assert.That(preview.IsRevoked, Is.True);
    }

    [Test]
    public async Task Revoke_OfAGoneSession_IsFalse()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost())
            .RespondWith(Json(201, Port(8000, "t"), SandboxJsonContext.Default.ExposedPort));
        var preview = await session.ExposePortAsync(8000);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingGet()).RespondWith(Problem(404, "session_not_found"));

        Assert.That(await preview.RevokeAsync(), Is.False);
    }

    [Test]
    public async Task Dispose_WhenRevokingFails_DoesNotThrow_ButRevokeAsyncDoes()
    {
        using var client = CreateClient(o => o.MaxRetryAttempts = 0);
        var session = await AttachAsync(client);
        var exposed = Port(8000, "t");
        MapPorts(exposed);
        MapRevoke(8000, status: 500);
        var previews = await session.ListExposedPortsAsync();

        var ex = await Assert.ThrowsAsync<SandboxException>(() => previews[0].RevokeAsync());
        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.InternalServerError));
        Assert.That(previews[0].IsRevoked, Is.False, "a failed revoke can be tried again");

        await Assert.DoesNotThrowAsync(async () => await previews[0].DisposeAsync());
        Assert.That(Requests("DELETE", "/v1/sessions/s1/ports/8000"), Has.Count.EqualTo(2));
    }

    [Test]
    public async Task A_relative_preview_url_is_resolved_against_the_client()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/ports").UsingPost())
            .RespondWith(Json(201, new ExposedPort { Port = 8000, Url = "/preview/s1/8000/?sk_token=t", ExpiresAt = Expiry }, SandboxJsonContext.Default.ExposedPort));

        var preview = await session.ExposePortAsync(8000);

        Assert.That(preview.Url, Is.EqualTo(new Uri(BaseUri, "/preview/s1/8000/?sk_token=t")));
    }
}
