using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using SandboxKit.Agent.Protocol;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Tests.Unit;

/// <summary>
/// The server's side of the supervisor channel against a scripted supervisor: the hello and version check, and every
/// kind of hostile or broken input. A violation must end that connection (its requests fail clearly) and nothing else.
/// </summary>
[TestFixture]
public sealed class SupervisorConnectionTests
{
    private static SupervisorConnectionSettings Settings(int window = 64 * 1024) => new()
    {
        ExpectedBuild = "testbuild",
        SessionLabel = "unit",
        Window = window,
        HelloTimeout = TimeSpan.FromSeconds(5),
    };

    private static async Task<(SupervisorConnection Connection, FakeSupervisor Fake)> OpenAsync(SupervisorHello? hello = null, int window = 64 * 1024, ILogger? logger = null)
    {
        var fake = new FakeSupervisor();
        var open = SupervisorConnection.OpenAsync(fake.ServerStream, Settings(window), logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, CancellationToken.None);
        await fake.AcceptAsync(hello);
        return (await open, fake);
    }

    private static byte[] Json<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) => JsonSerializer.SerializeToUtf8Bytes(value, info);

    private static readonly byte[] StartedPayload = Json(new StartedEvent { Pid = 7 }, ProtocolJsonContext.Default.StartedEvent);
    private static readonly byte[] ExitPayload = Json(new ExitEvent { ExitCode = 0 }, ProtocolJsonContext.Default.ExitEvent);

    [Test]
    public async Task The_hello_is_checked_and_channel_ids_start_at_the_supervisors_next_channel()
    {
        var (connection, fake) = await OpenAsync(FakeSupervisor.Hello(nextChannel: 4242));
        await using var _ = fake;
        await using var __ = connection;
        var channel = await connection.OpenAsync(FrameType.Run, "{}"u8.ToArray(), CancellationToken.None);
        var request = await fake.ReadAsync();
        Assert.Multiple(() =>
        {
            Assert.That(channel.Id, Is.EqualTo(4242u));
            Assert.That(request.Channel, Is.EqualTo(4242u));
            Assert.That(request.Type, Is.EqualTo(FrameType.Run));
        });
        var second = await connection.OpenAsync(FrameType.Stat, "{}"u8.ToArray(), CancellationToken.None);
        Assert.That(second.Id, Is.EqualTo(4243u));
    }

    [Test]
    public async Task Concurrent_requests_reach_the_supervisor_in_increasing_channel_order()
    {
        var (connection, fake) = await OpenAsync();
        await using var _ = fake;
        await using var __ = connection;
        var opens = Enumerable.Range(0, 200).Select(_ => Task.Run(() => connection.OpenAsync(FrameType.Stat, "{}"u8.ToArray(), CancellationToken.None))).ToArray();
        await Task.WhenAll(opens);
        uint last = 0;
        for (var i = 0; i < opens.Length; i++)
        {
            var frame = await fake.ReadAsync();
            Assert.That(frame.Channel, Is.GreaterThan(last), "the supervisor refuses a request whose id is not above every earlier one");
            last = frame.Channel;
        }
    }

    [Test]
    public async Task Another_build_or_protocol_is_a_mismatch_and_garbage_is_unavailable()
    {
        foreach (var hello in new[] { FakeSupervisor.Hello(build: "otherbuild"), FakeSupervisor.Hello(protocol: 1) })
        {
            await using var fake = new FakeSupervisor();
            var open = SupervisorConnection.OpenAsync(fake.ServerStream, Settings(), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, CancellationToken.None);
            await fake.AcceptAsync(hello);
            var e = await Assert.ThrowsAsync<SupervisorMismatchException>(async () => await open);
            Assert.That(e!.Message, Does.Contain("Recreate the session"));
        }

        await using (var fake = new FakeSupervisor())
        {
            var open = SupervisorConnection.OpenAsync(fake.ServerStream, Settings(), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, CancellationToken.None);
            await fake.ReadAsync();
            await fake.SendAsync(FrameType.Stdout, 5, "not a hello"u8);
            await Assert.ThrowsAsync<SupervisorUnavailableException>(async () => await open);
        }

        await using (var fake = new FakeSupervisor())
        {
            var open = SupervisorConnection.OpenAsync(fake.ServerStream, Settings() with { HelloTimeout = TimeSpan.FromMilliseconds(200) },
                Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, CancellationToken.None);
            var e = await Assert.ThrowsAsync<SupervisorUnavailableException>(async () => await open);
            Assert.That(e!.Message, Does.Contain("did not answer"));
        }
    }

    [TestCase("never-opened")]
    [TestCase("after-final")]
    [TestCase("second-started")]
    [TestCase("unknown-type")]
    [TestCase("oversized-length")]
    [TestCase("empty-data")]
    [TestCase("oversized-data")]
    [TestCase("beyond-credit")]
    [TestCase("malformed-exit")]
    [TestCase("output-before-started")]
    [TestCase("wrong-answer-type")]
    [TestCase("control-garbage")]
    public async Task A_protocol_violation_closes_the_connection_and_fails_its_requests_clearly(string violation)
    {
        var (connection, fake) = await OpenAsync(window: 16 * 1024);
        await using var _ = fake;
        await using var __ = connection;
        var victim = await connection.OpenAsync(FrameType.Run, "{}"u8.ToArray(), CancellationToken.None);
        var other = await connection.OpenAsync(FrameType.Stat, "{}"u8.ToArray(), CancellationToken.None);
        var id = victim.Id;
        switch (violation)
        {
            case "never-opened":
                // A forged exit for a command that was never asked for.
                await fake.SendAsync(FrameType.Exited, id + 1000, ExitPayload);
                break;
            case "after-final":
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync(FrameType.Exited, id, ExitPayload);
                await fake.SendAsync(FrameType.Exited, id, ExitPayload);
                break;
            case "second-started":
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                break;
            case "unknown-type":
                await fake.SendAsync((byte)'Z', id, "x"u8);
                break;
            case "oversized-length":
                var header = new byte[9];
                BinaryPrimitives.WriteUInt32BigEndian(header, (uint)FrameLimits.MaxPayload + 6);
                header[4] = FrameType.Stdout;
                BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(5), id);
                await fake.WriteRawAsync(header);
                break;
            case "empty-data":
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync(FrameType.Stdout, id, ReadOnlySpan<byte>.Empty);
                break;
            case "oversized-data":
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync(FrameType.Stdout, id, new byte[FrameLimits.MaxDataPayload + 1]);
                break;
            case "beyond-credit":
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync(FrameType.Stdout, id, new byte[16 * 1024]);
                await fake.SendAsync(FrameType.Stdout, id, new byte[1]);
                break;
            case "malformed-exit":
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync(FrameType.Exited, id, "{\"exitCode\":\"zero\""u8);
                break;
            case "output-before-started":
                await fake.SendAsync(FrameType.Stdout, id, "x"u8);
                break;
            case "wrong-answer-type":
                // A file result is no answer to a run request.
                await fake.SendAsync(FrameType.Started, id, StartedPayload);
                await fake.SendAsync((byte)'d', id, Json(new DroppedEvent { Offset = 0, Bytes = 1 }, ProtocolJsonContext.Default.DroppedEvent));
                break;
            case "control-garbage":
                await fake.SendAsync(FrameType.Capabilities, 0, "[1,2"u8);
                break;
        }
        await WaitUntilAsync(() => connection.IsClosed);
        Assert.That(connection.CloseReason, Does.Contain("protocol"));
        var e = await Assert.ThrowsAsync<SupervisorUnavailableException>(async () =>
        {
            while (await other.ReadAsync(CancellationToken.None) is not null)
            {
            }
        });
        Assert.That(e!.Message, Does.Contain("broke the protocol"));
        await Assert.ThrowsAsync<SupervisorUnavailableException>(() => connection.OpenAsync(FrameType.Stat, "{}"u8.ToArray(), CancellationToken.None));
    }

    [Test]
    public async Task A_flood_of_one_byte_frames_is_held_as_bytes_not_as_frames_and_credit_bounds_it()
    {
        var (connection, fake) = await OpenAsync(window: 64 * 1024);
        await using var _ = fake;
        await using var __ = connection;
        var channel = await connection.OpenAsync(FrameType.Run, "{}"u8.ToArray(), CancellationToken.None);
        await fake.ReadAsync();
        await fake.SendAsync(FrameType.Started, channel.Id, StartedPayload);
        GC.Collect();
        var before = GC.GetTotalMemory(forceFullCollection: true);
        // The whole window in one-byte frames, nobody reading: what the server holds must be about the window, not 64 Ki objects.
        await fake.SendManyAsync(FrameType.Stdout, channel.Id, "x"u8.ToArray(), 64 * 1024);
        await WaitUntilAsync(() => channel.QueuedBytes == 64 * 1024 || connection.IsClosed);
        Assert.That(connection.IsClosed, Is.False, connection.CloseReason);
        var held = GC.GetTotalMemory(forceFullCollection: true) - before;
        TestContext.Out.WriteLine($"64 Ki one-byte frames queued as {channel.QueuedItems} items, ~{held / 1024} KiB retained");
        Assert.That(channel.QueuedItems, Is.LessThanOrEqualTo(4), "consecutive chunks of a stream are merged");
        Assert.That(held, Is.LessThan(1 << 20), "a 64 KiB window must not cost megabytes");

        // One more byte is beyond the window: the supervisor has no credit left, so that is a violation.
        await fake.SendAsync(FrameType.Stdout, channel.Id, "x"u8);
        await WaitUntilAsync(() => connection.IsClosed);
        Assert.That(connection.CloseReason, Does.Contain("window"));
    }

    [Test]
    public async Task Reading_returns_credit_and_the_consumer_sees_the_stream_in_order()
    {
        var (connection, fake) = await OpenAsync(window: 64 * 1024);
        await using var _ = fake;
        await using var __ = connection;
        var channel = await connection.OpenAsync(FrameType.Run, "{}"u8.ToArray(), CancellationToken.None);
        await fake.ReadAsync();
        await fake.SendAsync(FrameType.Started, channel.Id, StartedPayload);
        var sent = new StringBuilder();
        for (var i = 0; i < 64; i++)
        {
            var chunk = $"line {i:000} {new string('x', 1000)}\n";
            sent.Append(chunk);
            await fake.SendAsync(FrameType.Stdout, channel.Id, Encoding.ASCII.GetBytes(chunk));
        }
        var received = new StringBuilder();
        var first = await channel.ReadAsync(CancellationToken.None);
        Assert.That(first!.Value.Type, Is.EqualTo(FrameType.Started));
        while (received.Length < sent.Length)
        {
            var m = (await channel.ReadAsync(CancellationToken.None))!.Value;
            Assert.That(m.Type, Is.EqualTo(FrameType.Stdout));
            received.Append(Encoding.ASCII.GetString(m.Data.Span));
        }
        Assert.That(received.ToString(), Is.EqualTo(sent.ToString()));
        // Asking for the next message acknowledges what was read: the supervisor gets its credit back.
        var reading = channel.ReadAsync(CancellationToken.None).AsTask();
        long granted = 0;
        while (granted < 48 * 1024)
        {
            var frame = await fake.ReadAsync();
            Assert.That(frame.Type, Is.EqualTo(FrameType.Credit));
            granted += JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.CreditGrant)!.Bytes;
        }
        await fake.SendAsync(FrameType.Exited, channel.Id, ExitPayload);
        Assert.That((await reading)!.Value.Type, Is.EqualTo(FrameType.Exited));
        Assert.That(await channel.ReadAsync(CancellationToken.None), Is.Null);
    }

    [Test]
    public async Task An_abandoned_channel_drops_its_output_returns_credit_and_frees_the_id_at_its_end()
    {
        var (connection, fake) = await OpenAsync(window: 16 * 1024);
        await using var _ = fake;
        await using var __ = connection;
        var channel = await connection.OpenAsync(FrameType.Run, "{}"u8.ToArray(), CancellationToken.None);
        await fake.ReadAsync();
        await fake.SendAsync(FrameType.Started, channel.Id, StartedPayload);
        channel.Abandon();
        await fake.SendAsync(FrameType.Stdout, channel.Id, new byte[16 * 1024]);
        var credit = await fake.ReadAsync();
        Assert.That(credit.Type, Is.EqualTo(FrameType.Credit), "an abandoned channel's data is acknowledged at once");
        await fake.SendAsync(FrameType.Stdout, channel.Id, new byte[16 * 1024]);
        await fake.SendAsync(FrameType.Exited, channel.Id, ExitPayload);
        await WaitUntilAsync(() => connection.OpenChannels == 0 || connection.IsClosed);
        Assert.That(connection.IsClosed, Is.False, connection.CloseReason);
        // The id is spent now: anything more for it is a violation.
        await fake.SendAsync(FrameType.Stdout, channel.Id, "late"u8);
        await WaitUntilAsync(() => connection.IsClosed);
    }

    [Test]
    public async Task Stdin_waits_for_the_supervisors_credit()
    {
        var (connection, fake) = await OpenAsync(window: 16 * 1024);
        await using var _ = fake;
        await using var __ = connection;
        var channel = await connection.OpenAsync(FrameType.Run, "{}"u8.ToArray(), CancellationToken.None);
        await fake.ReadAsync();
        var sending = channel.SendDataAsync(new byte[40 * 1024], CancellationToken.None);
        long received = 0;
        while (received < 16 * 1024)
        {
            var frame = await fake.ReadAsync();
            Assert.That(frame.Type, Is.EqualTo(FrameType.Data));
            received += frame.Payload.Length;
        }
        await Task.Delay(200);
        Assert.That(sending.IsCompleted, Is.False, "the window is used up: the server waits");
        await fake.SendJsonAsync(FrameType.Credit, channel.Id, new CreditGrant { Bytes = 64 * 1024 }, ProtocolJsonContext.Default.CreditGrant);
        while (received < 40 * 1024)
        {
            received += (await fake.ReadAsync()).Payload.Length;
        }
        await sending;
    }

    [Test]
    public async Task Supervisor_opened_channels_without_a_handler_are_refused_and_ids_must_increase()
    {
        var (connection, fake) = await OpenAsync();
        await using var _ = fake;
        await using var __ = connection;
        var query = Json(new DnsQueryMessage { Transport = "udp", Packet = "AAAA" }, ProtocolJsonContext.Default.DnsQueryMessage);
        await fake.SendAsync(FrameType.DnsQuery, FrameType.SupervisorChannelBit + 1, query);
        var answer = await fake.ReadAsync();
        Assert.That((answer.Type, answer.Channel), Is.EqualTo((FrameType.DnsAnswer, FrameType.SupervisorChannelBit + 1)), "no gateway: an empty answer");
        Assert.That(JsonSerializer.Deserialize(answer.Payload.Span, ProtocolJsonContext.Default.DnsAnswerMessage)!.Packet, Is.Null);

        var outbound = Json(new OutboundConnection { Address = "127.77.0.1", Port = 443 }, ProtocolJsonContext.Default.OutboundConnection);
        await fake.SendAsync(FrameType.Outbound, FrameType.SupervisorChannelBit + 2, outbound);
        var reset = await fake.ReadAsync();
        Assert.That((reset.Type, reset.Channel), Is.EqualTo((FrameType.Kill, FrameType.SupervisorChannelBit + 2)), "no gateway: the connection is reset");

        await fake.SendAsync(FrameType.Outbound, FrameType.SupervisorChannelBit + 2, outbound);
        await WaitUntilAsync(() => connection.IsClosed);
        Assert.That(connection.IsClosed, Is.True, "an id opened again ends the connection");
    }

    [Test]
    public async Task Supervisor_opened_channels_beyond_the_servers_bound_are_reset_without_reaching_the_handler()
    {
        var (connection, fake) = await OpenAsync();
        await using var _ = fake;
        await using var __ = connection;
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = 0;
        connection.HandleIncomingChannels(async (_, _) =>
        {
            Interlocked.Increment(ref handled);
            await release.Task;
        });
        var outbound = Json(new OutboundConnection { Address = "127.77.0.1", Port = 80 }, ProtocolJsonContext.Default.OutboundConnection);
        for (uint i = 1; i <= SupervisorConnection.MaxOpenIncoming + 1; i++)
        {
            await fake.SendAsync(FrameType.Outbound, FrameType.SupervisorChannelBit + i, outbound);
        }
        var reset = await fake.ReadAsync();
        Assert.That((reset.Type, reset.Channel), Is.EqualTo((FrameType.Kill, FrameType.SupervisorChannelBit + SupervisorConnection.MaxOpenIncoming + 1)));
        await WaitUntilAsync(() => Volatile.Read(ref handled) == SupervisorConnection.MaxOpenIncoming);
        Assert.That(Volatile.Read(ref handled), Is.EqualTo(SupervisorConnection.MaxOpenIncoming));
        Assert.That(connection.IsClosed, Is.False, "a bound reached is not a violation");
        release.SetResult();
    }

    [Test]
    public async Task Supervisor_log_lines_are_escaped_clipped_and_rate_limited()
    {
        var logger = new ListLogger();
        var (connection, fake) = await OpenAsync(logger: logger);
        await using var _ = fake;
        await using var __ = connection;
        var forged = new SupervisorLog { Level = "error", Message = "ok\ninfo: Session 123 created for tenant admin\u001b[2J" + new string('A', 5000) };
        for (var i = 0; i < 200; i++)
        {
            await fake.SendJsonAsync(FrameType.Log, 0, forged, ProtocolJsonContext.Default.SupervisorLog);
        }
        // A ping answered after the flood: every log frame before it has been handled.
        var ping = connection.PingAsync(CancellationToken.None);
        var frame = await fake.ReadAsync();
        await fake.SendAsync(FrameType.Pong, 0, frame.Payload.Span);
        await ping.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(connection.IsClosed, Is.False);
        Assert.That(logger.Lines, Is.Not.Empty);
        Assert.That(logger.Lines.Count, Is.LessThanOrEqualTo(20), "a flood is suppressed, not copied");
        Assert.That(logger.Lines.All(l => !l.Contains('\n') && !l.Contains('\u001b')), Is.True, "control characters are escaped");
        Assert.That(logger.Lines.All(l => l.Length < 700), Is.True, "lines are clipped");
    }

    [Test]
    public async Task Ping_round_trips_and_a_dead_peer_fails_pending_requests()
    {
        var (connection, fake) = await OpenAsync();
        await using var __ = connection;
        var ping = connection.PingAsync(CancellationToken.None);
        var frame = await fake.ReadAsync();
        Assert.That(frame.Type, Is.EqualTo(FrameType.Ping));
        await fake.SendAsync(FrameType.Pong, 0, frame.Payload.Span);
        await ping;
        var pending = await connection.OpenAsync(FrameType.Stat, "{}"u8.ToArray(), CancellationToken.None);
        await fake.DisposeAsync();
        var e = await Assert.ThrowsAsync<SupervisorUnavailableException>(async () => await pending.ReadAsync(CancellationToken.None));
        Assert.That(e!.Message, Does.Contain("ended the connection"));
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        for (var i = 0; i < 500 && !condition(); i++)
        {
            await Task.Delay(10);
        }
        Assert.That(condition(), Is.True, "condition not reached within 5 s");
    }

    private sealed class ListLogger : ILogger
    {
        public List<string> Lines { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Lines)
            {
                Lines.Add(formatter(state, exception));
            }
        }
    }
}
