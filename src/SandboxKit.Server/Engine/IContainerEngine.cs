namespace SandboxKit.Server.Engine;

/// <summary>
/// The one seam between sessions and the thing that runs containers. Everything the session layer needs
/// from an engine goes through here, so another engine (several Docker hosts, Kubernetes) can stand behind
/// the same sessions without touching the endpoints.
/// </summary>
internal interface IContainerEngine
{
    /// <summary>Where the engine is, for messages.</summary>
    string Endpoint { get; }

    /// <summary>True when the engine runs on this host and shares its file system and process table (a local Unix socket).</summary>
    bool IsLocal { get; }

    Task<EngineInfo> GetInfoAsync(CancellationToken cancellationToken);

    Task<bool> ImageExistsAsync(string image, CancellationToken cancellationToken);

    /// <summary>Creates and starts a container; on a failed start the container is removed before the error escapes.</summary>
    /// <exception cref="ContainerStartException">The engine created the container but could not start its entrypoint.</exception>
    Task<string> RunContainerAsync(ContainerSpec spec, CancellationToken cancellationToken);

    /// <summary>Creates a container that is never started: a carrier for copying files into volumes.</summary>
    Task<string> CreateCarrierAsync(string name, string image, IReadOnlyDictionary<string, string> labels, IReadOnlyList<VolumeMount> volumes, CancellationToken cancellationToken);

    /// <summary>Extracts a tar stream into <paramref name="path"/> of a (created or running) container, volumes included.</summary>
    Task PutArchiveAsync(string containerId, string path, Stream tar, CancellationToken cancellationToken);

    /// <summary>A tar stream of <paramref name="path"/> in a container, or null when the path does not exist.</summary>
    Task<Stream?> GetArchiveAsync(string containerId, string path, CancellationToken cancellationToken);

    /// <summary>Returns null when the container does not exist.</summary>
    Task<ContainerState?> InspectContainerAsync(string containerId, CancellationToken cancellationToken);

    Task<IReadOnlyList<ContainerState>> ListContainersAsync(string labelKey, string labelValue, CancellationToken cancellationToken);

    /// <summary>Force-removes a container and its anonymous volumes; a container that is already gone is not an error.</summary>
    Task RemoveContainerAsync(string containerId, CancellationToken cancellationToken);

    /// <summary>
    /// Starts <paramref name="argv"/> in a running container as <paramref name="user"/> and returns a duplex stream:
    /// writes go to its stdin, reads return its stdout (its stderr is dropped). Disposing ends the exec's stdin.
    /// </summary>
    Task<Stream> ExecStreamAsync(string containerId, IReadOnlyList<string> argv, string user, CancellationToken cancellationToken);

    /// <summary>One Docker exec of an argv, output capped. Used for diagnostics and as a benchmark reference, never on the command path.</summary>
    Task<ExecOutcome> ExecAsync(string containerId, IReadOnlyList<string> argv, CancellationToken cancellationToken);

    /// <summary>A one-shot resource reading; null when the container does not exist.</summary>
    Task<ContainerStats?> GetStatsAsync(string containerId, CancellationToken cancellationToken);

    /// <summary>Creates a volume of the local driver.</summary>
    Task CreateVolumeAsync(string name, IReadOnlyDictionary<string, string> labels, CancellationToken cancellationToken);

    /// <summary>The volume's labels, or null when it does not exist.</summary>
    Task<VolumeState?> InspectVolumeAsync(string name, CancellationToken cancellationToken);

    Task<IReadOnlyList<VolumeState>> ListVolumesAsync(string labelKey, string labelValue, CancellationToken cancellationToken);

    /// <summary>Removes a volume; a volume that is already gone is not an error.</summary>
    /// <exception cref="VolumeInUseException">A container still uses it.</exception>
    Task RemoveVolumeAsync(string name, CancellationToken cancellationToken);
}

internal sealed record ContainerStats(long MemoryUsageBytes, long MemoryLimitBytes, double CpuSeconds, long Pids);

internal sealed record VolumeState(string Name, IReadOnlyDictionary<string, string> Labels);

internal sealed record EngineInfo(string Version, string ApiVersion, IReadOnlyList<string> Runtimes);

internal sealed record ExecOutcome(long ExitCode, string Output);

