using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>
/// The engine going away and coming back, simulated with a Unix-socket relay in front of the real engine that the
/// test can cut: the server answers 503 meanwhile, stays up, and works again without a restart.
/// </summary>
[TestFixture]
public sealed class EngineFailureTests
{
    [Test]
    public async Task An_unreachable_engine_gives_503_problems_and_the_server_recovers_when_it_returns()
    {
        var socketPath = Path.Combine(Path.GetTempPath(), $"sk-relay-{Guid.NewGuid():N}.sock");
        var relay = EngineRelay.Start(socketPath);
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:DockerEndpoint"] = "unix://" + socketPath });
        try
        {
            var before = await host.CreateSessionAsync();
            relay.Dispose();

            var create = await host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
            Assert.That(create.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            var problem = await ServerHost.ProblemAsync(create);
            Assert.That(problem.GetProperty("code").GetString(), Is.EqualTo("engine_unavailable"));
            Assert.That(create.Headers.RetryAfter, Is.Not.Null);
            Assert.That((await host.Http.GetAsync("/healthz")).StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));

            // The session's supervisor is reached directly, not through the engine: it keeps working meanwhile.
            Assert.That((await host.ExecuteAsync(before.Id, "echo meanwhile")).Stdout, Is.EqualTo("meanwhile\n"));

            relay = EngineRelay.Start(socketPath);
            Assert.That((await host.ExecuteAsync(before.Id, "echo again")).Stdout, Is.EqualTo("again\n"));
            Assert.That(await HealthyWithinAsync(host, TimeSpan.FromSeconds(10)), Is.True, "health is probed at most every 2 s");
            var after = await host.CreateSessionAsync();
            Assert.That((await host.ExecuteAsync(after.Id, "echo back")).Stdout, Is.EqualTo("back\n"));
            await host.DeleteSessionAsync(after.Id);
            await host.DeleteSessionAsync(before.Id);
        }
        finally
        {
            relay.Dispose();
            File.Delete(socketPath);
        }
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }

    [Test]
    public async Task A_server_started_without_its_engine_stays_up_answers_503_and_works_once_the_engine_comes()
    {
        var socketPath = Path.Combine(Path.GetTempPath(), $"sk-relay-{Guid.NewGuid():N}.sock");
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:DockerEndpoint"] = "unix://" + socketPath,
            ["Sandbox:ReaperIntervalSeconds"] = "0.5",
        });
        EngineRelay? relay = null;
        try
        {
            Assert.That((await host.Http.GetAsync("/healthz")).StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            var create = await host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
            Assert.That(create.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            Assert.That((await ServerHost.ProblemAsync(create)).GetProperty("code").GetString(), Is.EqualTo("engine_unavailable"));

            relay = EngineRelay.Start(socketPath);
            Assert.That(await HealthyWithinAsync(host, TimeSpan.FromSeconds(10)), Is.True);
            var session = await host.CreateSessionAsync();
            Assert.That((await host.ExecuteAsync(session.Id, "echo late")).Stdout, Is.EqualTo("late\n"));
            await host.DeleteSessionAsync(session.Id);
        }
        finally
        {
            relay?.Dispose();
            File.Delete(socketPath);
        }
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }

    private static async Task<bool> HealthyWithinAsync(ServerHost host, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while ((await host.Http.GetAsync("/healthz")).StatusCode != HttpStatusCode.OK)
        {
            if (DateTime.UtcNow > deadline)
            {
                return false;
            }
            await Task.Delay(250);
        }
        return true;
    }

    /// <summary>Relays connections from a Unix socket to the real engine's socket; disposing cuts them all.</summary>
    private sealed class EngineRelay : IDisposable
    {
        private readonly Socket _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly List<Socket> _open = [];

        private EngineRelay(string path)
        {
            File.Delete(path);
            _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            _listener.Bind(new UnixDomainSocketEndPoint(path));
            _listener.Listen(64);
            _ = AcceptLoopAsync();
        }

        public static EngineRelay Start(string path) => new(path);

        private async Task AcceptLoopAsync()
        {
            try
            {
                while (!_stop.IsCancellationRequested)
                {
                    var client = await _listener.AcceptAsync(_stop.Token);
                    var engine = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await engine.ConnectAsync(new UnixDomainSocketEndPoint("/var/run/docker.sock"));
                    lock (_open)
                    {
                        _open.Add(client);
                        _open.Add(engine);
                    }
                    _ = PumpAsync(client, engine);
                    _ = PumpAsync(engine, client);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
        }

        private async Task PumpAsync(Socket from, Socket to)
        {
            var buffer = new byte[64 * 1024];
            try
            {
                int read;
                while ((read = await from.ReceiveAsync(buffer, _stop.Token)) > 0)
                {
                    await to.SendAsync(buffer.AsMemory(0, read), _stop.Token);
                }
                to.Shutdown(SocketShutdown.Send);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Dispose();
            lock (_open)
            {
                foreach (var s in _open)
                {
                    s.Dispose();
                }
                _open.Clear();
            }
        }
    }
}
