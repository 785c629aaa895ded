using System.ComponentModel.DataAnnotations;

namespace SandboxKit.Server;

/// <summary>Server settings, bound from the <c>Sandbox</c> configuration section (e.g. <c>Sandbox__DefaultMemoryBytes</c>).</summary>
public sealed class SandboxOptions
{
    /// <summary>Configuration section name.</summary>
    public const string Section = "Sandbox";

    /// <summary>Docker endpoint; empty means <c>DOCKER_HOST</c>, else <c>unix:///var/run/docker.sock</c>.</summary>
    public string? DockerEndpoint { get; set; }

    /// <summary>Default image; empty means <c>sandboxkit/sandbox:&lt;server version&gt;</c>.</summary>
    public string? Image { get; set; }

    /// <summary>Further images sessions may ask for (the default image is always allowed).</summary>
    public List<string> AllowedImages { get; set; } = [];

    /// <summary>Memory limit of a session that does not ask for one (bytes; swap included).</summary>
    [Range(16L << 20, long.MaxValue)]
    public long DefaultMemoryBytes { get; set; } = 512L << 20;

    /// <summary>Largest memory limit a session may ask for.</summary>
    [Range(16L << 20, long.MaxValue)]
    public long MaxMemoryBytes { get; set; } = 4L << 30;

    /// <summary>CPU limit of a session that does not ask for one (cores).</summary>
    [Range(0.01, 1024)]
    public double DefaultCpus { get; set; } = 0.5;

    /// <summary>Largest CPU limit a session may ask for.</summary>
    [Range(0.01, 1024)]
    public double MaxCpus { get; set; } = 2;

    /// <summary>Process limit of a session that does not ask for one.</summary>
    [Range(16, 1_000_000)]
    public int DefaultPidsLimit { get; set; } = 256;

    /// <summary>Largest process limit a session may ask for.</summary>
    [Range(16, 1_000_000)]
    public int MaxPidsLimit { get; set; } = 4096;

    /// <summary>Idle timeout of a session that does not ask for one (seconds; the seed's one hour).</summary>
    [Range(1, int.MaxValue)]
    public int DefaultIdleTimeoutSeconds { get; set; } = 3600;

    /// <summary>Longest idle timeout a session may ask for.</summary>
    [Range(1, int.MaxValue)]
    public int MaxIdleTimeoutSeconds { get; set; } = 24 * 3600;

    /// <summary>Maximum lifetime of a session that does not ask for one (seconds).</summary>
    [Range(1, int.MaxValue)]
    public int DefaultMaxLifetimeSeconds { get; set; } = 8 * 3600;

    /// <summary>Longest maximum lifetime a session may ask for.</summary>
    [Range(1, int.MaxValue)]
    public int MaxLifetimeSeconds { get; set; } = 7 * 24 * 3600;

    /// <summary>Network modes sessions may ask for besides <c>none</c> (e.g. the name of a Docker network created with <c>--internal</c>).</summary>
    public List<string> AllowedNetworks { get; set; } = [];

    /// <summary>Runtime for sessions that do not choose one; empty means the engine's default (runc). <c>runsc</c> selects gVisor.</summary>
    public string? DefaultRuntime { get; set; }

    /// <summary>Runtimes sessions may choose besides the default.</summary>
    public List<string> AllowedRuntimes { get; set; } = [];

    /// <summary>Size of the <c>/tmp</c> tmpfs (counts against the session's memory).</summary>
    public string TmpSize { get; set; } = "64m";

    /// <summary>Size of the tmpfs at the sandbox user's home.</summary>
    public string HomeSize { get; set; } = "32m";

    /// <summary>Command timeout when a request names none (seconds).</summary>
    [Range(0.001, double.MaxValue)]
    public double DefaultCommandTimeoutSeconds { get; set; } = 120;

    /// <summary>Longest command timeout a request may ask for (seconds).</summary>
    [Range(0.001, double.MaxValue)]
    public double MaxCommandTimeoutSeconds { get; set; } = 3600;

    /// <summary>Bytes kept per output stream of a collected result (head and tail halves).</summary>
    [Range(1024, int.MaxValue)]
    public int OutputCapBytes { get; set; } = 1 << 20;

    /// <summary>Bytes of each terminal's output kept for replay after a reconnect (<c>?since=</c>).</summary>
    [Range(64 * 1024, 16 << 20)]
    public int TerminalReplayBytes { get; set; } = 1 << 20;

    /// <summary>Bytes of each terminal's asciicast recording kept (the oldest part is dropped, with a marker).</summary>
    [Range(64 * 1024, 64 << 20)]
    public int TerminalRecordingBytes { get; set; } = 4 << 20;

    /// <summary>Largest file upload (bytes).</summary>
    [Range(1, long.MaxValue)]
    public long MaxFileBytes { get; set; } = 100L << 20;

    /// <summary>How often the reaper looks for expired sessions (seconds).</summary>
    [Range(0.1, 3600)]
    public double ReaperIntervalSeconds { get; set; } = 5;

