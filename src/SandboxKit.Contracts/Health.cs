namespace SandboxKit.Contracts;

/// <summary>
/// What <c>GET /healthz</c> reports: whether the container engine answers and the sandbox image is present. Without a
/// valid API key (when keys are configured) only <see cref="Status"/> is given; with one, everything.
/// </summary>
public sealed record HealthReport
{
    /// <summary><c>healthy</c> when the engine answers and the image is present, otherwise <c>unhealthy</c>.</summary>
    public required string Status { get; init; }

    /// <summary>State of the container engine (with a key).</summary>
    public EngineHealth? Engine { get; init; }

    /// <summary>State of the default sandbox image (with a key).</summary>
    public ImageHealth? Image { get; init; }

    /// <summary>Server version (with a key).</summary>
    public string? Version { get; init; }

    /// <summary>How full this host is against the operator's limits (with a key).</summary>
    public CapacityReport? Capacity { get; init; }
}

/// <summary>What this host has committed to sessions, against the limits beyond which new sessions are refused (503 <c>capacity_exhausted</c>).</summary>
public sealed record CapacityReport
{
    /// <summary>Sessions and pre-started pool containers on this host.</summary>
    public required int Sessions { get; init; }

    /// <summary>The most sessions (pool included) the operator allows on this host.</summary>
    public required int MaxSessions { get; init; }

    /// <summary>The sum of the memory limits of those containers, in bytes.</summary>
    public required long CommittedMemoryBytes { get; init; }

    /// <summary>The most memory the operator allows to commit, in bytes.</summary>
    public required long MaxCommittedMemoryBytes { get; init; }

    /// <summary>The sum of the disk limits of their workspaces and user storage, when disks are bounded.</summary>
    public long? CommittedDiskBytes { get; init; }

    /// <summary>The most disk the operator allows to commit, when disks are bounded.</summary>
    public long? MaxCommittedDiskBytes { get; init; }
}

/// <summary>Container engine state as seen by the server.</summary>
public sealed record EngineHealth
{
    /// <summary>True when the engine answered a version request.</summary>
    public required bool Reachable { get; init; }

    /// <summary>Engine endpoint the server talks to.</summary>
    public required string Endpoint { get; init; }

    /// <summary>Engine version when reachable.</summary>
    public string? Version { get; init; }

    /// <summary>API version when reachable.</summary>
    public string? ApiVersion { get; init; }

    /// <summary>Runtimes the engine offers (e.g. <c>runc</c>, <c>runsc</c>).</summary>
    public IReadOnlyList<string>? Runtimes { get; init; }

    /// <summary>Why the engine is not reachable.</summary>
    public string? Error { get; init; }
}

/// <summary>Sandbox image state.</summary>
public sealed record ImageHealth
{
    /// <summary>Image reference the server creates sessions from.</summary>
    public required string Name { get; init; }

    /// <summary>True when the image exists on the engine.</summary>
    public required bool Present { get; init; }
}
