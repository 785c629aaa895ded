using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests;

/// <summary>Code in the sandbox (uid 1000, no groups, no capabilities) cannot touch the supervisor, its socket or its bundle.</summary>
public sealed class SecurityTests : AgentTest
{
    [Test]
    public void CommandsCannotReachTheSupervisor()
    {
        var checks = new (string Name, string Script)[]
        {
            ("kill -9 1", "kill -9 1"),
            ("kill -STOP 1", "kill -STOP 1"),
            ("ptrace attach", "python3 -c \"import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); r=libc.ptrace(16, 1, 0, 0); sys.exit(0 if r == 0 else 1)\""),
            ("/proc/1/fd", "ls /proc/1/fd"),
            ("/proc/1/environ", "cat /proc/1/environ"),
            ("/proc/1/mem", "python3 -c \"open('/proc/1/mem', 'rb')\""),
            ("/proc/1/root", "ls /proc/1/root/run/sandboxkit"),
            ("the socket", "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('/run/sandboxkit/agent.sock')\""),
            ("/run/sandboxkit", "ls /run/sandboxkit"),
            ("write the bundle", "echo x > /.sandboxkit/sandboxkit-agent"),
            ("replace the bundle", "mv /.sandboxkit/bin/bash /.sandboxkit/bin/b2"),
            // (without CAP_SYS_RESOURCE anywhere, a command can go back down to the supervisor's 0, never below it)
            ("oom_score_adj below the supervisor's", "echo -1 > /proc/self/oom_score_adj"),
            ("become root", "python3 -c \"import os; os.setuid(0)\""),
        };
        foreach (var (name, script) in checks)
        {
            var result = A.Run(script + " 2>/dev/null");
            Assert.That(result.Code, Is.Not.Zero, $"{name} succeeded: {result.Out}");
        }
        var status = A.Run("grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|NoNewPrivs):' /proc/self/status").Out;
        Assert.That(status, Does.Contain("Uid:\t1000\t1000\t1000\t1000").And.Contain("Gid:\t1000\t1000\t1000\t1000")
            .And.Contain("CapEff:\t0000000000000000").And.Contain("CapPrm:\t0000000000000000").And.Contain("NoNewPrivs:\t1"));
        Assert.That(status, Does.Match(@"Groups:\s*\n"));
        // the supervisor is intact and keeps serving
        Assert.That(Box.Stat(1)?.State, Is.Not.EqualTo('T'));
        Assert.That(File.ReadAllText(Box.InContainer("/proc/1/status")), Does.Contain("Uid:\t0\t0\t0\t0"));
        AssertRan(A.Run("echo alive"));
        A.Ping();
    }

    [Test]
    public void FileOperationsActWithTheUsersPermissions()
    {
        AssertRan(A.Run("ln -s /etc/shadow shadow-link"));
        Assert.That(A.File(FrameType.ReadFile, new FileRequest { Path = "shadow-link" }).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        Assert.That(A.File(FrameType.ReadFile, new FileRequest { Path = "/etc/shadow" }).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "/etc/evil" }, "x"u8.ToArray()).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        Assert.That(A.File(FrameType.ListDirectory, new FileRequest { Path = "/run/sandboxkit" }).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        Assert.That(A.File(FrameType.Delete, new FileRequest { Path = "/.sandboxkit/BUILD" }).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        Assert.That(A.File(FrameType.ReadFile, new FileRequest { Path = "/proc/1/environ" }).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        var made = A.File(FrameType.WriteFile, new FileRequest { Path = "/tmp/mine" }, "x"u8.ToArray());
        Assert.That(made.Error, Is.Null);
        Assert.That(A.Run("stat -c '%u:%g %a' /tmp/mine").Out, Is.EqualTo("1000:1000 644\n"));
        Assert.That(A.File(FrameType.MakeDirectory, new FileRequest { Path = "/tmp/d/e" }).Error, Is.Null);
        Assert.That(A.Run("stat -c '%u:%g' /tmp/d/e").Out, Is.EqualTo("1000:1000\n"));
    }

    [Test]
    public void NoSupervisorFdsAndNoPrivilegesInWarmAndColdShells()
    {
        foreach (var request in new[] { Cmd("ls -l /proc/$$/fd; cat /proc/$$/status"), new RunRequest { Command = "ls -l /proc/$$/fd; cat /proc/$$/status", MergeStderr = true } })
        {
            var result = A.Run(request);
            Assert.That(result.Out, Does.Not.Contain("socket:").And.Not.Contain("anon_inode").And.Not.Contain("sandboxkit-script"));
            Assert.That(result.Out, Does.Contain("CapBnd:\t00000000000000") .Or.Contain("CapEff:\t0000000000000000"));
        }
    }

    [Test]
    public void WorkdirOfAFreshVolumeBelongsToTheUser()
    {
        Assert.That(Syscalls.Owner(Box.Workspace), Is.EqualTo(1000));
        AssertRan(A.Run("touch /workspace/made && test -O /workspace"));
    }
}
