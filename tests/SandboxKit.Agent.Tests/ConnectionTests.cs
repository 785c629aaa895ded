using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>Connections: handshake, channel ids across reconnects, takeover, what a connection's end does.</summary>
public sealed class ConnectionTests : AgentTest
{
    [Test]
    public void NextChannelPersistsAcrossConnectionsAndTheNewestConnectionWins()
    {
        AssertRan(A.Run("true"));
        AssertRan(A.Run("true"));
        var bootId = A.Hello!.BootId;
        var second = Track(Box.Connect());
        Assert.That(A.WaitClosed(), Is.True, "the older connection was not closed by the newer one");
        Assert.Multiple(() =>
        {
            Assert.That(second.Hello!.Connection, Is.EqualTo(2));
            Assert.That(second.Hello.NextChannel, Is.EqualTo(3u));
            Assert.That(second.Hello.BootId, Is.EqualTo(bootId));
        });
        AssertRan(second.Run("true")); // channel 3
        // Reusing an id (1) is a violation: the connection ends, the supervisor stays.
        second.SendJson(FrameType.Run, 1, Cmd("true"));
        Assert.That(second.WaitClosed(), Is.True);
        var third = Track(Box.Connect());
        Assert.That(third.Hello!.NextChannel, Is.EqualTo(4u));
        Assert.That(third.Hello.Connection, Is.EqualTo(3));
        AssertRan(third.Run("echo ok"));
    }

    [Test]
    public void HelloIsRequiredFirstAndProtocolMustBe2()
    {
        var raw = Track(Box.Connect(hello: false));
        raw.SendJson(FrameType.Run, 1, Cmd("true"));
        Assert.That(raw.WaitClosed(), Is.True, "a frame before H must close the connection");
        var old = Track(Box.Connect(hello: false));
        old.SendJson(FrameType.Hello, 0, new ServerHello { Protocol = 1 });
        var reply = old.Next(0);
        Assert.That((char)reply.Type, Is.EqualTo('h'));
        Assert.That(JsonSerializer.Deserialize(reply.Payload.Span, ProtocolJsonContext.Default.SupervisorHello)!.Protocol, Is.EqualTo(2));
        Assert.That(old.WaitClosed(), Is.True, "protocol 1 must end the connection");
        AssertRan(Track(Box.Connect()).Run("true"));
    }

    [Test]
    public void UnkeyedCommandIsKilledOnDisconnectKeyedRunsOnAndReplays()
    {
        var unkeyed = A.Start("sleep 100 & echo $!; sleep 100");
        Assert.That((char)A.Next(unkeyed).Type, Is.EqualTo('s'));
        var background = int.Parse(Encoding.ASCII.GetString(A.Next(unkeyed).Payload.Span));
        var keyed = A.Start(new RunRequest { Command = "echo first; sleep 1; echo second; echo err >&2; exit 3", Key = "k1", Fingerprint = "fp1" });
        var keyedStart = JsonSerializer.Deserialize(A.Next(keyed).Payload.Span, ProtocolJsonContext.Default.StartedEvent)!;
        Assert.That(Encoding.ASCII.GetString(A.Next(keyed).Payload.Span), Is.EqualTo("first\n"));
        A.CloseOutput(); // EOF: the connection ends
        Assert.That(Box.WaitDead(background), Is.True, "the unkeyed command's tree was not killed");
        Assert.That(Box.Alive(keyedStart.Pid), Is.True, "the keyed command must run on");

        var next = Track(Box.Connect());
        // same key, same fingerprint, still running: joined, then the replay
        var joined = next.Run(new RunRequest { Command = "echo first; sleep 1; echo second; echo err >&2; exit 3", Key = "k1", Fingerprint = "fp1" });
        Assert.Multiple(() =>
        {
            Assert.That(joined.Started!.Joined, Is.True);
            Assert.That(joined.Started.Pid, Is.EqualTo(keyedStart.Pid));
            Assert.That(joined.Out, Is.EqualTo("first\nsecond\n"));
            Assert.That(joined.Err, Is.EqualTo("err\n"));
            Assert.That(joined.Exit!.ExitCode, Is.EqualTo(3));
            Assert.That(joined.Exit.Replayed, Is.True);
            Assert.That(joined.Exit.Truncated, Is.False);
            Assert.That(joined.Exit.StdoutBytes, Is.EqualTo(13));
        });
        // after it ended: the same at once, and the command ran once
        var again = next.Run(new RunRequest { Command = "whatever", Key = "k1", Fingerprint = "fp1" });
        Assert.That((again.Out, again.Exit!.Replayed, again.Started!.Joined), Is.EqualTo(("first\nsecond\n", true, true)));
        // another fingerprint: conflict
        Assert.That(next.Run(new RunRequest { Command = "echo x", Key = "k1", Fingerprint = "fp2" }).Error?.Code, Is.EqualTo(ErrorCodes.Conflict));
    }

    [Test]
    public void KeyedReplayKeepsHeadAndTail()
    {
        var result = A.Run(new RunRequest { Command = "seq 1 100000", Key = "big", KeepBytes = 1000 });
        AssertRan(result);
        Assert.That(result.Out, Does.StartWith("1\n2\n3\n").And.EndWith("99999\n100000\n"));
        var replay = A.Run(new RunRequest { Command = "seq 1 100000", Key = "big" });
        Assert.Multiple(() =>
        {
            Assert.That(replay.Exit!.Truncated, Is.True);
            Assert.That(replay.Stdout, Has.Length.EqualTo(1000));
            Assert.That(replay.Out, Does.StartWith("1\n2\n3\n").And.EndWith("99999\n100000\n"));
            Assert.That(replay.Exit.StdoutBytes, Is.EqualTo(result.Stdout.Length));
        });
    }

