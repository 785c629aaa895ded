using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>
/// The client SDK's network features against the real server and engine: an allow-list set at creation and changed at
/// run time, the egress log, and a preview URL of a web server in a sandbox without any network. As in
/// <see cref="NetworkPolicyTests"/>, allowed names resolve through the gateway's static hosts map to an HTTP server of
/// the test on loopback; nothing leaves the machine.
/// </summary>
[TestFixture]
public sealed class NetworkClientEndToEndTests
{
    private ServerHost _host = null!;
    private SandboxClient _client = null!;
    private WebApplication _upstream = null!;
    private int _upstreamPort;
    private int _upstreamRequests;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.None);
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        _upstream = builder.Build();
        _upstream.Run(async context =>
        {
            Interlocked.Increment(ref _upstreamRequests);
            await context.Response.WriteAsync("upstream ok " + context.Request.Path);
        });
        await _upstream.StartAsync();
        _upstreamPort = new Uri(_upstream.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single()).Port;

        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:Egress:Hosts:pypi.test"] = "127.0.0.1",
            ["Sandbox:Egress:Hosts:other.test"] = "127.0.0.1",
            ["Sandbox:Egress:AllowedRulePatterns:0"] = "*.test:*",
            // The stand-in listens on loopback, which is otherwise always denied.
            ["Sandbox:Egress:AllowedPrivateRanges:0"] = "127.0.0.1/32",
        });
        _client = new SandboxClient(_host.BaseAddress);
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        _client?.Dispose();
        if (_host is not null)
        {
            await _host.DisposeAsync();
            var leaked = await Engine.CountResourcesAsync(_host.Instance);
            await Engine.RemoveAllAsync(_host.Instance);
            Assert.That(leaked, Is.Zero);
        }
        if (_upstream is not null)
        {
            await _upstream.DisposeAsync();
        }
    }

    private int UpstreamRequests => Volatile.Read(ref _upstreamRequests);

    [Test]
    public async Task An_allow_list_set_through_the_client_lets_one_name_through_refuses_another_and_is_logged()
    {
        await using var session = await _client.CreateSessionAsync(new CreateSessionRequest
        {
            Egress = new EgressPolicyRequest { Allow = [$"pypi.test:{_upstreamPort}"] },
        });
        Assert.That(session.Info.Egress?.Allow, Is.EqualTo(new[] { $"pypi.test:{_upstreamPort}" }), "the policy in force is on the session");

        var allowed = await session.ExecuteAsync($"curl -sS -m 10 http://pypi.test:{_upstreamPort}/simple/");
        Assert.That(allowed.Stdout, Is.EqualTo("upstream ok /simple/"), allowed.Stderr);

        var before = UpstreamRequests;
        var refused = await session.ExecuteAsync($"curl -sS -m 10 http://other.test:{_upstreamPort}/ ; echo rc=$?");
        Assert.That(refused.Stdout, Does.Contain("rc=6"), "a name off the list does not resolve: " + refused.Stderr);
        Assert.That(UpstreamRequests, Is.EqualTo(before), "nothing reached the upstream");

        var log = await session.GetEgressLogAsync(limit: 200);
        Assert.That(log.Entries.Any(e => e.Allowed && e.Name == "pypi.test"), Is.True);
        Assert.That(log.Entries.Any(e => !e.Allowed && e.Name == "other.test"), Is.True);
        Assert.That(log.Allowed, Is.GreaterThan(0));
        Assert.That(log.Denied, Is.GreaterThan(0));
        Assert.That(log.BytesIn, Is.GreaterThan(0));

        // At run time: the other name now, and not the first one any more.
        var updated = await session.UpdateEgressAsync(new EgressPolicyRequest { Allow = [$"other.test:{_upstreamPort}"] });
        Assert.That(updated.Egress?.Allow, Is.EqualTo(new[] { $"other.test:{_upstreamPort}" }));
        Assert.That(session.Info.Egress?.Allow, Is.EqualTo(new[] { $"other.test:{_upstreamPort}" }));
        Assert.That((await session.ExecuteAsync($"curl -sS -m 10 http://other.test:{_upstreamPort}/b")).Stdout, Is.EqualTo("upstream ok /b"));
        Assert.That((await session.ExecuteAsync($"curl -sS -m 10 http://pypi.test:{_upstreamPort}/a; echo rc=$?")).Stdout, Does.Not.Contain("upstream ok"));

        // A policy outside the operator's bounds is a 400, and the one in force stays.
        var forbidden = await Assert.ThrowsAsync<SandboxException>(() => session.UpdateEgressAsync(new EgressPolicyRequest { Allow = ["pypi.org"] }));
        Assert.That(forbidden!.Status, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(forbidden.Code, Is.EqualTo(SandboxErrorCodes.InvalidRequest));
        Assert.That(forbidden.Detail, Does.StartWith("egress:"));
        Assert.That((await session.RefreshAsync()).Egress?.Allow, Is.EqualTo(new[] { $"other.test:{_upstreamPort}" }));

        // Off again.
        var off = await session.UpdateEgressAsync(new EgressPolicyRequest());
        Assert.That(off.Egress, Is.Null);
        Assert.That((await session.ExecuteAsync($"curl -sS -m 5 http://other.test:{_upstreamPort}/; echo rc=$?")).Stdout, Does.Contain("rc=6"));
    }

    [Test]
    public async Task Creating_a_session_with_a_policy_the_operator_forbids_is_a_400_and_creates_nothing()
    {
        var before = await Engine.CountResourcesAsync(_host.Instance);
        var ex = await Assert.ThrowsAsync<SandboxException>(() =>
            _client.CreateSessionAsync(new CreateSessionRequest { Egress = new EgressPolicyRequest { Allow = ["10.0.0.0/8"] } }));
        Assert.That(ex!.Status, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(ex.Detail, Does.StartWith("egress:"));
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.EqualTo(before));
    }

    [Test]
    public async Task A_web_server_in_a_sandbox_is_reached_through_its_preview_url_until_revoked()
    {
        await using var session = await _client.CreateSessionAsync();
        await session.WriteFileAsync("/workspace/site/index.html", "<h1>hello preview</h1>\n");
        var server = await session.StartProcessAsync("cd /workspace/site && exec python3 -m http.server 8000 --bind 127.0.0.1");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!(await session.ExecuteAsync("(exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && echo open")).Stdout.Contains("open", StringComparison.Ordinal))
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "the server did not start listening");
            await Task.Delay(200);
        }

        Uri url;
        await using (var preview = await session.ExposePortAsync(8000, TimeSpan.FromMinutes(5)))
        {
            url = preview.Url;
            Assert.That(url.AbsolutePath, Is.EqualTo($"/preview/{session.Id}/8000/"));
            Assert.That(preview.ExpiresAt, Is.EqualTo(DateTimeOffset.UtcNow.AddMinutes(5)).Within(TimeSpan.FromSeconds(30)));
            Assert.That((await session.ListExposedPortsAsync()).Select(p => p.Port), Is.EqualTo(new[] { 8000 }));

            // A plain HttpClient, no API key: the URL's token is the authorisation.
            using var browser = new HttpClient();
            var page = await browser.GetAsync(url);
            Assert.That(page.StatusCode, Is.EqualTo(HttpStatusCode.OK));
            Assert.That(await page.Content.ReadAsStringAsync(), Does.Contain("hello preview"));
        }

        using (var after = new HttpClient())
        {
            Assert.That((await after.GetAsync(url)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), "disposal revoked the URL");
        }
        Assert.That(await session.ListExposedPortsAsync(), Is.Empty);
        await server.KillAsync();
    }
}
