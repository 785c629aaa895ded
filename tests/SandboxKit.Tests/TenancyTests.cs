using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using SandboxKit.Contracts;
using SandboxKit.Server;
using SandboxKit.Server.Auth;

namespace SandboxKit.Tests;

/// <summary>API keys, tenants and quotas on a server configured with keys.</summary>
[TestFixture]
public sealed class TenancyTests
{
    private ServerHost _host = null!;
    private HttpClient _alpha = null!;
    private HttpClient _beta = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Key"] = "alpha-key",
            ["Auth:ApiKeys:0:Tenant"] = "alpha",
            ["Auth:ApiKeys:0:MaxSessions"] = "2",
            ["Auth:ApiKeys:1:KeySha256"] = TenantResolver.Hash("beta-key"),
            ["Auth:ApiKeys:1:Tenant"] = "beta",
            ["Auth:ApiKeys:2:Key"] = "gamma-key",
            ["Auth:ApiKeys:2:Tenant"] = "gamma",
            ["Auth:ApiKeys:2:RequestsPerSecond"] = "2",
        });
        _alpha = new HttpClient { BaseAddress = _host.BaseAddress };
        _alpha.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "alpha-key");
        _beta = new HttpClient { BaseAddress = _host.BaseAddress };
        _beta.DefaultRequestHeaders.Add("X-API-Key", "beta-key");
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        foreach (var client in new[] { _alpha, _beta })
        {
            foreach (var s in (await client.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions)
            {
                await client.DeleteAsync($"/v1/sessions/{s.Id}");
            }
        }
        _alpha.Dispose();
        _beta.Dispose();
        await _host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.Zero);
    }

    [Test]
    public async Task Calls_without_a_valid_key_are_401_problems()
    {
        var none = await _host.Http.PostAsync("/v1/sessions", JsonContent.Create(new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest));
        Assert.That(none.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        Assert.That((await ServerHost.ProblemAsync(none)).GetProperty("code").GetString(), Is.EqualTo("unauthorized"));

        using var wrong = new HttpRequestMessage(HttpMethod.Post, "/create_session");
        wrong.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "alpha-key-but-wrong");
        Assert.That((await _host.Http.SendAsync(wrong)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));

        Assert.That((await _host.Http.GetAsync("/healthz")).StatusCode, Is.EqualTo(HttpStatusCode.OK), "health stays open for probes");
    }

    [Test]
    public async Task Another_tenants_session_is_answered_exactly_like_a_missing_one()
    {
        var session = await _host.CreateSessionAsync(http: _alpha);
        var foreign = await _beta.GetAsync($"/v1/sessions/{session.Id}");
        var missing = await _beta.GetAsync("/v1/sessions/00000000000000000000000000000000");
        Assert.That(foreign.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        var foreignProblem = await ServerHost.ProblemAsync(foreign);
        var missingProblem = await ServerHost.ProblemAsync(missing);
        Assert.That(foreignProblem.GetProperty("title").GetString(), Is.EqualTo(missingProblem.GetProperty("title").GetString()));
        Assert.That(foreignProblem.GetProperty("code").GetString(), Is.EqualTo("session_not_found"));

        var exec = await _beta.PostAsJsonAsync($"/v1/sessions/{session.Id}/commands", new ExecuteRequest { Command = "id" }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(exec.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await _beta.DeleteAsync($"/v1/sessions/{session.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That((await _beta.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions, Is.Empty);
        Assert.That((await _alpha.GetAsync($"/v1/sessions/{session.Id}")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        await _alpha.DeleteAsync($"/v1/sessions/{session.Id}");
    }

    [Test]
    public async Task The_concurrent_session_quota_gives_429_with_retry_after()
    {
        var a = await _host.CreateSessionAsync(http: _alpha);
        var b = await _host.CreateSessionAsync(http: _alpha);
        var third = await _alpha.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(third.StatusCode, Is.EqualTo(HttpStatusCode.TooManyRequests));
        Assert.That(third.Headers.RetryAfter, Is.Not.Null);
        Assert.That((await ServerHost.ProblemAsync(third)).GetProperty("code").GetString(), Is.EqualTo("quota_exceeded"));
        await _alpha.DeleteAsync($"/v1/sessions/{a.Id}");
        var again = await _host.CreateSessionAsync(http: _alpha);
        await _alpha.DeleteAsync($"/v1/sessions/{b.Id}");
        await _alpha.DeleteAsync($"/v1/sessions/{again.Id}");
    }

    [Test]
    public async Task A_tenant_over_its_request_rate_gets_429_rate_limited_and_others_do_not()
    {
        using var gamma = new HttpClient { BaseAddress = _host.BaseAddress };
        gamma.DefaultRequestHeaders.Add("X-API-Key", "gamma-key");
        var responses = new List<HttpResponseMessage>();
        for (var i = 0; i < 12; i++)
        {
            responses.Add(await gamma.GetAsync("/v1/sessions"));
        }
        var limited = responses.Where(r => r.StatusCode == HttpStatusCode.TooManyRequests).ToList();
        Assert.That(limited, Is.Not.Empty, "12 requests at once exceed a bucket of 4");
        Assert.That(responses.Count(r => r.StatusCode == HttpStatusCode.OK), Is.GreaterThanOrEqualTo(4));
        Assert.That(limited[0].Headers.RetryAfter, Is.Not.Null);
        Assert.That((await ServerHost.ProblemAsync(limited[0])).GetProperty("code").GetString(), Is.EqualTo("rate_limited"));
        Assert.That((await _alpha.GetAsync("/v1/sessions")).StatusCode, Is.EqualTo(HttpStatusCode.OK), "other tenants are not limited");
    }

    [Test]
    public void Binding_a_non_loopback_address_without_keys_is_refused()
    {
        var e = Assert.Throws<StartupException>(() => SandboxServerApp.Build(["--urls", "http://0.0.0.0:5999"]));
        Assert.That(e!.Message, Does.Contain("without API keys"));
        Assert.DoesNotThrow(() => SandboxServerApp.Build(["--urls", "http://127.0.0.1:5999;http://[::1]:5999;http://localhost:5999"]));
    }
}
