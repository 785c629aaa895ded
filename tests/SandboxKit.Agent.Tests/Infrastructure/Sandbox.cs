using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace SandboxKit.Agent.Tests.Infrastructure;

/// <summary>How a test container is started.</summary>
public sealed record SandboxOptions
{
    public string Image { get; init; } = Docker.Image;
    public int Warm { get; init; } = 1;
    public string? Runtime { get; init; }
    public string? Memory { get; init; }
    public int Uid { get; init; } = 1000;
    public int Gid { get; init; } = 1000;
    public IReadOnlyList<string> ExtraArgs { get; init; } = [];
    public IReadOnlyDictionary<string, string> Env { get; init; } = new Dictionary<string, string>();
}

/// <summary>
/// One session container started exactly as the server starts it (user 0:0, all capabilities dropped but CHOWN
/// SETUID SETGID KILL, no-new-privileges, read-only rootfs, no network, tmpfs /tmp /run/sandboxkit /home/sandbox,
/// the bundle read-only at /.sandboxkit, the supervisor as entrypoint). /workspace is a fresh root-owned host
/// directory (the supervisor chowns it), so tests can look at files from here.
/// </summary>
public sealed class Sandbox : IDisposable
{
    private static readonly string WorkspaceRoot = Path.Combine(Path.GetTempPath(), "sbk-agent-tests");

    private Sandbox(string id, int hostPid, string workspace, SandboxOptions options)
    {
        Id = id;
        HostPid = hostPid;
        Workspace = workspace;
        Options = options;
    }

    public string Id { get; }

    /// <summary>The supervisor's pid on this host (its /proc/PID/root is the container's file system).</summary>
    public int HostPid { get; }

    /// <summary>Host directory mounted at /workspace.</summary>
    public string Workspace { get; }

    public SandboxOptions Options { get; }

    /// <summary>Every client connected to this sandbox (their credit checks are asserted at the end of a test).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<AgentClient> Clients { get; } = new();

    public string SocketPath => $"/proc/{HostPid}/root/run/sandboxkit/agent.sock";

    /// <summary>After the run: the (by then empty) parent of the workspaces.</summary>
    public static void RemoveWorkspaceRoot()
    {
        try
        {
            Directory.Delete(WorkspaceRoot, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public static Sandbox Start(SandboxOptions? options = null)
    {
        options ??= new SandboxOptions();
        Directory.CreateDirectory(WorkspaceRoot);
        var workspace = Path.Combine(WorkspaceRoot, Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(workspace);
        var args = new List<string>
        {
            "run", "-d", "--label", Docker.Label, "--user", "0:0",
            "--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "SETUID", "--cap-add", "SETGID", "--cap-add", "KILL",
            "--security-opt", "no-new-privileges", "--read-only", "--network", "none",
            "--tmpfs", "/tmp:mode=1777", "--tmpfs", "/run/sandboxkit:mode=0700", "--tmpfs", $"/home/sandbox:uid={options.Uid},gid={options.Gid}",
            "-v", $"{workspace}:/workspace", "-v", $"{Docker.BundleDirectory}:/.sandboxkit:ro",
            "--entrypoint", "/.sandboxkit/sandboxkit-agent",
        };
        if (options.Runtime is { } runtime)
        {
            args.AddRange(["--runtime", runtime]);
        }
        if (options.Memory is { } memory)
        {
            args.AddRange(["--memory", memory, "--memory-swap", memory]);
        }
        foreach (var (name, value) in options.Env)
        {
            args.AddRange(["-e", $"{name}={value}"]);
        }
        args.AddRange(options.ExtraArgs);
        args.AddRange([options.Image, "serve", "--uid", options.Uid.ToString(CultureInfo.InvariantCulture), "--gid", options.Gid.ToString(CultureInfo.InvariantCulture),
            "--home", "/home/sandbox", "--workdir", "/workspace", "--socket", "/run/sandboxkit/agent.sock", "--warm", options.Warm.ToString(CultureInfo.InvariantCulture)]);
        var id = Docker.Run(args).Trimmed;
        var pid = int.Parse(Docker.Run("inspect", "-f", "{{.State.Pid}}", id).Trimmed, CultureInfo.InvariantCulture);
        var sandbox = new Sandbox(id, pid, workspace, options);
        if (options.Runtime is null)
        {
            sandbox.WaitForSocket();
        }
        return sandbox;
    }

    private void WaitForSocket()
    {
        var deadline = Stopwatch.StartNew();
        while (!File.Exists(SocketPath))
        {
            if (deadline.Elapsed > TimeSpan.FromSeconds(20))
            {
                throw new TimeoutException($"no socket in {Id[..12]}: {Logs()}");
            }
            Thread.Sleep(10);
        }
    }

    /// <summary>A new connection straight to the socket (runc), after the hello.</summary>
    public AgentClient Connect(int window = 256 * 1024, bool hello = true)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                var client = AgentClient.Open(new UnixTransport(SocketPath), hello ? window : null, this);
                Clients.Enqueue(client);
                return client;
            }
            catch (System.Net.Sockets.SocketException) when (deadline.Elapsed < TimeSpan.FromSeconds(10))
            {
                Thread.Sleep(20); // not there yet
            }
        }
    }

    /// <summary>A new connection through <c>docker exec -i -u 0 C sandboxkit-agent relay</c> (how gVisor is reached).</summary>
    public AgentClient ConnectRelay(int window = 256 * 1024)
    {
        var client = AgentClient.Open(new RelayTransport(Id), window, this);
        Clients.Enqueue(client);
        return client;
    }

    public string Logs() => Docker.Run(["logs", Id], check: false) is var o ? (o.Stdout + o.Stderr).Trim() : "";

    /// <summary>A path inside the container, as seen from this host (root).</summary>
    public string InContainer(string path) => $"/proc/{HostPid}/root{path}";

    /// <summary>A host path under the workspace for a path relative to /workspace.</summary>
    public string Host(string relative) => Path.Combine(Workspace, relative);

    /// <summary>Writes a workspace file owned by the user (as if the user had made it).</summary>
    public void WriteUserFile(string relative, string content)
    {
        var path = Host(relative);
        File.WriteAllText(path, content);
        Chown(path);
    }

    public void MakeUserDirectory(string relative)
    {
        var path = Host(relative);
        Directory.CreateDirectory(path);
        Chown(path);
    }

    private void Chown(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("chown", [$"{Options.Uid}:{Options.Gid}", path]) { UseShellExecute = false })!;
        p.WaitForExit();
    }

