using System.Diagnostics;
using SandboxKit.Client.Internal;
using WireMock.RequestBuilders;

namespace SandboxKit.Client.Tests;

/// <summary>
/// The per-call timeout of a command follows the command's own timeout. Real numbers (a 35 s answer to a 60 s command)
/// would make slow tests, so the ordinary timeouts are shrunk to a few hundred milliseconds and a command call is shown
/// to outlive them by far.
/// </summary>
public class TimeoutAndCancellationTests : WireMockTestBase
{
    private const string CommandsPath = "/v1/sessions/s1/commands";

    private static void ShortOrdinaryTimeouts(SandboxClientOptions o)
    {
        o.AttemptTimeout = TimeSpan.FromMilliseconds(300);
        o.TotalTimeout = TimeSpan.FromMilliseconds(600);
        o.CommandTimeoutMargin = TimeSpan.FromMilliseconds(500);
    }

    [Test]
    public async Task CommandCall_OutlivesTheOrdinaryAttemptAndTotalTimeouts()
    {
        using var client = CreateClient(ShortOrdinaryTimeouts);
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost())
            .RespondWith(Json(200, Result(stdout: "slow but fine")).WithDelay(TimeSpan.FromMilliseconds(1500)));
        var watch = Stopwatch.StartNew();

        var result = await session.ExecuteAsync("sleep 1.5", new ExecuteOptions { Timeout = TimeSpan.FromSeconds(2) });

        Assert.That(result.Stdout, Is.EqualTo("slow but fine"));
        Assert.That(watch.Elapsed, Is.GreaterThan(TimeSpan.FromMilliseconds(1400)), "the answer really took longer than the 600 ms total timeout");
        Assert.That(Requests("POST", CommandsPath), Has.Count.EqualTo(1), "no attempt timed out and was retried");
    }

    [Test]
    public async Task CodeCall_WithoutTimeout_GetsDefaultCommandTimeoutPlusMargin()
    {
        using var client = CreateClient(o =>
        {
            ShortOrdinaryTimeouts(o);
            o.DefaultCommandTimeout = TimeSpan.FromSeconds(1);
        });
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/code").UsingPost())
            .RespondWith(Json(200, Result(stdout: "42\n")).WithDelay(TimeSpan.FromMilliseconds(1000)));

        var result = await session.RunCodeAsync("print(42)", CodeLanguages.Python);

        Assert.That(result.Stdout, Is.EqualTo("42\n"));
    }

    [Test]
    public async Task OrdinaryCall_IsCutByTheTotalTimeout_EvenWithRetries()
    {
        // WireMock logs a request only once it has answered, so attempts are counted on the client side.
        var counter = new CountingHandler(new SocketsHttpHandler());
        using var client = CreateClient(FastOptions(ShortOrdinaryTimeouts), counter);
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath("/v1/sessions/s1/files/list").UsingGet())
            .RespondWith(Json(200, Result()).WithDelay(TimeSpan.FromSeconds(2)));
        var watch = Stopwatch.StartNew();

        var ex = await Assert.ThrowsAsync<SandboxException>(() => session.ListFilesAsync());

        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.Timeout));
        Assert.That(ex.Message, Does.Contain(nameof(SandboxClientOptions.AttemptTimeout)), "the message names the setting to change");
        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromMilliseconds(1500)), "600 ms total timeout, not the 2 s answer");
        Assert.That(counter.Count, Is.EqualTo(3), "1 attach + 2 attempts of 300 ms within the 600 ms total");
    }

    [Test]
    public async Task CommandCall_IsCutWhenTheServerOverrunsCommandTimeoutPlusMargin()
    {
        using var client = CreateClient(o =>
        {
            o.CommandTimeoutMargin = TimeSpan.FromMilliseconds(200);
            o.MaxRetryAttempts = 0;
        });
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost())
            .RespondWith(Json(200, Result()).WithDelay(TimeSpan.FromSeconds(2)));
        var watch = Stopwatch.StartNew();

        var ex = await Assert.ThrowsAsync<SandboxException>(() =>
            session.ExecuteAsync("sleep 10", new ExecuteOptions { Timeout = TimeSpan.FromMilliseconds(300) }));

        Assert.That(ex!.Code, Is.EqualTo(SandboxErrorCodes.Timeout));
        Assert.That(ex.InnerException, Is.InstanceOf<Polly.Timeout.TimeoutRejectedException>());
        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromMilliseconds(1500)));
    }

    [Test]
    public void Pipeline_ReadsTheCallTimeoutFromTheRequest()
    {
        var options = new SandboxClientOptions { BaseAddress = new Uri("http://localhost") };
        using var command = new HttpRequestMessage(HttpMethod.Post, "v1/sessions/s1/commands");
        command.Options.Set(SandboxRequestOptions.AttemptTimeout, options.CommandAttemptTimeout(TimeSpan.FromSeconds(60)));
        using var ordinary = new HttpRequestMessage(HttpMethod.Get, "v1/sessions/s1");

        Assert.Multiple(() =>
        {
            // A 60 s command may take 60 s + 30 s margin per attempt: a 35 s answer is well within it.
            Assert.That(SandboxResilience.AttemptTimeoutFor(command, options), Is.EqualTo(TimeSpan.FromSeconds(90)));
            Assert.That(SandboxResilience.TotalTimeoutFor(command, options), Is.EqualTo(TimeSpan.FromSeconds(190)));
            Assert.That(SandboxResilience.AttemptTimeoutFor(ordinary, options), Is.EqualTo(TimeSpan.FromSeconds(30)));
            Assert.That(SandboxResilience.TotalTimeoutFor(ordinary, options), Is.EqualTo(TimeSpan.FromSeconds(100)));
            // No command timeout given: the server's default (120 s) plus the margin.
            Assert.That(options.CommandAttemptTimeout(null), Is.EqualTo(TimeSpan.FromSeconds(150)));
        });
    }

    [Test]
    public async Task Cancellation_StopsASlowCallPromptly()
    {
        var counter = new CountingHandler(new SocketsHttpHandler());
        using var client = CreateClient(FastOptions(), counter);
        var session = await AttachAsync(client);
        Server.Given(Request.Create().WithPath(CommandsPath).UsingPost())
            .RespondWith(Json(200, Result()).WithDelay(TimeSpan.FromSeconds(2)));
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        var watch = Stopwatch.StartNew();

        await Assert.CatchAsync<OperationCanceledException>(() => session.ExecuteAsync("sleep 100", cancellationToken: cts.Token));

        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromMilliseconds(1500)), "well before the 2 s answer");
        Assert.That(counter.Count, Is.EqualTo(2), "1 attach + 1 command attempt: a cancelled call is not retried");
    }

    [Test]
    public async Task AlreadyCancelledToken_SendsNothing()
    {
        using var client = CreateClient();
        var session = await AttachAsync(client);

        await Assert.CatchAsync<OperationCanceledException>(() => session.ExecuteAsync("true", cancellationToken: new CancellationToken(true)));

        Assert.That(Requests("POST", CommandsPath), Is.Empty);
    }
}