/// <summary>A container as the engine reports it.</summary>
/// <param name="Id">The engine's id.</param>
/// <param name="Name">Its name.</param>
/// <param name="Running">Whether its init runs.</param>
/// <param name="OomKilled">Whether the kernel's OOM killer ended it.</param>
/// <param name="Labels">Its labels.</param>
/// <param name="Pid">The container's init as the engine's host sees it; 0 when not running.</param>
/// <param name="ExitCode">Exit status once stopped.</param>
/// <param name="Error">The engine's reason when the container could not start or died, if it gave one.</param>
/// <param name="Created">When it was created; set by listings only.</param>
internal sealed record ContainerState(
    string Id,
    string Name,
    bool Running,
    bool OomKilled,
    IReadOnlyDictionary<string, string> Labels,
    int Pid = 0,
    long ExitCode = 0,
    string? Error = null,
    DateTimeOffset? Created = null);

/// <summary>A named volume mounted into a container.</summary>
/// <summary>A named volume at <paramref name="Target"/>; with <paramref name="Bind"/>, <paramref name="Source"/> is a directory of the engine's host instead.</summary>
internal sealed record VolumeMount(string Source, string Target, bool ReadOnly = false, bool Bind = false);

/// <summary>Everything needed to start one container, engine-neutral.</summary>
internal sealed record ContainerSpec
{
    public required string Name { get; init; }
    public required string Image { get; init; }
    public required IReadOnlyDictionary<string, string> Labels { get; init; }
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();
    /// <summary>Replaces the image's ENTRYPOINT; with it set, the image's CMD is ignored too.</summary>
    public IReadOnlyList<string>? Entrypoint { get; init; }
    public IReadOnlyList<string>? Command { get; init; }
    public string? User { get; init; }
    public string? WorkingDirectory { get; init; }
    public required long MemoryBytes { get; init; }
    public required double Cpus { get; init; }
    public required int PidsLimit { get; init; }
    public required string NetworkMode { get; init; }
    public string? Runtime { get; init; }
    public bool ReadOnlyRootFilesystem { get; init; } = true;
    public bool DropAllCapabilities { get; init; } = true;
    /// <summary>Capabilities added back after dropping all (for the supervisor; its children drop them).</summary>
    public IReadOnlyList<string> AddCapabilities { get; init; } = [];
    public bool NoNewPrivileges { get; init; } = true;
    public bool Init { get; init; }
    /// <summary>DNS servers written to the container's resolv.conf (none: the engine's default).</summary>
    public IReadOnlyList<string> Dns { get; init; } = [];
    /// <summary>Mount path to tmpfs options (e.g. <c>size=64m,mode=1777</c>).</summary>
    public IReadOnlyDictionary<string, string> Tmpfs { get; init; } = new Dictionary<string, string>();
    /// <summary>Named volumes.</summary>
    public IReadOnlyList<VolumeMount> Volumes { get; init; } = [];
    /// <summary>Mount paths that get a fresh anonymous volume, removed with the container.</summary>
    public IReadOnlyList<string> AnonymousVolumes { get; init; } = [];
    /// <summary>Block-IO weight (10-1000) relative to other containers; null: the engine's default.</summary>
    public int? BlockIoWeight { get; init; }
    /// <summary>Per-device block-IO ceilings.</summary>
    public IReadOnlyList<BlockIoCeiling> BlockIoCeilings { get; init; } = [];
    /// <summary>Size of <c>/dev/shm</c> in bytes (a tmpfs: it counts against the memory limit); null: the engine's 64 MiB.</summary>
    public long? ShmSizeBytes { get; init; }
}

/// <summary>Ceilings for one block device, e.g. <c>/dev/loop3</c> (0: none of that kind).</summary>
internal sealed record BlockIoCeiling(string Device, long ReadBytesPerSecond, long WriteBytesPerSecond, long ReadIops, long WriteIops);

/// <summary>The engine could not be reached or refused a request it should have served.</summary>
internal sealed class EngineUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The container a call named does not exist (any more).</summary>
internal sealed class ContainerGoneException(string containerId, Exception? inner = null)
    : Exception($"Container {containerId} does not exist.", inner);

/// <summary>The engine created a container but could not start its entrypoint (e.g. an image without the libraries it needs).</summary>
internal sealed class ContainerStartException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A volume could not be removed because a container uses it.</summary>
internal sealed class VolumeInUseException(string name, Exception? inner = null) : Exception($"Volume {name} is in use.", inner);