    /// <summary>Runs a command in the container as root with docker exec (the bundle's bash).</summary>
    public Docker.Output Exec(string script, string user = "0") =>
        Docker.Run(["exec", "-u", user, Id, "/.sandboxkit/bin/bash", "-c", script], check: false);

    public bool Running => Docker.Run(["inspect", "-f", "{{.State.Running}}", Id], check: false).Trimmed == "true";

    // ---- the container's processes, through its /proc ---------------------------------------------------------

    public sealed record ProcStat(int Pid, char State, int ParentPid, int ProcessGroup, int Session);

    public ProcStat? Stat(int pid)
    {
        try
        {
            var text = File.ReadAllText(InContainer($"/proc/{pid}/stat"));
            var fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
            return new ProcStat(pid, fields[0][0], int.Parse(fields[1], CultureInfo.InvariantCulture), int.Parse(fields[2], CultureInfo.InvariantCulture),
                int.Parse(fields[3], CultureInfo.InvariantCulture));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    public IEnumerable<ProcStat> Processes()
    {
        foreach (var dir in Directory.EnumerateDirectories(InContainer("/proc")))
        {
            if (int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && Stat(pid) is { } stat)
            {
                yield return stat;
            }
        }
    }

    /// <summary>True while the process exists and is not a zombie.</summary>
    public bool Alive(int pid) => Stat(pid) is { State: not 'Z' };

    public bool WaitDead(int pid, double seconds = 5) => WaitUntil(() => !Alive(pid), seconds);

    public List<int> SessionMembers(int sid) => Processes().Where(p => p.Session == sid && p.State != 'Z').Select(p => p.Pid).ToList();

    public List<int> Zombies() => Processes().Where(p => p.State == 'Z').Select(p => p.Pid).ToList();

    public string[] CommandLine(int pid)
    {
        try
        {
            return File.ReadAllText(InContainer($"/proc/{pid}/cmdline")).Split('\0');
        }
        catch (IOException)
        {
            return [];
        }
    }

    public const string WarmMarker = "read -r BASH_EXECUTION_STRING <&";

    /// <summary>Live children of the supervisor spawned as warm shells (idle or running).</summary>
    public List<int> WarmShells() => Processes()
        .Where(p => p.ParentPid == 1 && p.State != 'Z')
        .Where(p => CommandLine(p.Pid) is { Length: > 4 } argv && argv[3] == "-c" && argv[4].Contains(WarmMarker, StringComparison.Ordinal))
        .Select(p => p.Pid).ToList();

    /// <summary>The shell raised its oom_score_adj and sleeps in its blocking read.</summary>
    public bool WarmReady(int pid)
    {
        try
        {
            return Stat(pid) is { State: 'S' } && File.ReadAllText(InContainer($"/proc/{pid}/oom_score_adj")).Trim() == "1000";
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>The single idle warm shell, once it is there, ready, and stays so for a moment.</summary>
    public int WaitWarm(double seconds = 10)
    {
        var deadline = Stopwatch.StartNew();
        int? seen = null;
        while (true)
        {
            var shells = WarmShells();
            if (shells.Count == 1 && WarmReady(shells[0]))
            {
                if (seen == shells[0])
                {
                    return shells[0];
                }
                seen = shells[0];
            }
            else
            {
                seen = null;
            }
            if (deadline.Elapsed.TotalSeconds > seconds)
            {
                throw new AssertionException($"no single ready warm shell: [{string.Join(", ", shells)}]");
            }
            Thread.Sleep(5);
        }
    }

    public static bool WaitUntil(Func<bool> condition, double seconds)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed.TotalSeconds < seconds)
        {
            if (condition())
            {
                return true;
            }
            Thread.Sleep(20);
        }
        return condition();
    }

    /// <summary>The supervisor's Private_Dirty (kB) from /proc/1/smaps_rollup, read as root.</summary>
    public long SupervisorPrivateDirtyKb()
    {
        var text = File.ReadAllText($"/proc/{HostPid}/smaps_rollup");
        var line = text.Split('\n').First(l => l.StartsWith("Private_Dirty:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }

    public void Dispose()
    {
        Docker.Run(["rm", "-f", "-v", Id], check: false);
        try
        {
            Directory.Delete(Workspace, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public static string Utf8(byte[] b) => Encoding.UTF8.GetString(b);
}
