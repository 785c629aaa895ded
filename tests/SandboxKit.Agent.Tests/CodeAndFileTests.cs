using System.Security.Cryptography;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests;

/// <summary>test_agent.py CodeTests: code runs with python, node and bash.</summary>
public sealed class CodeTests : AgentTest
{
    [Test]
    public void PythonCode()
    {
        var result = A.Run(new RunRequest
        {
            Code = "import os, sys\nprint(os.getcwd())\nprint(__file__)\nprint(sys.stdin.read())\nprint(oct(os.stat(__file__).st_mode & 0o777), os.stat(__file__).st_uid)",
            Language = "python",
            StdinText = "in",
        });
        AssertRan(result);
        var lines = result.Out.Split('\n');
        Assert.That((lines[0], lines[2]), Is.EqualTo((Workdir, "in")));
        Assert.That(lines[1], Does.EndWith(".py").And.StartWith("/tmp/.sandboxkit-1000/"));
        Assert.That(lines[3], Is.EqualTo("0o600 1000")); // written as the user, private
        Assert.That(File.Exists(Box.InContainer(lines[1])), Is.False, "code file not deleted");
    }

    [Test]
    public void BashCode()
    {
        var result = A.Run(new RunRequest { Code = "echo \"$0\" ${BASH_VERSION%%.*}; exit 4", Language = "bash" });
        AssertRan(result, 4);
        var parts = result.Out.Split(' ', StringSplitOptions.TrimEntries);
        Assert.That(parts[0], Does.EndWith(".sh"));
        Assert.That(int.Parse(parts[1]), Is.GreaterThanOrEqualTo(4));
        Assert.That(File.Exists(Box.InContainer(parts[0])), Is.False);
    }

    [Test]
    public void NodeCode()
    {
        var result = A.Run(new RunRequest { Code = "console.log(1 + 1); console.error('e')", Language = "node" });
        Assert.That((result.Out, result.Err), Is.EqualTo(("2\n", "e\n")));
    }

    [Test]
    public void LanguageNotOnThePathIsNotInstalled()
    {
        AssertRan(A.Run("export PATH=/nowhere"));
        Assert.That(A.Run(new RunRequest { Code = "print(1)", Language = "python" }).Error?.Code, Is.EqualTo(ErrorCodes.NotInstalled));
        Assert.That(A.Run(new RunRequest { Code = "1", Language = "node" }).Error?.Code, Is.EqualTo(ErrorCodes.NotInstalled));
        AssertRan(A.Run(new RunRequest { Code = "echo fine", Language = "bash" })); // the bundle brings bash
    }
}

/// <summary>test_agent.py FileTests: W G L D M T as the user.</summary>
public sealed class FileTests : AgentTest
{
    [Test]
    public void WriteReadBinaryRoundTrip()
    {
        byte[] data = [.. RandomNumberGenerator.GetBytes(300_000), 0, 0xff];
        var result = A.File(FrameType.WriteFile, new FileRequest { Path = "deep/dir/f.bin" }, data);
        Assert.That(result.File?.Size, Is.EqualTo(data.Length), result.ToString());
        var host = Box.Host("deep/dir/f.bin");
        Assert.That(File.ReadAllBytes(host), Is.EqualTo(data));
        Assert.That((int)File.GetUnixFileMode(host) & 0x1FF, Is.EqualTo(Convert.ToInt32("644", 8)));
        Assert.That(Syscalls.Owner(host), Is.EqualTo(1000)); // made by the user
        result = A.File(FrameType.ReadFile, new FileRequest { Path = $"{Workdir}/deep/dir/f.bin" });
        Assert.That(result.Stdout, Is.EqualTo(data));
        Assert.That(result.File?.Size, Is.EqualTo(data.Length));
        Assert.That(result.Frames.Where(f => f.Type == FrameType.Stdout).Max(f => f.Payload.Length), Is.LessThanOrEqualTo(65536));
    }

