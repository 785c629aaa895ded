using System.Text;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests;

/// <summary>test_agent.py StateTests: the session's cwd and exported variables.</summary>
public sealed class StateTests : AgentTest
{
    [Test]
    public void CdAndExportPersist()
    {
        var tmp = $"{Workdir}/d";
        AssertRan(A.Run("mkdir d"));
        var result = A.Run($"cd {tmp} && export A=1 && B=2");
        Assert.That(result.Exit!.Cwd, Is.EqualTo(tmp));
        Assert.That(A.Run("pwd; echo $A; echo ${B-unset}").Out, Is.EqualTo($"{tmp}\n1\nunset\n"));
        Assert.That(A.Run("cd -").Out, Is.EqualTo($"{Workdir}\n")); // OLDPWD persisted too
        Assert.That(A.Run("unset A; export -n PATH_X; pwd").Out, Is.EqualTo($"{Workdir}\n"));
        Assert.That(A.Run("echo ${A-gone}").Out, Is.EqualTo("gone\n"));
    }

    [Test]
    public void TrickyValuesPersist()
    {
        AssertRan(A.Run("export Q='it'\\''s \"q\" $HOME `x` \\\\' NL=$'a\\nb' BIN=$'\\xff\\x01\\t' " +
            "U=héllo EMPTY=; declare -ax ARR=(1 2); declare -rx RO=ro"));
        var result = A.Run("printf '%s|' \"$Q\" \"$NL\" \"$BIN\" \"$U\" \"${EMPTY-unset}\" \"$RO\"");
        byte[] expected = [.. Encoding.UTF8.GetBytes("it's \"q\" $HOME `x` \\\\|a\nb|"), 0xff, 0x01, (byte)'\t', (byte)'|', .. Encoding.UTF8.GetBytes("héllo||ro|")];
        Assert.That(result.Stdout, Is.EqualTo(expected));
    }

    [Test]
    public void PosixModeAndShellOptionsDoNotBreakState()
    {
        var result = A.Run("set -eux; set -o posix; cd /; export PX='a b'");
        AssertRan(result);
        Assert.That(result.Err, Does.Not.Contain("export -p")); // the trap is not traced
        Assert.That(A.Run("echo \"$PX\"; pwd").Out, Is.EqualTo("a b\n/\n"));
    }

    [Test]
    public void VenvLikePathExport()
    {
        Box.MakeUserDirectory("venv");
        Box.MakeUserDirectory("venv/bin");
        Box.WriteUserFile("venv/bin/mytool", "#!/bin/sh\necho from-venv\n");
        File.SetUnixFileMode(Box.Host("venv/bin/mytool"), (UnixFileMode)Convert.ToInt32("755", 8));
        var venv = $"{Workdir}/venv";
        AssertRan(A.Run($"export VIRTUAL_ENV={venv}; export PATH=\"$VIRTUAL_ENV/bin:$PATH\""));
        Assert.That(A.Run("mytool; echo $VIRTUAL_ENV").Out, Is.EqualTo($"from-venv\n{venv}\n"));
    }

    [Test]
    public void ShlvlStaysStable()
    {
        var first = A.Run("echo $SHLVL").Out;
        Assert.That(A.Run("echo $SHLVL").Out, Is.EqualTo(first));
        Assert.That(A.Run("echo $SHLVL").Out, Is.EqualTo(first));
    }

    [Test]
    public void StateUnchangedWhenKilledOrTrapReplaced()
    {
        Assert.That(A.Run("cd /; export K=1; kill -9 $$").Code, Is.EqualTo(137));
        var result = A.Run("cd /; export T=1; trap 'echo bye' EXIT");
        Assert.That(result.Out, Is.EqualTo("bye\n"));
        Assert.That(A.Run("pwd; echo ${K-unset} ${T-unset}").Out, Is.EqualTo($"{Workdir}\nunset unset\n"));
    }

    [Test]
    public void DeletedCwdFallsBack()
    {
        AssertRan(A.Run("mkdir gone && cd gone"));
        var result = A.Run("rmdir \"$PWD\"");
        AssertRan(result);
        Assert.That(result.Exit!.Cwd, Is.EqualTo(Workdir));
        Assert.That(A.Run("pwd").Out, Is.EqualTo($"{Workdir}\n"));
    }

