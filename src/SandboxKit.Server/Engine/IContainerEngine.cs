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

    Task<EngineInfo> GetInfoAsync(CancellationToken cancellationToken);

    Task<bool> ImageExistsAsync(string image, CancellationToken cancellationToken);

    /// <summary>Creates and starts a container; on a failed start the container is removed before the error escapes.</summary>
    Task<string> RunContainerAsync(ContainerSpec spec, CancellationToken cancellationToken);

    /// <summary>Returns null when the container does not exist.</summary>
    Task<ContainerState?> InspectContainerAsync(string containerId, CancellationToken cancellationToken);

    Task<IReadOnlyList<ContainerState>> ListContainersAsync(string labelKey, string labelValue, CancellationToken cancellationToken);

    /// <summary>Force-removes a container and its anonymous volumes; a container that is already gone is not an error.</summary>
    Task RemoveContainerAsync(string containerId, CancellationToken cancellationToken);

    /// <summary>Attaches to the main process's stdin and stdout (stderr is read and discarded into the log).</summary>
    Task<IAttachedStream> AttachAsync(string containerId, CancellationToken cancellationToken);

    /// <summary>One Docker exec of an argv, output capped. Used for diagnostics and as a benchmark reference, never on the command path.</summary>
    Task<ExecOutcome> ExecAsync(string containerId, IReadOnlyList<string> argv, CancellationToken cancellationToken);

    /// <summary>A one-shot resource reading; null when the container does not exist.</summary>
    Task<ContainerStats?> GetStatsAsync(string containerId, CancellationToken cancellationToken);

    Task CreateVolumeAsync(string name, IReadOnlyDictionary<string, string> labels, CancellationToken cancellationToken);

    Task<IReadOnlyList<VolumeState>> ListVolumesAsync(string labelKey, string labelValue, CancellationToken cancellationToken);

    /// <summary>Removes a volume; a volume that is already gone is not an error.</summary>
    Task RemoveVolumeAsync(string name, CancellationToken cancellationToken);
}

/// <summary>A full-duplex byte stream to a container's main process.</summary>
internal interface IAttachedStream : IAsyncDisposable
{
    /// <summary>Reads stdout bytes; returns 0 at end of stream.</summary>
    ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken);

    ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken);
}

internal sealed record ContainerStats(long MemoryUsageBytes, long MemoryLimitBytes, double CpuSeconds, long Pids);

internal sealed record VolumeState(string Name, IReadOnlyDictionary<string, string> Labels);

internal sealed record EngineInfo(string Version, string ApiVersion, IReadOnlyList<string> Runtimes);

internal sealed record ExecOutcome(long ExitCode, string Output);

internal sealed record ContainerState(
    string Id,
    string Name,
    bool Running,
    bool OomKilled,
    IReadOnlyDictionary<string, string> Labels);

/// <summary>Everything needed to start one container, engine-neutral.</summary>
internal sealed record ContainerSpec
{
    public required string Name { get; init; }
    public required string Image { get; init; }
    public required IReadOnlyDictionary<string, string> Labels { get; init; }
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();
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
    public bool NoNewPrivileges { get; init; } = true;
    public bool Init { get; init; }
    public bool OpenStdin { get; init; }
    /// <summary>Mount path to tmpfs options (e.g. <c>size=64m,mode=1777</c>).</summary>
    public IReadOnlyDictionary<string, string> Tmpfs { get; init; } = new Dictionary<string, string>();
    /// <summary>Named volumes: volume name to mount path.</summary>
    public IReadOnlyDictionary<string, string> Volumes { get; init; } = new Dictionary<string, string>();
    /// <summary>Mount paths that get a fresh anonymous volume, removed with the container.</summary>
    public IReadOnlyList<string> AnonymousVolumes { get; init; } = [];
}

/// <summary>The engine could not be reached or refused a request it should have served.</summary>
internal sealed class EngineUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The container a call named does not exist (any more).</summary>
internal sealed class ContainerGoneException(string containerId, Exception? inner = null)
    : Exception($"Container {containerId} does not exist.", inner);