    /// <summary>Pre-started containers kept ready for sessions of the default shape (0 turns the pool off).</summary>
    [Range(0, 64)]
    public int WarmPoolSize { get; set; } = 2;

    /// <summary>Path of a user's persistent storage inside the sandbox.</summary>
    public string PersistentStoragePath { get; set; } = "/home/sandbox/persist";

    /// <summary>How long an <c>Idempotency-Key</c> answer is kept for repeats (seconds).</summary>
    [Range(1, 7 * 24 * 3600)]
    public int IdempotencyWindowSeconds { get; set; } = 600;

    /// <summary>Keyed requests kept per tenant (running or answered); the oldest answered ones make room.</summary>
    [Range(1, 1_000_000)]
    public int IdempotencyMaxEntriesPerTenant { get; set; } = 1000;

    /// <summary>Bytes of kept answers per tenant.</summary>
    [Range(1024, long.MaxValue)]
    public long IdempotencyMaxBytesPerTenant { get; set; } = 16L << 20;

    /// <summary>Largest answer kept for replay; a repeat of a larger one runs again (keyed commands are then replayed by the session's supervisor).</summary>
    [Range(0, int.MaxValue)]
    public int IdempotencyMaxReplayBytes { get; set; } = 256 * 1024;

    /// <summary>Label value that marks this server's containers; servers sharing an engine need different values.</summary>
    public string InstanceName { get; set; } = "default";

    /// <summary>The supervisor bundle directory (empty: <c>supervisor/</c> next to the server binary, where the build puts it).</summary>
    public string? SupervisorBundlePath { get; set; }

    /// <summary>How the server reaches supervisors: <c>auto</c> (directly through the container's root on a local engine, else
    /// through <c>docker exec</c>), <c>direct</c> or <c>relay</c>.</summary>
    [RegularExpression("^(auto|direct|relay)$")]
    public string SupervisorTransport { get; set; } = "auto";

    /// <summary>Flow-control window per command and direction (bytes): what a slow reader lets a command get ahead of it.</summary>
    [Range(16 * 1024, 16 << 20)]
    public int SupervisorWindowBytes { get; set; } = 256 * 1024;

    /// <summary>Longest wait for a new container's supervisor to answer (seconds).</summary>
    [Range(1, 600)]
    public double SupervisorConnectTimeoutSeconds { get; set; } = 20;

    /// <summary>While a request is open, seconds of silence from the supervisor after which it is pinged.</summary>
    [Range(0.1, 3600)]
    public double SupervisorKeepaliveSeconds { get; set; } = 10;

    /// <summary>Seconds a keepalive ping may go unanswered before the session is marked unresponsive and its requests fail (503 <c>supervisor_unavailable</c>).</summary>
    [Range(0.1, 3600)]
    public double SupervisorKeepaliveTimeoutSeconds { get; set; } = 20;

    /// <summary>Pre-started shells: 0 off, 1 after each command (default), 2 also when one is taken.</summary>
    [Range(0, 2)]
    public int SupervisorWarmShells { get; set; } = 1;

    /// <summary>The uid commands run as, whether or not the image names it.</summary>
    [Range(1, 65534)]
    public int CommandUid { get; set; } = 1000;

    /// <summary>The gid commands run as.</summary>
    [Range(1, 65534)]
    public int CommandGid { get; set; } = 1000;

    /// <summary>The command user's home (a tmpfs).</summary>
    public string HomePath { get; set; } = "/home/sandbox";

    /// <summary>The most sessions (pre-started pool containers included) this host may hold; more are refused with 503 <c>capacity_exhausted</c>.</summary>
    [Range(1, 100_000)]
    public int MaxSessions { get; set; } = 1000;

    /// <summary>The most memory, summed over the limits of every session and pool container, this host may commit
    /// (bytes); 0: twice the host's physical memory (limits are ceilings, most sessions use far less).</summary>
    [Range(0, long.MaxValue)]
    public long MaxCommittedMemoryBytes { get; set; }

    /// <summary>Bounded disks for workspaces and user storage: <c>auto</c> (when root with a local engine and loop devices),
    /// <c>on</c> (fail start-up without them) or <c>off</c> (plain, unbounded volumes).</summary>
    [RegularExpression("^(auto|on|off)$")]
    public string DiskQuotas { get; set; } = "auto";

    /// <summary>Where the disk images live; empty: <c>/var/lib/sandboxkit/disks/&lt;instance&gt;</c>.</summary>
    public string? DiskDirectory { get; set; }

    /// <summary>Size of a session's <c>/workspace</c> disk when the request names none (bytes).</summary>
    [Range(16L << 20, long.MaxValue)]
    public long DefaultDiskBytes { get; set; } = 1L << 30;

    /// <summary>Largest <c>/workspace</c> disk a session may ask for (bytes).</summary>
    [Range(16L << 20, long.MaxValue)]
    public long MaxDiskBytes { get; set; } = 16L << 30;

