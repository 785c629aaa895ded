using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using SandboxKit.Contracts;
using SandboxKit.Server;
using SandboxKit.Server.Api;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Tests;

/// <summary>
/// The keyless mode is for this machine only: it binds loopback or refuses to start, answers only loopback Host names and
/// refuses what another origin's page starts.
/// </summary>
[TestFixture]
public sealed class KeylessModeTests
{
    [TestCase("--urls", "http://loopback:0")]
    [TestCase("--urls", "http://0.0.0.0:0")]
    [TestCase("--Kestrel:Endpoints:Open:Url", "http://0.0.0.0:0")]
    [TestCase("--Kestrel:Endpoints:Open:Url", "http://sandbox.example:0")]
    public async Task Without_keys_a_bind_beyond_loopback_refuses_to_start(string setting, string url)
    {
        var args = new[] { "--urls", "http://127.0.0.1:0", $"--Sandbox:InstanceName=test{Guid.NewGuid():N}"[..22], "--Sandbox:WarmPoolSize=0", $"{setting}={url}" };
        var e = await Assert.ThrowsAsync<StartupException>(async () =>
        {
            var app = SandboxServerApp.Build(args);
            try
            {
                await SandboxServerApp.StartCheckedAsync(app);
            }
            finally
            {
                await app.DisposeAsync();
            }
        });
        Assert.That(e!.Message, Does.Contain("without API keys"));
    }

    [Test]
    public async Task Without_keys_only_loopback_host_names_and_same_origin_requests_are_served()
    {
        await using var host = await ServerHost.StartAsync();
        var port = host.BaseAddress.Port;
        async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, string? hostHeader = null, string? origin = null, HttpContent? content = null)
        {
            using var request = new HttpRequestMessage(method, path) { Content = content };
            if (hostHeader is not null)
            {
                request.Headers.Host = hostHeader;
            }
            if (origin is not null)
            {
                request.Headers.Add("Origin", origin);
            }
            return await host.Http.SendAsync(request);
        }

        // DNS rebinding: the page's own name arrives in Host.
        var rebound = await SendAsync(HttpMethod.Get, "/v1/sessions", hostHeader: $"attacker.example:{port}");
        Assert.That(rebound.StatusCode, Is.EqualTo(HttpStatusCode.MisdirectedRequest));
        Assert.That((await ServerHost.ProblemAsync(rebound)).GetProperty("code").GetString(), Is.EqualTo("forbidden"));
        Assert.That((await SendAsync(HttpMethod.Get, "/v1/sessions", hostHeader: $"localhost:{port}")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await SendAsync(HttpMethod.Get, "/v1/sessions", hostHeader: $"[::1]:{port}")).StatusCode, Is.EqualTo(HttpStatusCode.OK));

        // Any page may try to POST the seed's create: refused before anything is created.
        var crossSite = await SendAsync(HttpMethod.Post, "/create_session", origin: "https://attacker.example", content: new StringContent("{}", Encoding.UTF8, "application/json"));
        Assert.That(crossSite.StatusCode, Is.EqualTo(HttpStatusCode.Forbidden));
        var crossSiteText = await SendAsync(HttpMethod.Post, "/v1/sessions", origin: "null", content: new StringContent("{}", Encoding.UTF8, "text/plain"));
        Assert.That(crossSiteText.StatusCode, Is.EqualTo(HttpStatusCode.Forbidden));
        Assert.That(await Engine.Docker.ListContainersAsync(SessionLabels.Instance, host.Instance, CancellationToken.None), Is.Empty, "nothing was created");

        // A page of this very server (the terminal page) may.
        var sameOrigin = await SendAsync(HttpMethod.Post, "/v1/sessions", origin: host.BaseAddress.GetLeftPart(UriPartial.Authority),
            content: JsonContent.Create(new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest));
        await ServerHost.EnsureAsync(sameOrigin, HttpStatusCode.Created);
        var session = (await sameOrigin.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!;

        // WebSockets carry no CORS protection: the Origin is checked on the upgrade.
        using var socket = new ClientWebSocket();
        socket.Options.SetRequestHeader("Origin", "https://attacker.example");
        var uri = new UriBuilder(host.BaseAddress) { Scheme = "ws", Path = $"/v1/sessions/{session.Id}/commands/ws" }.Uri;
        var refused = await Assert.ThrowsAsync<WebSocketException>(() => socket.ConnectAsync(uri, CancellationToken.None));
        Assert.That(refused!.Message, Does.Contain("403"));

        await host.DeleteSessionAsync(session.Id);
    }
}

