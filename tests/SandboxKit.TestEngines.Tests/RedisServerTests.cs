using System.Net;
using System.Net.Sockets;

namespace SandboxKit.TestEngines.Tests;

[TestFixture]
public sealed class RedisServerTests
{
    [Test]
    [CancelAfter(300_000)]
    public async Task A_redis_server_answers_on_loopback_without_persistence_and_is_gone_after_dispose()
    {
        var redis = await Timings.MeasureAsync("start redis-server", () => RedisServer.StartAsync(TestSupport.Token));
        var port = redis.Port;
        var pid = redis.ProcessId;
        try
        {
            Assert.That(redis.ConnectionString, Is.EqualTo($"127.0.0.1:{port}"));
            Assert.That(await redis.ExecuteAsync("PING"), Is.EqualTo("PONG"));
            Assert.That(await redis.ExecuteAsync("SET", "greeting", "hello world"), Is.EqualTo("OK"));
            Assert.That(await redis.ExecuteAsync("GET", "greeting"), Is.EqualTo("hello world"));
            Assert.That(await redis.ExecuteAsync("GET", "missing"), Is.Null);
            Assert.That(await redis.ExecuteAsync("CONFIG", "GET", "save"), Is.EqualTo("save\n"));
            Assert.That(await redis.ExecuteAsync("CONFIG", "GET", "appendonly"), Is.EqualTo("appendonly\nno"));
            Assert.That(await redis.ExecuteAsync("CONFIG", "GET", "bind"), Is.EqualTo("bind\n127.0.0.1"));
        }
        finally
        {
            await redis.DisposeAsync();
        }
        Assert.That(TestSupport.ProcessAlive(pid), Is.False);
        using var client = new TcpClient();
        await Assert.ThrowsAsync<SocketException>(async () => await client.ConnectAsync(IPAddress.Loopback, port));
        Assert.That(File.Exists($"/run/sandboxkit-test-engines/leases/redis-{port}.lease"), Is.False);
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task Two_servers_in_parallel_get_their_own_ports()
    {
        var servers = await Task.WhenAll(RedisServer.StartAsync(TestSupport.Token), RedisServer.StartAsync(TestSupport.Token));
        try
        {
            Assert.That(servers[0].Port, Is.Not.EqualTo(servers[1].Port));
            await servers[0].ExecuteAsync("SET", "k", "zero");
            Assert.That(await servers[1].ExecuteAsync("GET", "k"), Is.Null, "separate data");
        }
        finally
        {
            await Task.WhenAll(servers.Select(s => s.DisposeAsync().AsTask()));
        }
    }
}