    /// <summary>Workspace disks of the default size kept formatted and attached, so cold creates do not wait for mkfs.</summary>
    [Range(0, 64)]
    public int DiskPoolSize { get; set; } = 2;

    /// <summary>Size of each end user's persistent storage disk (bytes).</summary>
    [Range(16L << 20, long.MaxValue)]
    public long UserStorageBytes { get; set; } = 1L << 30;

    /// <summary>Most end users with persistent storage per tenant; a session for one more user is refused (429).</summary>
    [Range(1, 1_000_000)]
    public int MaxUserStoragePerTenant { get; set; } = 100;

    /// <summary>Days after its last use that an end user's storage is deleted (0: kept until deleted).</summary>
    [Range(0, 36500)]
    public double UserStorageRetentionDays { get; set; } = 30;

    /// <summary>The most disk, summed over the sizes of every workspace and user storage disk, this host may commit (bytes);
    /// 0: what the disks' file system has free now plus what they use, less <see cref="MinFreeDiskBytes"/>.</summary>
    [Range(0, long.MaxValue)]
    public long MaxCommittedDiskBytes { get; set; }

    /// <summary>Host disk always kept free beside the session disks (bytes).</summary>
    [Range(0, long.MaxValue)]
    public long MinFreeDiskBytes { get; set; } = 2L << 30;

    /// <summary>Block-IO weight of every session (10-1000; 0: the engine's default), so one session's disk traffic cannot starve
    /// the others. Applied where the kernel honours weights (bfq, or cgroup v2); the start-up log says which.</summary>
    [Range(0, 1000)]
    public int BlockIoWeight { get; set; } = 500;

    /// <summary>Read ceiling per session and device, bytes per second (0: none), on the session's disks and the host disk they share.</summary>
    [Range(0, long.MaxValue)]
    public long DiskReadBytesPerSecond { get; set; } = 256L << 20;

    /// <summary>Write ceiling per session and device, bytes per second (0: none). With cgroup v1 it bounds direct writes; buffered
    /// writes are bounded by the memory limit and the disk size.</summary>
    [Range(0, long.MaxValue)]
    public long DiskWriteBytesPerSecond { get; set; } = 128L << 20;

    /// <summary>Read operations per second per session and device (0: none).</summary>
    [Range(0, long.MaxValue)]
    public long DiskReadIops { get; set; } = 4000;

    /// <summary>Write operations per second per session and device (0: none).</summary>
    [Range(0, long.MaxValue)]
    public long DiskWriteIops { get; set; } = 2000;

    /// <summary>Size of <c>/dev/shm</c> (bytes; a tmpfs, counted against the session's memory).</summary>
    [Range(1L << 20, long.MaxValue)]
    public long ShmSizeBytes { get; set; } = 64L << 20;

    /// <summary>Where the server keeps state that must not be in engine labels (egress policies with their header values), per instance; root-only.
    /// Default <c>/var/lib/sandboxkit/state/&lt;instance&gt;</c>.</summary>
    public string? StateDirectory { get; set; }

    /// <summary>The server's public base URL (e.g. <c>https://sandbox.example.com</c>) for the URLs it hands out; default: the request's scheme and host.</summary>
    public string? PublicBaseUrl { get; set; }

    /// <summary>Longest a preview URL of an exposed port works (seconds).</summary>
    [Range(60, 30 * 86400)]
    public int MaxPreviewSeconds { get; set; } = 86400;

    /// <summary>Longest command text accepted (bytes of UTF-8); longer is a 413.</summary>
    [Range(1024, 900 * 1024)]
    public int MaxCommandBytes { get; set; } = 512 * 1024;
}

/// <summary>Checks of <see cref="SandboxOptions"/> that data annotations cannot express; a bad setting fails start-up.</summary>
internal sealed class SandboxOptionsValidator : Microsoft.Extensions.Options.IValidateOptions<SandboxOptions>
{
    public Microsoft.Extensions.Options.ValidateOptionsResult Validate(string? name, SandboxOptions options)
    {
        var failures = new List<string>();
        foreach (var network in options.AllowedNetworks)
        {
            // The host's network namespace, or another container's, would undo the isolation a session relies on.
            if (network is "host" || network.StartsWith("container:", StringComparison.Ordinal) || network.StartsWith("ns:", StringComparison.Ordinal))
            {
                failures.Add($"Sandbox:AllowedNetworks may not contain '{network}': sessions may only join networks of their own (create one with docker network create --internal).");
            }
            else if (network.Length == 0 || network.Any(c => char.IsWhiteSpace(c) || char.IsControl(c)))
            {
                failures.Add($"Sandbox:AllowedNetworks has an unusable entry '{network}'.");
            }
        }
        if (options.CommandUid == 0 || options.CommandGid == 0)
        {
            failures.Add("Sandbox:CommandUid and CommandGid must not be 0: commands never run as root.");
        }
        return failures.Count == 0
            ? Microsoft.Extensions.Options.ValidateOptionsResult.Success
            : Microsoft.Extensions.Options.ValidateOptionsResult.Fail(failures);
    }
}