/// <summary>With keys: anonymous callers get little work and little information; the key is checked before anything else.</summary>
[TestFixture]
public sealed class AnonymousCallerTests
{
    private ServerHost _host = null!;
    private HttpClient _tenant = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Key"] = "anon-test-key",
            ["Auth:ApiKeys:0:Tenant"] = "alpha",
            ["Auth:AnonymousRequestsPerSecond"] = "5",
        });
        _tenant = new HttpClient { BaseAddress = _host.BaseAddress };
        _tenant.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "anon-test-key");
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        _tenant.Dispose();
        await _host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.Zero);
    }

    [Test]
    public async Task Anonymous_health_is_minimal_and_the_full_report_needs_a_key()
    {
        var anonymous = JsonDocument.Parse(await (await _host.Http.GetAsync("/healthz")).Content.ReadAsStringAsync()).RootElement;
        Assert.That(anonymous.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "status" }));
        var full = JsonDocument.Parse(await (await _tenant.GetAsync("/healthz")).Content.ReadAsStringAsync()).RootElement;
        Assert.That(full.GetProperty("engine").GetProperty("reachable").GetBoolean(), Is.True);
        Assert.That(full.GetProperty("capacity").GetProperty("maxSessions").GetInt32(), Is.GreaterThan(0));
        Assert.That(full.GetProperty("capacity").GetProperty("maxCommittedMemoryBytes").GetInt64(), Is.GreaterThan(0));
    }

    [Test]
    public async Task The_key_is_checked_before_the_body_is_read()
    {
        var malformed = await _host.Http.PostAsync("/v1/sessions", new StringContent("{ not json", Encoding.UTF8, "application/json"));
        Assert.That(malformed.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), "not a 400 about the body");
        var seed = await _host.Http.PostAsync("/execute", new StringContent("{ not json", Encoding.UTF8, "application/json"));
        Assert.That(seed.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
    }

    [Test]
    public async Task Anonymous_requests_are_rate_limited_and_keyed_callers_are_not_held_up()
    {
        await Task.Delay(1100);
        var answers = await Task.WhenAll(Enumerable.Range(0, 40).Select(_ => _host.Http.GetAsync("/v1/sessions")));
        var limited = answers.Where(a => a.StatusCode == HttpStatusCode.TooManyRequests).ToList();
        Assert.That(limited, Is.Not.Empty);
        Assert.That(answers.Count(a => a.StatusCode == HttpStatusCode.Unauthorized), Is.LessThanOrEqualTo(10));
        Assert.That((await ServerHost.ProblemAsync(limited[0])).GetProperty("code").GetString(), Is.EqualTo("rate_limited"));
        Assert.That(limited[0].Headers.RetryAfter, Is.Not.Null);
        Assert.That((await _tenant.GetAsync("/v1/sessions")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        await Task.Delay(1100);
    }

    [Test]
    public async Task Anonymous_keyed_requests_never_reach_the_idempotency_store()
    {
        await Task.Delay(1100);
        var store = _host.Services.GetRequiredService<IdempotencyStore>();
        for (var i = 0; i < 5; i++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/sessions") { Content = new StringContent("{}", Encoding.UTF8, "application/json") };
            request.Headers.Add("Idempotency-Key", Guid.NewGuid().ToString());
            Assert.That((await _host.Http.SendAsync(request)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        }
        Assert.That(store.Usage("default"), Is.EqualTo((0, 0L)));
        Assert.That(store.Usage("alpha"), Is.EqualTo((0, 0L)));
        // Nothing was locked for the tenant: its own keyed request works.
        using var keyed = new HttpRequestMessage(HttpMethod.Post, "/v1/sessions/0123456789abcdef0123456789abcdef/commands")
        {
            Content = JsonContent.Create(new ExecuteRequest { Command = "true" }, SandboxJsonContext.Default.ExecuteRequest),
        };
        keyed.Headers.Add("Idempotency-Key", Guid.NewGuid().ToString());
        Assert.That((await _tenant.SendAsync(keyed)).StatusCode, Is.EqualTo(HttpStatusCode.NotFound), "a 404 for the unknown session, not a refusal of the key");
        await Task.Delay(1100);
    }
}

/// <summary>The idempotency store: per tenant, only for endpoints that start work, within budgets.</summary>
[TestFixture]
public sealed class IdempotencyStoreTests
{
    private ServerHost _host = null!;
    private HttpClient _alpha = null!;
    private HttpClient _beta = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Key"] = "idem-alpha",
            ["Auth:ApiKeys:0:Tenant"] = "alpha",
            ["Auth:ApiKeys:1:Key"] = "idem-beta",
            ["Auth:ApiKeys:1:Tenant"] = "beta",
            ["Sandbox:IdempotencyMaxEntriesPerTenant"] = "3",
            ["Sandbox:IdempotencyMaxReplayBytes"] = (64 * 1024).ToString(),
        });
        _alpha = Client("idem-alpha");
        _beta = Client("idem-beta");
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

    private HttpClient Client(string key)
    {
        var client = new HttpClient { BaseAddress = _host.BaseAddress, Timeout = TimeSpan.FromMinutes(2) };
        client.DefaultRequestHeaders.Add("X-API-Key", key);
        return client;
    }

    private static HttpRequestMessage Keyed(string path, HttpContent content, string key)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        request.Headers.Add("Idempotency-Key", key);
        return request;
    }

    private static JsonContent Create() => JsonContent.Create(new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);

    private static JsonContent Command(string command) => JsonContent.Create(new ExecuteRequest { Command = command }, SandboxJsonContext.Default.ExecuteRequest);

    private IdempotencyStore Store => _host.Services.GetRequiredService<IdempotencyStore>();

    [Test]
    public async Task The_same_key_from_two_tenants_is_two_requests()
    {
        var key = Guid.NewGuid().ToString();
        var a = await _alpha.SendAsync(Keyed("/v1/sessions", Create(), key));
        var b = await _beta.SendAsync(Keyed("/v1/sessions", Create(), key));
        await ServerHost.EnsureAsync(a, HttpStatusCode.Created);
        await ServerHost.EnsureAsync(b, HttpStatusCode.Created);
        var idA = (await a.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
        var idB = (await b.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
        Assert.That(idA, Is.Not.EqualTo(idB));
        Assert.That(b.Headers.Contains("Idempotent-Replayed"), Is.False);
        await _alpha.DeleteAsync($"/v1/sessions/{idA}");
        await _beta.DeleteAsync($"/v1/sessions/{idB}");
    }

    [Test]
    public async Task Unknown_routes_reads_and_non_work_posts_are_not_kept()
    {
        var before = Store.Usage("alpha");
        var unknown = await _alpha.SendAsync(Keyed("/v1/no-such-thing", new StringContent("{}"), Guid.NewGuid().ToString()));
        Assert.That(unknown.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        var keepalive = await _alpha.SendAsync(Keyed("/v1/sessions/0123456789abcdef0123456789abcdef/keepalive", new StringContent(""), Guid.NewGuid().ToString()));
        Assert.That(keepalive.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That(Store.Usage("alpha"), Is.EqualTo(before));
    }

    [Test]
    public async Task A_tenant_over_its_entry_budget_loses_its_oldest_answers_not_its_ability_to_retry()
    {
        var created = await _alpha.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        var session = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
        var keys = Enumerable.Range(0, 6).Select(_ => Guid.NewGuid().ToString()).ToList();
        var first = new List<string>();
        foreach (var key in keys)
        {
            var r = await _alpha.SendAsync(Keyed($"/v1/sessions/{session}/commands", Command("echo $RANDOM$RANDOM >> /workspace/budget; tail -1 /workspace/budget"), key));
            first.Add((await r.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout);
        }
        Assert.That(Store.Usage("alpha").Entries, Is.LessThanOrEqualTo(3));
        // Evicted from the server's store, the oldest key is still answered with its first result: the supervisor kept it.
        var repeat = await _alpha.SendAsync(Keyed($"/v1/sessions/{session}/commands", Command("echo $RANDOM$RANDOM >> /workspace/budget; tail -1 /workspace/budget"), keys[0]));
        Assert.That((await repeat.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo(first[0]));
        var lines = await _alpha.PostAsJsonAsync($"/v1/sessions/{session}/commands", new ExecuteRequest { Command = "wc -l < /workspace/budget" }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That((await lines.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo("6\n"));
        await _alpha.DeleteAsync($"/v1/sessions/{session}");
    }

    [Test]
    public async Task Large_answers_are_not_held_yet_a_retry_gets_the_same_result_without_running_again()
    {
        var created = await _beta.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        var session = (await created.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!.Id;
        var key = Guid.NewGuid().ToString();
        const string command = "echo run >> /workspace/big-runs; head -c 600000 /dev/urandom | base64 -w 0";
        var first = await _beta.SendAsync(Keyed($"/v1/sessions/{session}/commands", Command(command), key));
        var firstResult = (await first.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
        Assert.That(firstResult.Stdout.Length, Is.GreaterThan(700_000));
        Assert.That(Store.Usage("beta").Bytes, Is.LessThan(64 * 1024), "an answer over the replay limit is not kept");
        var retry = await _beta.SendAsync(Keyed($"/v1/sessions/{session}/commands", Command(command), key));
        Assert.That((await retry.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo(firstResult.Stdout));
        var runs = await _beta.PostAsJsonAsync($"/v1/sessions/{session}/commands", new ExecuteRequest { Command = "wc -l < /workspace/big-runs" }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That((await runs.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!.Stdout, Is.EqualTo("1\n"));
        await _beta.DeleteAsync($"/v1/sessions/{session}");
    }
}

/// <summary>Smaller holes a review found, each with its fix.</summary>
[TestFixture]
public sealed class ReviewFindingTests : SessionFixture
{
    [Test]
    public async Task A_file_with_a_non_ascii_name_downloads_with_its_exact_name()
    {
        await Host.ExecuteAsync(SessionId, "printf 'crème' > /workspace/café.txt");
        var response = await Host.Http.GetAsync($"/v1/sessions/{SessionId}/files?path={Uri.EscapeDataString("/workspace/café.txt")}");
        await ServerHost.EnsureAsync(response, HttpStatusCode.OK);
        Assert.That(response.Content.Headers.ContentDisposition!.FileNameStar, Is.EqualTo("café.txt"));
        Assert.That(await response.Content.ReadAsStringAsync(), Is.EqualTo("crème"));
    }

    [Test]
    public async Task A_directory_with_far_future_and_ancient_times_lists()
    {
        // tmpfs keeps 64-bit times (ext4 stops at 2446), so anything `touch` can set arrives here.
        await Host.ExecuteAsync(SessionId, "mkdir -p /tmp/times && touch -d '9999-12-31 23:59:59' /tmp/times/future && touch -d '1901-12-14' /tmp/times/past && touch -d @99999999999999 /tmp/times/beyond");
        var list = await Host.Http.GetAsync($"/v1/sessions/{SessionId}/files/list?path=/tmp/times");
        await ServerHost.EnsureAsync(list, HttpStatusCode.OK);
        var entries = (await list.Content.ReadFromJsonAsync(SandboxJsonContext.Default.FileList))!.Entries;
        Assert.That(entries.Select(e => e.Name), Is.EquivalentTo(new[] { "future", "past", "beyond" }));
        Assert.That(entries.Single(e => e.Name == "beyond").ModifiedAt, Is.EqualTo(DateTimeOffset.MaxValue).Within(TimeSpan.FromDays(1)));
    }

    [Test]
    public async Task The_session_environment_is_not_written_into_engine_labels()
    {
        var session = await Host.CreateSessionAsync(new CreateSessionRequest { Environment = new Dictionary<string, string> { ["API_TOKEN"] = "s3cr3t-in-env" } });
        Assert.That((await Host.ExecuteAsync(session.Id, "echo $API_TOKEN")).Stdout, Is.EqualTo("s3cr3t-in-env\n"));
        var volumes = await Engine.Docker.ListVolumesAsync(SessionLabels.Instance, Host.Instance, CancellationToken.None);
        var containers = await Engine.Docker.ListContainersAsync(SessionLabels.Instance, Host.Instance, CancellationToken.None);
        Assert.That(volumes.SelectMany(v => v.Labels.Values).Concat(containers.SelectMany(c => c.Labels.Values)), Has.None.Contains("s3cr3t"));
        await Host.DeleteSessionAsync(session.Id);
    }

    [Test]
    public async Task Commands_and_stdin_over_the_limit_are_413_and_the_session_lives_on()
    {
        var big = new string('x', 600 * 1024);
        var command = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/commands", new ExecuteRequest { Command = "echo " + big }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(command.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        Assert.That((await ServerHost.ProblemAsync(command)).GetProperty("code").GetString(), Is.EqualTo("payload_too_large"));
        var stdin = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/commands", new ExecuteRequest { Command = "wc -c", Stdin = big }, SandboxJsonContext.Default.ExecuteRequest);
        Assert.That(stdin.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        var started = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/processes", new StartProcessRequest { Command = "cat > /dev/null", KeepStdinOpen = true }, SandboxJsonContext.Default.StartProcessRequest);
        var process = (await started.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ProcessInfo))!;
        var write = await Host.Http.PostAsJsonAsync($"/v1/sessions/{SessionId}/processes/{process.Id}/stdin", new SendStdinRequest { Text = big, Close = true }, SandboxJsonContext.Default.SendStdinRequest);
        Assert.That(write.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        await Host.Http.DeleteAsync($"/v1/sessions/{SessionId}/processes/{process.Id}");
        Assert.That((await Host.ExecuteAsync(SessionId, "echo alive")).Stdout, Is.EqualTo("alive\n"));
    }

    [TestCase("host")]
    [TestCase("container:abc")]
    [TestCase("ns:/proc/1/ns/net")]
    public async Task Networks_that_would_undo_isolation_are_refused_at_start(string network)
    {
        var e = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(async () =>
            await (await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:AllowedNetworks:0"] = network })).DisposeAsync());
        Assert.That(e!.Message, Does.Contain(network));
    }
}

/// <summary>Admission control: the host never commits more sessions or memory than the operator allows.</summary>
[TestFixture]
public sealed class AdmissionTests
{
    [Test]
    public async Task Past_the_session_count_or_committed_memory_new_sessions_get_503_with_retry_after()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:MaxSessions"] = "2",
            ["Sandbox:MaxCommittedMemoryBytes"] = (768L << 20).ToString(),
            ["Sandbox:DefaultMemoryBytes"] = (256L << 20).ToString(),
            ["Sandbox:MaxMemoryBytes"] = (1L << 30).ToString(),
        });
        var first = await host.CreateSessionAsync();
        var tooMuch = await host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { MemoryBytes = 600L << 20 }, SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(tooMuch.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        Assert.That(tooMuch.Headers.RetryAfter, Is.Not.Null);
        var problem = await ServerHost.ProblemAsync(tooMuch);
        Assert.That(problem.GetProperty("code").GetString(), Is.EqualTo("capacity_exhausted"));
        Assert.That(problem.GetProperty("detail").GetString(), Does.Contain("memory"));

        var second = await host.CreateSessionAsync();
        var third = await host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(third.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        Assert.That((await ServerHost.ProblemAsync(third)).GetProperty("detail").GetString(), Does.Contain("sessions"));

        var health = (await host.Http.GetFromJsonAsync("/healthz", SandboxJsonContext.Default.HealthReport))!;
        Assert.That(health.Capacity!.Sessions, Is.EqualTo(2));
        Assert.That(health.Capacity.CommittedMemoryBytes, Is.EqualTo(512L << 20));
        Assert.That(health.Capacity.MaxCommittedMemoryBytes, Is.EqualTo(768L << 20));

        await host.DeleteSessionAsync(first.Id);
        var fourth = await host.CreateSessionAsync();
        await host.DeleteSessionAsync(second.Id);
        await host.DeleteSessionAsync(fourth.Id);
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }
}