    [Test]
    public void PrivateCwdOfTheUserIsKept()
    {
        // The supervisor (root without CAP_DAC_OVERRIDE) cannot look into a 0700 directory of the user: it stays the cwd.
        AssertRan(A.Run("mkdir -m 700 private && mkdir -m 700 private/inner && cd private/inner"));
        Assert.That(A.Run("pwd").Out, Is.EqualTo($"{Workdir}/private/inner\n"));
        Assert.That(A.File(FrameType.WriteFile, new FileRequest { Path = "f" }, "x"u8.ToArray()).File?.Size, Is.EqualTo(1));
        // and once it is gone for good, commands start in the workdir again
        AssertRan(A.Run("cd /; rm -r /workspace/private", timeoutMs: 10_000), 0);
        AssertRan(A.Run("cd /workspace/ && mkdir -m 700 p2 && cd p2"));
        AssertRan(A.Run("chmod 000 ../p2"));
        Assert.That(A.Run("pwd").Out, Is.EqualTo($"{Workdir}\n"));
    }

    [Test]
    public void EnvBiggerThanPipeBuffer()
    {
        var result = A.Run("for i in 1 2 3 4; do export BIG$i=$(head -c 30000 /dev/zero | tr '\\0' x); done", timeoutMs: 20_000);
        AssertRan(result);
        Assert.That(A.Run("echo ${#BIG1} ${#BIG4}").Out, Is.EqualTo("30000 30000\n"));
    }

    [Test]
    public void OversizedVariableIsNotPersisted()
    {
        var result = A.Run("export HUGE=$(head -c 200000 /dev/zero | tr '\\0' y); export SMALL=1");
        AssertRan(result);
        Assert.That(A.Run("echo ${HUGE-dropped} $SMALL").Out, Is.EqualTo("dropped 1\n"));
    }

    [Test]
    public void EnvAndCwdOverridesArePerCommand()
    {
        AssertRan(A.Run("mkdir sub; export KEEP=session"));
        var result = A.Run(new RunRequest { Command = "echo $FOO $KEEP; pwd", Env = new Dictionary<string, string> { ["FOO"] = "bar", ["KEEP"] = "override" }, Cwd = "sub" });
        Assert.That(result.Out, Is.EqualTo($"bar override\n{Workdir}/sub\n"));
        Assert.That(result.Exit!.Cwd, Is.EqualTo(Workdir));
        Assert.That(A.Run("echo ${FOO-unset} $KEEP; pwd").Out, Is.EqualTo($"unset session\n{Workdir}\n"));
        Assert.That(A.Run(new RunRequest { Command = "pwd", Cwd = "missing" }).Error?.Code, Is.EqualTo(ErrorCodes.NotFound));
    }

    [Test]
    public void PersistStateFalse()
    {
        AssertRan(A.Run(new RunRequest { Command = "cd /; export NOPE=1", PersistState = false }));
        Assert.That(A.Run("pwd; echo ${NOPE-unset}").Out, Is.EqualTo($"{Workdir}\nunset\n"));
    }

    [Test]
    public void UserBashEnvIsHonoured()
    {
        Assert.That(A.Run("echo ${BASH_ENV-none}").Out, Is.EqualTo("none\n"));
        Box.WriteUserFile("rc.sh", "FROM_RC=yes\n");
        var rc = $"{Workdir}/rc.sh";
        AssertRan(A.Run($"export BASH_ENV={rc}"));
        Assert.That(A.Run("echo $FROM_RC $BASH_ENV").Out, Is.EqualTo($"yes {rc}\n"));
    }

    [Test]
    public void SessionEnvironmentIsTheContainersWithTheUser()
    {
        var result = A.Run("echo $HOME $USER $LOGNAME; echo $PATH; env | grep -c ^SANDBOXKIT_ || true; id -u; id -G");
        Assert.That(result.Out, Is.EqualTo("/home/sandbox sandbox sandbox\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n0\n1000\n1000\n"));
    }

    [Test]
    public void ConcurrentCommandsStartFromTheCurrentStateAndTheLastToFinishDefinesIt()
    {
        AssertRan(A.Run("export BASE=1"));
        var slow = A.Start("sleep 0.6; export SLOW=1");
        var fast = A.Start("export FAST=1");
        AssertRan(A.Collect(fast));
        AssertRan(A.Collect(slow));
        // The slow one started before FAST existed and finished last: its snapshot is the state.
        Assert.That(A.Run("echo ${BASE-} ${FAST-unset} ${SLOW-unset}").Out, Is.EqualTo("1 unset 1\n"));
    }
}