    [Test]
    public void KeyedResultsExpireAfterTheirTtl()
    {
        var client = Track(Box.Connect(hello: false));
        client.SayHello(256 * 1024, keyTtlMs: 300);
        AssertRan(client.Run(new RunRequest { Command = "echo once", Key = "ttl" }));
        Thread.Sleep(600);
        var second = client.Run(new RunRequest { Command = "echo twice", Key = "ttl" });
        Assert.That((second.Out, second.Started!.Joined), Is.EqualTo(("twice\n", false)));
    }

    [Test]
    public void HostileFramesCloseTheConnectionButTheSupervisorServesTheNext()
    {
        static byte[] Frame(uint length, byte type, uint channel, byte[] payload)
        {
            var bytes = new byte[9 + payload.Length];
            BinaryPrimitives.WriteUInt32BigEndian(bytes, length);
            bytes[4] = type;
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(5), channel);
            payload.CopyTo(bytes, 9);
            return bytes;
        }
        var hostile = new (string Name, Func<AgentClient, byte[]> Build)[]
        {
            ("oversized length", _ => Frame((1 << 20) + 6, (byte)'R', 1, [])),
            ("undersized length", _ => Frame(4, (byte)'P', 0, [])),
            ("unknown type", c => FrameEncoder.Encode((byte)'Z', c.NewChannel(), "{}"u8)),
            ("malformed JSON", c => FrameEncoder.Encode(FrameType.Run, c.NewChannel(), "{not json"u8)),
            ("JSON array", c => FrameEncoder.Encode(FrameType.Run, c.NewChannel(), "[1,2]"u8)),
            ("request on channel 0", _ => FrameEncoder.Encode(FrameType.Run, 0, """{"command":"true"}"""u8)),
            ("second hello", _ => FrameEncoder.Encode(FrameType.Hello, 0, """{"protocol":2}"""u8)),
            ("data for a channel never opened", _ => FrameEncoder.Encode(FrameType.Data, 999_999, "x"u8)),
            ("credit garbage", _ => FrameEncoder.Encode(FrameType.Credit, 1, "{\"bytes\":-5}"u8)),
            ("oversized data frame", _ => FrameEncoder.Encode(FrameType.Data, 1, new byte[65 * 1024])),
            ("ping on a request channel", _ => FrameEncoder.Encode(FrameType.Ping, 5, "x"u8)),
        };
        foreach (var (name, build) in hostile)
        {
            var client = Box.Connect();
            AssertRan(client.Run("true"));
            client.SendRaw(build(client));
            Assert.That(client.WaitClosed(), Is.True, $"{name}: the connection stayed open");
            client.Dispose();
        }
        // data beyond the credit
        // (the pipe takes the first 64 KiB and that credit comes back; then 4 KiB of window, then nothing)
        var greedy = Track(Box.Connect(window: 4096));
        var channel = greedy.Start(new RunRequest { Command = "sleep 5; cat >/dev/null", Stdin = "pipe" });
        var flood = new List<byte>();
        for (var i = 0; i < 40; i++)
        {
            flood.AddRange(FrameEncoder.Encode(FrameType.Data, channel, new byte[4096]));
        }
        greedy.SendRaw([.. flood]);
        Assert.That(greedy.WaitClosed(), Is.True, "data beyond credit");
        Assert.That(Box.Alive(1), Is.True);
        var last = Track(Box.Connect());
        AssertRan(last.Run("echo still here"));
        last.Ping();
    }

    [Test]
    public void ChannelWithoutCreditStallsOnlyItsCommand()
    {
        var stalled = A.NewChannel();
        A.ManualCredit(stalled);
        A.SendJson(FrameType.Run, stalled, new RunRequest { Command = "head -c 3000000 /dev/zero; echo done >&2" });
        long received = 0;
        while (received < A.Window)
        {
            var frame = A.Next(stalled);
            if (frame.Type == FrameType.Stdout)
            {
                received += frame.Payload.Length;
            }
        }
        Assert.That(received, Is.EqualTo(A.Window));
        // the stalled command blocks in write; another command on the same connection answers at once
        var clock = Stopwatch.StartNew();
        AssertRan(A.Run("echo quick"));
        Assert.That(clock.Elapsed.TotalSeconds, Is.LessThan(2));
        Assert.That(A.TryNext(stalled, TimeSpan.FromMilliseconds(300), out var extra) && extra.Type == FrameType.Stdout, Is.False, "output beyond the credit");
        // credit lets it finish
        A.Grant(stalled, 4 << 20);
        var rest = A.Collect(stalled);
        Assert.That(received + rest.Stdout.Length, Is.EqualTo(3_000_000));
        Assert.That(rest.Err, Is.EqualTo("done\n"));
    }

    [Test]
    public void StdinCreditComesBackAsThePipeTakesIt()
    {
        var client = Track(Box.Connect(window: 64 * 1024));
        var channel = client.Start(new RunRequest { Command = "sleep 1; wc -c", Stdin = "pipe" });
        // 64 KiB window + the pipe buffer: the rest waits for credit, which comes once the command reads.
        client.SendData(channel, new byte[64 * 1024]);
        Assert.That(client.InputCredit(channel), Is.LessThanOrEqualTo(64 * 1024));
        var clock = Stopwatch.StartNew();
        client.SendData(channel, new byte[512 * 1024]);
        client.Send(FrameType.Close, channel);
        var result = client.Collect(channel);
        Assert.That(result.Out.Trim(), Is.EqualTo((576 * 1024).ToString()));
        Assert.That(clock.Elapsed.TotalSeconds, Is.GreaterThan(0.5), "the supervisor took more than its credit allowed without the command reading");
    }
}
