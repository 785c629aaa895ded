using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests;

/// <summary>Jobs: supervisor-owned commands that outlive connections, their rings and the J operations.</summary>
public sealed class JobTests : AgentTest
{
    private Infrastructure.Result StartJob(string id, string command, int? ringBytes = null, string? stdin = null) =>
        A.Run(new RunRequest { Command = command, Detach = true, JobId = id, RingBytes = ringBytes, Stdin = stdin });

    [Test]
    public void JobOutlivesConnectionsAndIsReadAndForgotten()
    {
        var started = StartJob("j1", "echo out; sleep 0.2; echo err >&2; sleep 0.3; echo later; exit 4");
        Assert.That(started.Job?.Job?.Id, Is.EqualTo("j1"), started.ToString());
        Assert.That(started.Job!.Job!.Status, Is.EqualTo("running"));
        var pid = started.Job.Job.Pid;
        A.Dispose(); // jobs are untouched by the end of a connection
        var client = Track(Box.Connect());
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => client.Job(new JobRequest { Op = "get", Id = "j1" }).Job!.Job!.Status == "exited", 10), Is.True);
        var get = client.Job(new JobRequest { Op = "get", Id = "j1" }).Job!.Job!;
        Assert.That((get.Pid, get.Exit!.ExitCode, get.NextOffset, get.FirstOffset), Is.EqualTo((pid, 4, 14L, 0L)));
        var read = client.Job(new JobRequest { Op = "read", Id = "j1", Since = 0 });
        Assert.That((read.Out, read.Err), Is.EqualTo(("out\nlater\n", "err\n")));
        Assert.That((read.Job!.From, read.Job.Next, read.Job.Dropped), Is.EqualTo(((long?)0, (long?)14, (bool?)false)));
        var partial = client.Job(new JobRequest { Op = "read", Id = "j1", Since = 4, Max = 5 });
        Assert.That((partial.Err, partial.Out, partial.Job!.Next), Is.EqualTo(("err\n", "l", (long?)9)));
        var list = client.Job(new JobRequest { Op = "list" }).Job!.Jobs!;
        Assert.That(list.Select(j => j.Id), Is.EqualTo(new[] { "j1" }));
        Assert.That(client.Job(new JobRequest { Op = "forget", Id = "j1" }).Error, Is.Null);
        Assert.That(client.Job(new JobRequest { Op = "get", Id = "j1" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
    }

    [Test]
    public void AttachStreamsLiveOutputUntilTheExitAndKDetaches()
    {
        StartJob("live", "for i in 1 2 3; do echo tick$i; sleep 0.3; done");
        var channel = A.StartJob(new JobRequest { Op = "attach", Id = "live", Since = 0 });
        var result = A.Collect(channel);
        Assert.That(result.Out, Is.EqualTo("tick1\ntick2\ntick3\n"));
        Assert.That(result.Exit!.ExitCode, Is.Zero);

        StartJob("forever", "while :; do echo x; sleep 0.1; done");
        channel = A.StartJob(new JobRequest { Op = "attach", Id = "forever" });
        Assert.That((char)A.Next(channel).Type, Is.EqualTo('o'));
        A.Send(FrameType.Kill, channel);
        var detached = A.Collect(channel);
        Assert.That(detached.Job?.Job?.Status, Is.EqualTo("running")); // K detaches, never kills
        Assert.That(A.Job(new JobRequest { Op = "signal", Id = "forever", Signal = 9 }).Error, Is.Null);
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => A.Job(new JobRequest { Op = "get", Id = "forever" }).Job!.Job!.Status == "exited", 10), Is.True);
        Assert.That(A.Job(new JobRequest { Op = "forget", Id = "live" }).Error, Is.Null);
    }

    [Test]
    public void StdinSignalAndConflicts()
    {
        var started = StartJob("cat", "cat; echo eof", stdin: "pipe");
        Assert.That(started.Job!.Job!.StdinOpen, Is.True);
        Assert.That(A.Job(new JobRequest { Op = "stdin", Id = "cat", Data = Convert.ToBase64String("hello\n"u8.ToArray()) }).Error, Is.Null);
        Assert.That(A.Job(new JobRequest { Op = "stdin", Id = "cat", Data = Convert.ToBase64String("bye\n"u8.ToArray()), Close = true }).Error, Is.Null);
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => A.Job(new JobRequest { Op = "get", Id = "cat" }).Job!.Job!.Status == "exited", 10), Is.True);
        Assert.That(A.Job(new JobRequest { Op = "read", Id = "cat" }).Out, Is.EqualTo("hello\nbye\neof\n"));
        Assert.That(A.Job(new JobRequest { Op = "stdin", Id = "cat", Data = "" }).Error?.Code, Is.EqualTo(ErrorCodes.Conflict));

        StartJob("sleeper", "sleep 100 & sleep 100");
        Assert.That(StartJob("sleeper", "something else").Error?.Code, Is.EqualTo(ErrorCodes.Conflict));
        Assert.That(StartJob("sleeper", "sleep 100 & sleep 100").Job?.Job?.Id, Is.EqualTo("sleeper")); // a retry: runs once
        Assert.That(A.Job(new JobRequest { Op = "forget", Id = "sleeper" }).Error?.Code, Is.EqualTo(ErrorCodes.Conflict));
        var pid = A.Job(new JobRequest { Op = "get", Id = "sleeper" }).Job!.Job!.Pid;
        Assert.That(A.Job(new JobRequest { Op = "signal", Id = "sleeper", Signal = 15 }).Error, Is.Null);
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => Box.SessionMembers(pid).Count == 0, 5), Is.True, "the job's tree was not signalled");
        Assert.That(A.Job(new JobRequest { Op = "get", Id = "nope" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
    }

    [Test]
    public void RingIsBoundedInBytesAndRecordsWithOneByteWrites()
    {
        // 200 000 alternating one-byte writes to stdout and stderr: 200 000 records if nothing coalesced.
        StartJob("tiny", "python3 -c \"import os\nfor i in range(100000):\n os.write(1, b'o'); os.write(2, b'e')\"", ringBytes: 64 * 1024);
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => A.Job(new JobRequest { Op = "get", Id = "tiny" }).Job!.Job!.Status == "exited", 60), Is.True);
        var info = A.Job(new JobRequest { Op = "get", Id = "tiny" }).Job!.Job!;
        Assert.That(info.NextOffset, Is.EqualTo(200_000));
        Assert.That(info.NextOffset - info.FirstOffset, Is.LessThanOrEqualTo(64 * 1024));
        var read = A.Job(new JobRequest { Op = "read", Id = "tiny", Since = 0 });
        Assert.That(read.Job!.Dropped, Is.True);
        Assert.That(read.Job.From, Is.EqualTo(info.FirstOffset));
        // at most 4096 records (a read sends one frame per record, and streams alternate, so nothing coalesces across them)
        Assert.That(read.Frames.Count(f => f.Type is FrameType.Stdout or FrameType.Stderr), Is.LessThanOrEqualTo(4096));
        Assert.That(read.Stdout.Length + read.Stderr.Length, Is.EqualTo(info.NextOffset - info.FirstOffset));
        // coalescing: one stream's one-byte writes fill records of up to 64 KiB, so the whole ring is used
        StartJob("mono", "python3 -c \"import os\nfor i in range(100000):\n os.write(1, b'o')\"", ringBytes: 64 * 1024);
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => A.Job(new JobRequest { Op = "get", Id = "mono" }).Job!.Job!.Status == "exited", 60), Is.True);
        var mono = A.Job(new JobRequest { Op = "read", Id = "mono", Since = 0 });
        Assert.That(mono.Stdout.Length, Is.EqualTo(64 * 1024));
        Assert.That(Box.SupervisorPrivateDirtyKb(), Is.LessThan(64 * 1024), "supervisor memory");
    }

    [Test]
    public void AttachReportsDroppedOutputWhenCreditRanOut()
    {
        StartJob("flood", "for i in $(seq 1 40); do head -c 10000 /dev/zero; sleep 0.01; done; echo end", ringBytes: 32 * 1024);
        var client = Track(Box.Connect(window: 4096));
        var channel = client.NewChannel();
        client.ManualCredit(channel);
        client.SendJson(FrameType.Job, channel, new JobRequest { Op = "attach", Id = "flood", Since = 0 });
        var first = client.Next(channel);
        var droppedEarly = first.Type == FrameType.Dropped; // the ring may have dropped the start already
        while (first.Type != FrameType.Stdout)
        {
            first = client.Next(channel);
        }
        Thread.Sleep(1500); // no credit while the job writes 400 KB into a 32 KiB ring
        client.Grant(channel, 16 << 20);
        var rest = client.Collect(channel);
        Assert.That(rest.Dropped, Is.Not.Empty, $"dropped before the first output: {droppedEarly}");
        Assert.That(rest.Dropped[0].Bytes, Is.Positive);
        Assert.That(rest.Out, Does.EndWith("end\n"));
        Assert.That(rest.Exit, Is.Not.Null);
    }
}