    [Test]
    public void WriteModeAppendAndRelativeToSessionCwd()
    {
        AssertRan(A.Run("mkdir sub && cd sub"));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "x.sh", Mode = Convert.ToInt32("700", 8) }, "one\n"u8.ToArray()).File?.Size, Is.EqualTo(4));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "x.sh", Append = true }, "two\n"u8.ToArray()).File?.Size, Is.EqualTo(8));
        var path = Box.Host("sub/x.sh");
        Assert.That(File.ReadAllText(path), Is.EqualTo("one\ntwo\n"));
        Assert.That((int)File.GetUnixFileMode(path) & 0x1FF, Is.EqualTo(Convert.ToInt32("700", 8)));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "empty" }, []).File?.Size, Is.Zero);
    }

    [Test]
    public void WriteErrors()
    {
        AssertRan(A.Run("mkdir adir"));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "adir" }, "x"u8.ToArray()).Error?.Code, Is.EqualTo(ErrorCodes.IsDirectory));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "nodir/f", Parents = false }, "x"u8.ToArray()).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "big", MaxBytes = 10 }, new byte[11]).Error?.Code, Is.EqualTo(ErrorCodes.TooLarge));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "/etc/passwd" }, "x"u8.ToArray()).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        Assert.That(Directory.GetFiles(Box.Workspace), Is.Empty); // nothing left behind
    }

    [Test]
    public void WriteIsAtomicAndKillDiscards()
    {
        Box.WriteUserFile("atomic.txt", "old");
        var channel = A.NewChannel();
        A.SendJson(FrameType.WriteFile, channel, new FileRequest { Path = "atomic.txt" });
        A.Send(FrameType.Data, channel, "new partial data"u8);
        A.Ping(); // the supervisor has seen the frames above
        Assert.That(File.ReadAllText(Box.Host("atomic.txt")), Is.EqualTo("old"));
        A.SendJson(FrameType.Kill, channel, new KillRequest { Signal = 9 });
        Assert.That(A.Collect(channel).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
        Assert.That(File.ReadAllText(Box.Host("atomic.txt")), Is.EqualTo("old"));
        Assert.That(Directory.GetFileSystemEntries(Box.Workspace).Select(Path.GetFileName), Is.EqualTo(new[] { "atomic.txt" })); // no temp left
        channel = A.NewChannel(); // a new file killed mid-write never appears
        A.SendJson(FrameType.WriteFile, channel, new FileRequest { Path = "fresh.txt" });
        A.Send(FrameType.Data, channel, "partial"u8);
        A.Send(FrameType.Kill, channel, "{}"u8);
        Assert.That((char)A.Collect(channel).Frames[^1].Type, Is.EqualTo('r'));
        Assert.That(Directory.GetFileSystemEntries(Box.Workspace).Select(Path.GetFileName), Is.EqualTo(new[] { "atomic.txt" }));
    }

    [Test]
    public void ConnectionEndDiscardsAnUpload()
    {
        var other = Box.Connect();
        var channel = other.NewChannel();
        other.SendJson(FrameType.WriteFile, channel, new FileRequest { Path = "dropped.txt" });
        other.Send(FrameType.Data, channel, "partial"u8);
        other.Ping();
        other.Dispose(); // (this also replaced A's connection; reconnect)
        var client = Box.Connect();
        Assert.That(Infrastructure.Sandbox.WaitUntil(() => Directory.GetFileSystemEntries(Box.Workspace).Length == 0, 5), Is.True,
            string.Join(",", Directory.GetFileSystemEntries(Box.Workspace)));
        AssertRan(client.Run("true"));
        client.Dispose();
    }

    [Test]
    public void ListStatMkdirDelete()
    {
        AssertRan(A.Run("mkdir d && printf 12345 > f && ln -s f link && mkfifo fifo"));
        var entries = A.File(FrameType.ListDirectory, new FileRequest { Path = "." }).File!.Entries!.ToDictionary(e => e.Name);
        Assert.That(entries.ToDictionary(e => e.Key, e => e.Value.Type), Is.EqualTo(new Dictionary<string, string> { ["d"] = "dir", ["f"] = "file", ["link"] = "symlink", ["fifo"] = "other" }));
        Assert.That(entries.Keys, Is.Ordered);
        Assert.That(entries["f"].Size, Is.EqualTo(5));
        Assert.That(entries["f"].Mtime, Is.GreaterThan(1e9));
        var st = A.File(FrameType.Stat, new FileRequest { Path = $"{Workdir}/f" }).File!;
        Assert.That((st.Type, st.Size, st.Mode), Is.EqualTo(("file", (long?)5, (int?)((int)File.GetUnixFileMode(Box.Host("f")) & 0xFFF))));
        var link = A.File(FrameType.Stat, new FileRequest { Path = "link" }).File!;
        Assert.That((link.Type, link.Target), Is.EqualTo(("symlink", "f")));
        Assert.That(A.File(FrameType.Stat, new FileRequest { Path = "d" }).File!.Type, Is.EqualTo("dir"));
        Assert.That(A.File(FrameType.MakeDirectory, new FileRequest { Path = "m/n/o" }).Error, Is.Null);
        Assert.That(Directory.Exists(Box.Host("m/n/o")), Is.True);
        Assert.That(A.File(FrameType.MakeDirectory, new FileRequest { Path = "m", Parents = false }).Error?.Code, Is.EqualTo(ErrorCodes.Exists));
        Assert.That(A.File(FrameType.MakeDirectory, new FileRequest { Path = "x/y", Parents = false }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = "m" }).Error?.Code, Is.EqualTo(ErrorCodes.NotEmpty));
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = "m", Recursive = true }).Error, Is.Null);
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = "f" }).Error, Is.Null);
        Assert.That(Directory.Exists(Box.Host("m")) || File.Exists(Box.Host("f")), Is.False);
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = "link" }).Error, Is.Null); // dangling symlink removed
        Assert.That(A.File(FrameType.ReadFile, new FileRequest { Path = "fifo" }).Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
    }

    [Test]
    public void RecursiveDeleteNeverFollowsSymlinks()
    {
        AssertRan(A.Run("mkdir -p keep/inner tree/a/b/c && touch keep/inner/precious && ln -s ../../keep tree/a/link && ln -s /workspace/keep tree/a/b/c/abs && touch tree/a/b/c/x"));
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = "tree", Recursive = true }).Error, Is.Null);
        Assert.That(Directory.Exists(Box.Host("tree")), Is.False);
        Assert.That(File.Exists(Box.Host("keep/inner/precious")), Is.True);
    }

    [Test]
    public void NotFoundAndTypeErrors()
    {
        foreach (var type in new[] { FrameType.ReadFile, FrameType.Stat, FrameType.ListDirectory, FrameType.Delete })
        {
            Assert.That(A.File(type, new FileRequest { Path = "/no/such/path" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound), ((char)type).ToString());
        }
        AssertRan(A.Run("mkdir d && touch f"));
        Assert.That(A.File(FrameType.ReadFile, new FileRequest { Path = "d" }).Error?.Code, Is.EqualTo(ErrorCodes.IsDirectory));
        Assert.That(A.File(FrameType.ListDirectory, new FileRequest { Path = "f" }).Error?.Code, Is.EqualTo(ErrorCodes.NotDirectory));
    }

    [Test]
    public void ListingStopsAt10000Entries()
    {
        AssertRan(A.Run("mkdir /tmp/many && cd /tmp/many && for i in $(seq 1 10050); do : > f$i; done", timeoutMs: 60_000));
        var result = A.File(FrameType.ListDirectory, new FileRequest { Path = "/tmp/many" });
        Assert.That(result.File!.Entries, Has.Count.EqualTo(10_000));
        Assert.That(result.File.Truncated, Is.True);
    }

    [Test]
    public void ReadFollowsCreditAndKillCancels()
    {
        AssertRan(A.Run("head -c 3000000 /dev/urandom > big"));
        var channel = A.NewChannel();
        A.ManualCredit(channel);
        A.SendJson(FrameType.ReadFile, channel, new FileRequest { Path = "big" });
        long received = 0;
        while (received < A.Window)
        {
            var frame = A.Next(channel);
            Assert.That((char)frame.Type, Is.EqualTo('o'));
            received += frame.Payload.Length;
        }
        Assert.That(received, Is.EqualTo(A.Window)); // exactly the window, then nothing until credit
        Assert.That(A.TryNext(channel, TimeSpan.FromMilliseconds(300), out _), Is.False);
        A.Send(FrameType.Kill, channel);
        var result = A.Collect(channel);
        Assert.That(result.Error?.Code, Is.EqualTo(ErrorCodes.Invalid));
    }
}
