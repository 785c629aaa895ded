using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using WireMock.RequestBuilders;

namespace SandboxKit.Client.Tests;

public class DependencyInjectionTests : WireMockTestBase
{
    [Test]
    public async Task AddSandboxClient_WithAction_ResolvesASingletonWithTheSameRetryPipeline()
    {
        var services = new ServiceCollection();
        var perAttempt = 0;
        services.AddSandboxClient(o =>
            {
                o.BaseAddress = BaseUri;
                o.ApiKey = "di-key";
                o.RetryDelay = TimeSpan.FromMilliseconds(10);
            })
            .AddHttpMessageHandler(() => new CallbackHandler(() => Interlocked.Increment(ref perAttempt)));
        await using var provider = services.BuildServiceProvider();
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/code").UsingPost())
            .InScenario("flaky").WillSetStateTo("ok")
            .RespondWith(Problem(503, "engine_unavailable"));
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/code").UsingPost())
            .InScenario("flaky").WhenStateIs("ok")
            .RespondWith(Json(200, Result(stdout: "3\n")));

        var client = provider.GetRequiredService<SandboxClient>();
        var session = await AttachAsync(client);
        var result = await session.RunCodeAsync("print(1+2)", CodeLanguages.Python);

        Assert.That(provider.GetRequiredService<SandboxClient>(), Is.SameAs(client));
        Assert.That(result.Stdout, Is.EqualTo("3\n"));
        var attempts = Requests("POST", "/v1/sessions/s1/code");
        Assert.That(attempts, Has.Count.EqualTo(2));
        Assert.That(Header(attempts[1].RequestMessage, "Idempotency-Key"), Is.EqualTo(Header(attempts[0].RequestMessage, "Idempotency-Key")).And.Not.Null);
        Assert.That(Header(attempts[0].RequestMessage, "Authorization"), Is.EqualTo("Bearer di-key"));
        Assert.That(perAttempt, Is.EqualTo(3), "a user handler runs once per attempt (1 attach + 2 code attempts)");
    }

    [Test]
    public async Task AddSandboxClient_WithConfiguration_BindsTheSection()
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["SandboxKit:BaseAddress"] = Server.Url,
                ["SandboxKit:ApiKey"] = "from-config",
                ["SandboxKit:AttemptTimeout"] = "00:00:05",
                ["SandboxKit:MaxRetryAttempts"] = "1",
            })
            .Build();
        var services = new ServiceCollection();
        services.AddSandboxClient(configuration.GetSection(SandboxClientOptions.SectionName));
        await using var provider = services.BuildServiceProvider();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingGet())
            .RespondWith(Json(200, new SessionList { Sessions = [] }, SandboxJsonContext.Default.SessionList));

        var options = provider.GetRequiredService<IOptions<SandboxClientOptions>>().Value;
        var sessions = await provider.GetRequiredService<SandboxClient>().ListSessionsAsync();

        Assert.That(options.AttemptTimeout, Is.EqualTo(TimeSpan.FromSeconds(5)));
        Assert.That(options.MaxRetryAttempts, Is.EqualTo(1));
        Assert.That(sessions, Is.Empty);
        Assert.That(Header(Server.LogEntries.Single().RequestMessage, "Authorization"), Is.EqualTo("Bearer from-config"));
    }

    [Test]
    public async Task AddSandboxClient_Twice_KeepsOnePipeline_AndLaterConfigurationWins()
    {
        var services = new ServiceCollection();
        services.AddSandboxClient(o => o.BaseAddress = new Uri("http://unused.invalid"));
        services.AddSandboxClient(o =>
        {
            o.BaseAddress = BaseUri;
            o.MaxRetryAttempts = 1;
            o.RetryDelay = TimeSpan.FromMilliseconds(10);
        });
        await using var provider = services.BuildServiceProvider();
        Server.Given(Request.Create().WithPath("/v1/sessions").UsingPost()).RespondWith(Problem(503, "engine_unavailable"));

        await Assert.ThrowsAsync<SandboxException>(() => provider.GetRequiredService<SandboxClient>().CreateSessionAsync());

        // One pipeline with one retry: 2 requests. Two nested pipelines would have sent 4.
        Assert.That(Requests("POST", "/v1/sessions"), Has.Count.EqualTo(2));
    }

    [Test]
    public async Task InvalidOptions_FailOnStart_NamingTheProblem()
    {
        var services = new ServiceCollection();
        services.AddSandboxClient(o => o.AttemptTimeout = TimeSpan.Zero);
        await using var provider = services.BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IStartupValidator>().Validate());

        Assert.That(ex!.Failures, Has.Some.Contains("BaseAddress is required"));
        Assert.That(ex.Failures, Has.Some.Contains("AttemptTimeout"));
        Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<SandboxClient>());
    }

    [Test]
    public async Task RelativeBaseAddress_FailsValidation()
    {
        var services = new ServiceCollection();
        services.AddSandboxClient(o => o.BaseAddress = new Uri("/relative", UriKind.Relative));
        await using var provider = services.BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IStartupValidator>().Validate());

        Assert.That(ex!.Message, Does.Contain("absolute"));
    }

    [Test]
    public void DirectConstruction_ValidatesToo()
    {
        Assert.Throws<ArgumentNullException>(() => _ = new SandboxClient((SandboxClientOptions)null!));
        var ex = Assert.Throws<ArgumentException>(() => _ = new SandboxClient(new Uri("ftp://example.test")));
        Assert.That(ex!.Message, Does.Contain("http or https"));
        ex = Assert.Throws<ArgumentException>(() => _ = new SandboxClient(new SandboxClientOptions
        {
            BaseAddress = new Uri("http://127.0.0.1:5000"),
            TotalTimeout = TimeSpan.FromSeconds(1),
            AttemptTimeout = TimeSpan.FromSeconds(2),
            MaxRetryAttempts = -1,
        }));
        Assert.That(ex!.Message, Does.Contain("TotalTimeout").And.Contain("MaxRetryAttempts"));

        using var ok = new SandboxClient(new Uri("http://127.0.0.1:5000"), apiKey: null);
        Assert.That(ok.BaseAddress, Is.EqualTo(new Uri("http://127.0.0.1:5000")));
    }

    [Test]
    public async Task ClientAndSession_CanBeMocked()
    {
        SandboxClient client = new FakeClient();

        await using var session = await client.CreateSessionAsync();
        var result = await session.ExecuteAsync("ls -la");

        Assert.That(session.Id, Is.EqualTo("fake"));
        Assert.That(result.Stdout, Is.EqualTo("fake output"));
    }

    private sealed class CallbackHandler(Action onSend) : DelegatingHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            onSend();
            return base.SendAsync(request, cancellationToken);
        }
    }

    private sealed class FakeClient : SandboxClient
    {
        public override Task<SandboxSession> CreateSessionAsync(CreateSessionRequest? request = null, CancellationToken cancellationToken = default) =>
            Task.FromResult<SandboxSession>(new FakeSession());
    }

    private sealed class FakeSession : SandboxSession
    {
        public override string Id => "fake";

        public override Task<CommandResult> ExecuteAsync(string command, ExecuteOptions? options = null, CancellationToken cancellationToken = default) =>
            Task.FromResult(new CommandResult(Result(stdout: "fake output")));
    }
}
