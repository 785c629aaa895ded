using System.Security.Cryptography;
using System.Text.RegularExpressions;

// Network namespaces, cgroups, nsenter and dockerd: the harness is Linux-only by nature.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace SandboxKit.TestEngines;

/// <summary>
/// The naming convention every resource of a private engine follows: all of them are derived from one short id
/// (<c>skte</c> + 8 hex digits), so the teardown and the sweep of stale engines need nothing but the id.
/// </summary>
internal sealed partial record EngineNames(string Id)
{
    /// <summary>The prefix of every engine id, network namespace, veth, and cgroup this harness creates.</summary>
    public const string Prefix = "skte";

    /// <summary>Per-run state: leases, subnet slots, sockets, exec roots, logs (short paths: unix sockets live here).</summary>
    public const string StateRoot = "/run/sandboxkit-test-engines";

    /// <summary>Engine data roots and image seeds (whose layers data roots link to).</summary>
    public const string DataBase = "/var/lib/sandboxkit-test-engines";

    /// <summary>Image tars saved from the main engine, keyed by reference and image id, kept across runs.</summary>
    public const string CacheRoot = "/var/cache/sandboxkit-test-engines";

    public static string LeaseDirectory => Path.Combine(StateRoot, "leases");

    public static string SubnetDirectory => Path.Combine(StateRoot, "subnets");

    public static string EnginesDirectory => Path.Combine(DataBase, "engines");

    public static string SeedsDirectory => Path.Combine(DataBase, "seeds");

    public static string ImagesDirectory => Path.Combine(CacheRoot, "images");

    /// <summary>A fresh random id; uniqueness across processes is enforced by the lease, not by luck alone.</summary>
    public static EngineNames CreateNew() => new(Prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));

    public static bool IsEngineId(string candidate) => IdPattern().IsMatch(candidate);

    [GeneratedRegex("^skte[0-9a-f]{8}$")]
    private static partial Regex IdPattern();

    public string RunDirectory => Path.Combine(StateRoot, Id);

    public string ExecRoot => Path.Combine(RunDirectory, "exec");

    public string SocketPath => Path.Combine(RunDirectory, "docker.sock");

    public string PidFile => Path.Combine(RunDirectory, "docker.pid");

    public string ConfigFile => Path.Combine(RunDirectory, "daemon.json");

    public string LogFile => Path.Combine(RunDirectory, "dockerd.log");

    public string ContainerdPidFile => Path.Combine(ExecRoot, "containerd", "containerd.pid");

    public string DataRoot => Path.Combine(EnginesDirectory, Id);

    public string NetworkNamespace => Id;

    public string NetworkNamespacePath => "/run/netns/" + Id;

    /// <summary>Host end of the veth pair (interface names are limited to 15 characters: the id is 12).</summary>
    public string HostVeth => Id + "h";

    /// <summary>Namespace end of the veth pair.</summary>
    public string NamespaceVeth => Id + "n";

    /// <summary>The cgroup (in every hierarchy) that holds the daemon and, as --cgroup-parent, every container.</summary>
    public string Cgroup => Id;

    public string LeaseFile => Path.Combine(LeaseDirectory, Id + ".lease");

    public string WatchdogPidFile => Path.Combine(LeaseDirectory, Id + ".watchdog");

    /// <summary>The arguments of teardown.sh for this engine.</summary>
    public IReadOnlyList<string> TeardownArguments =>
        [Id, DataRoot, RunDirectory, NetworkNamespace, HostVeth, Cgroup, LeaseFile, WatchdogPidFile];
}
