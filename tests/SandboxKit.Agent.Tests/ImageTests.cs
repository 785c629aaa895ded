using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

namespace SandboxKit.Agent.Tests;

/// <summary>
/// "Whatever the image": an image with only glibc (no shell, no coreutils, a USER, WORKDIR, ENTRYPOINT and CMD of its
/// own) works with the bundle's bash; an image without glibc makes the supervisor fail at once.
/// </summary>
[NonParallelizable]
public sealed class ImageTests
{
    private const string GlibcOnly = "sandboxkit/test-glibc-only:1";
    private const string NoGlibc = "sandboxkit/test-no-glibc:1";

    [OneTimeSetUp]
    public void MakeImages()
    {
        var lib = "/lib/x86_64-linux-gnu";
        Docker.ImportImage(GlibcOnly, new Dictionary<string, string>
        {
            ["/lib64/ld-linux-x86-64.so.2"] = "/lib64/ld-linux-x86-64.so.2",
            [$"{lib}/libc.so.6"] = $"{lib}/libc.so.6",
            [$"{lib}/libm.so.6"] = $"{lib}/libm.so.6",
            ["/etc/.keep"] = "/etc/hostname",
        }, ["ENTRYPOINT [\"/nonexistent\"]", "USER 4242", "WORKDIR /opt/app", "CMD [\"x\"]"]);
        Docker.ImportImage(NoGlibc, new Dictionary<string, string> { ["/bin/bash-static"] = "/bin/bash-static" }, ["CMD [\"/bin/bash-static\"]"]);
    }

    [Test]
    public void AnImageWithOnlyGlibcRunsCommandsAndFileOperations()
    {
        using var box = Sandbox.Start(new SandboxOptions { Image = GlibcOnly });
        using var a = box.Connect();
        Assert.That(a.Hello!.Capabilities.Bash.Path, Is.EqualTo("/.sandboxkit/bin/bash"));
        var result = a.Run("printf '%s\\n' \"$HOME\" \"$USER\" \"$PWD\"; cd /tmp && export X=1");
        Assert.That(result.Error, Is.Null, result.ToString());
        Assert.That(result.Out, Is.EqualTo("/home/sandbox\nsandbox\n/workspace\n"));
        Assert.That(a.Run("printf '%s %s\\n' \"$PWD\" \"$X\"").Out, Is.EqualTo("/tmp 1\n"));
        Assert.That(a.File(FrameType.WriteFile, new FileRequest { Path = "f.txt" }, "content"u8.ToArray()).File?.Size, Is.EqualTo(7));
        Assert.That(a.Run("echo \"$(</tmp/f.txt)\"").Out, Is.EqualTo("content\n"));
        Assert.That(a.File(FrameType.ReadFile, new FileRequest { Path = "/tmp/f.txt" }).Out, Is.EqualTo("content"));
        Assert.That(a.File(FrameType.ListDirectory, new FileRequest { Path = "/" }).File!.Entries!.Select(e => e.Name), Does.Contain("lib64"));
        // no python: code runs say so; bash code works with the bundle's bash
        Assert.That(a.Run(new RunRequest { Code = "print(1)", Language = "python" }).Error?.Code, Is.EqualTo(ErrorCodes.NotInstalled));
        Assert.That(a.Run(new RunRequest { Code = "echo from bash code", Language = "bash" }).Out, Is.EqualTo("from bash code\n"));
        Assert.That(Sandbox.WaitUntil(() => a.CapabilityFrames.Count > 0 || a.Hello.Capabilities.Probed, 10), Is.True);
        var capabilities = a.CapabilityFrames.TryPeek(out var c) ? c : a.Hello.Capabilities;
        Assert.That((capabilities.Python3, capabilities.Node, capabilities.ImageBash), Is.EqualTo(((ToolInfo?)null, (ToolInfo?)null, (ToolInfo?)null)));
        Assert.That(capabilities.Bash.Version, Does.StartWith("5."));
    }

    [Test]
    public void ContextsOnAnImageWithoutInterpretersAreNotInstalled()
    {
        using var box = Sandbox.Start(new SandboxOptions { Image = GlibcOnly });
        using var a = box.Connect();
        foreach (var language in new[] { "python", "javascript" })
        {
            var created = a.Context(new ContextRequest { Op = "create", Id = language, Language = language });
            Assert.That(created.Error?.Code, Is.EqualTo(ErrorCodes.NotInstalled), created.ToString());
        }
        Assert.That(a.Context(new ContextRequest { Op = "list" }).Context!.Contexts, Is.Empty);
        Assert.That(a.Run("echo still fine").Out, Is.EqualTo("still fine\n"));
    }

    [Test]
    public void TheCaBundleOfAnImageWithoutOneIsTheGatewaysCaAlone()
    {
        using var box = Sandbox.Start(new SandboxOptions { Image = GlibcOnly, ExtraArgs = EgressTests.RelayFlags });
        using var a = box.Connect();
        const string Pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUONLYONLY\n-----END CERTIFICATE-----\n";
        var result = EgressTests.Configure(a, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true, CaPem = Pem } });
        Assert.That(result.Warnings ?? [], Has.None.Contains("CA"));
        Assert.That(a.Run("printf '%s\\n' \"$(</etc/sandboxkit/ca-bundle.pem)\"; echo \"$SSL_CERT_FILE\"").Out, Is.EqualTo(Pem + "/etc/sandboxkit/ca-bundle.pem\n"));
    }

    [Test]
    public void AnImageWithoutGlibcMakesTheSupervisorFailFast()
    {
        var id = Docker.Run(["run", "-d", "--label", Docker.Label, "--user", "0:0", "--cap-drop", "ALL", "--read-only", "--network", "none",
            "-v", $"{Docker.BundleDirectory}:/.sandboxkit:ro", "--entrypoint", "/.sandboxkit/sandboxkit-agent", NoGlibc,
            "serve", "--uid", "1000", "--gid", "1000", "--home", "/tmp", "--workdir", "/tmp", "--socket", "/tmp/s"], check: false);
        try
        {
            var container = id.Trimmed.Length > 0 ? id.Trimmed : null;
            if (container is null)
            {
                Assert.That(id.ExitCode, Is.Not.Zero); // the runtime refused to start it at all
                return;
            }
            Assert.That(Sandbox.WaitUntil(() => Docker.Run(["inspect", "-f", "{{.State.Running}}", container], check: false).Trimmed == "false", 10), Is.True);
            Assert.That(Docker.Run("inspect", "-f", "{{.State.ExitCode}}", container).Trimmed, Is.Not.EqualTo("0"));
        }
        finally
        {
            if (id.Trimmed.Length > 0)
            {
                Docker.Run(["rm", "-f", id.Trimmed], check: false);
            }
        }
    }
}

/// <summary>gVisor (runsc): the socket is internal to the sandbox, so the server goes through the relay.</summary>
public sealed class GvisorTests : AgentTest
{
    protected override SandboxOptions Options => new() { Runtime = "runsc" };

    protected override bool ConnectDirectly => false;

    [Test]
    public void SmokeThroughTheRelay()
    {
        using var a = ConnectRelayWithRetry();
        Assert.That(a.Hello!.Protocol, Is.EqualTo(2));
        Assert.That(a.Hello.Pid, Is.EqualTo(1));
        var echo = a.Run("echo hello; id -u");
        Assert.That(echo.Out, Is.EqualTo("hello\n1000\n"), echo.ToString());
        Assert.That(a.Run("cd /tmp && export G=1").Error, Is.Null);
        Assert.That(a.Run("pwd; echo $G").Out, Is.EqualTo("/tmp\n1\n"));
        Assert.That(a.File(FrameType.WriteFile, new FileRequest { Path = "/tmp/g.txt" }, "gvisor"u8.ToArray()).File?.Size, Is.EqualTo(6));
        Assert.That(a.File(FrameType.ReadFile, new FileRequest { Path = "g.txt" }).Out, Is.EqualTo("gvisor"));
        // (coreutils' statx is refused by this gVisor; python's stat is not)
        Assert.That(a.Run("python3 -c \"import os; print(os.stat('/tmp/g.txt').st_uid)\"").Out, Is.EqualTo("1000\n"));
        Assert.That(a.File(FrameType.ReadFile, new FileRequest { Path = "/etc/shadow" }).Error?.Code, Is.EqualTo(ErrorCodes.PermissionDenied));
        var killed = a.Run("trap '' TERM; sleep 100 & echo $!; sleep 100", timeoutMs: 500);
        Assert.That((killed.Exit!.TimedOut, killed.Exit.Signal), Is.EqualTo((true, (int?)9)));
        var members = a.Run($"ps -o pid= --sid {killed.Pid} 2>/dev/null; kill -0 {killed.Out.Trim()} 2>/dev/null && echo alive || echo gone");
        Assert.That(members.Out.Trim(), Is.EqualTo("gone"));
        Assert.That(a.Run("kill -9 1 2>/dev/null; echo $?").Out, Is.EqualTo("1\n"));
        a.Ping();
    }

    [Test]
    public void ATerminalThroughTheRelay()
    {
        using var a = ConnectRelayWithRetry();
        TerminalTests.StartTerminal(a, "g", cols: 90, rows: 30);
        var shell = TerminalTests.Attach(a, "g");
        Assert.That(shell.Command("stty size", "SIZE"), Does.Contain("30 90"));
        Assert.That(shell.Command("echo \"$TERM $(id -u)\"", "WHO"), Does.Contain("xterm-256color 1000"));
        shell.Type("exit\r");
        Assert.That(shell.WaitExit().ExitCode, Is.Zero);
    }

    [Test]
    public void AConnectionIntoTheSandboxThroughTheRelay()
    {
        using var a = ConnectRelayWithRetry();
        StreamTests.StartServer(a, "echo", StreamTests.EchoServer);
        var channel = StreamTests.Open(a, 9000);
        a.SendData(channel, "under gvisor\n"u8);
        var echoed = StreamTests.Read(a, channel, until: o => o.Bytes.Length >= 13);
        a.Send(FrameType.Close, channel);
        StreamTests.Read(a, channel, echoed);
        Assert.That((echoed.Text, echoed.HalfClosed, echoed.Result?.BytesIn), Is.EqualTo(("under gvisor\nbye\n", true, (long?)13)));
    }

    private AgentClient ConnectRelayWithRetry() => ConnectRelayWithRetry(Box);

    internal static AgentClient ConnectRelayWithRetry(Sandbox box)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                return box.ConnectRelay();
            }
            catch (AssertionException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(200); // the socket may not exist yet
            }
        }
    }
}

/// <summary>The egress relay under gVisor (its flags, the relay transport): routes are not supported there.</summary>
public sealed class GvisorEgressTests : AgentTest
{
    protected override SandboxOptions Options => new() { Runtime = "runsc", ExtraArgs = EgressTests.RelayFlags };

    protected override bool ConnectDirectly => false;

    [Test]
    public void TheRouteIsAWarningAndDnsIsStillRelayed()
    {
        var a = Track(GvisorTests.ConnectRelayWithRetry(Box));
        var gateway = new FakeGateway(a);
        gateway.Names["api.example.test"] = System.Net.IPAddress.Parse("127.77.0.9");
        var result = EgressTests.Configure(a, new ConfigureRequest { Egress = new EgressRelayConfig { Enabled = true, CatchAllDestinations = true } });
        Assert.That((result.EgressEnabled, result.CatchingAllDestinations), Is.EqualTo((true, false)));
        Assert.That(result.Warnings, Has.Some.Contains("gVisor"));
        Assert.That(a.Run("getent ahostsv4 api.example.test | head -n 1").Out, Does.StartWith("127.77.0.9"));
    }
}
