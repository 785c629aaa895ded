namespace SandboxKit.Contracts;

/// <summary>Body of <c>POST /v1/sessions</c>. Every field is optional and bounded by the server's maxima.</summary>
public sealed record CreateSessionRequest
{
    /// <summary>Image to run; must be on the server's allow-list. Defaults to the server's sandbox image.</summary>
    public string? Image { get; init; }

    /// <summary>Memory limit in bytes (swap included). Defaults to 512 MiB.</summary>
    public long? MemoryBytes { get; init; }

    /// <summary>CPU limit in cores (e.g. 0.5). Defaults to half a core.</summary>
    public double? Cpus { get; init; }

    /// <summary>Maximum number of processes in the sandbox.</summary>
    public int? PidsLimit { get; init; }

    /// <summary>Environment variables set for every command of the session.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }

    /// <summary>Free-form labels the app can filter sessions by.</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    /// <summary>Seconds without activity after which the session is removed.</summary>
    public int? IdleTimeoutSeconds { get; init; }

    /// <summary>Seconds after creation after which the session is removed whatever its activity.</summary>
    public int? MaxLifetimeSeconds { get; init; }

    /// <summary>Network mode: <c>none</c> (default) or a network the server allows.</summary>
    public string? NetworkMode { get; init; }

    /// <summary>Container runtime (<c>runc</c> or <c>runsc</c>) where the server allows a choice.</summary>
    public string? Runtime { get; init; }

    /// <summary>The app's own end user. Sessions with a user id get that user's persistent storage.</summary>
    public string? UserId { get; init; }

    /// <summary>Size of the session's <c>/workspace</c> disk in bytes (bounded by the server's maximum); a command that fills it gets <c>ENOSPC</c>.</summary>
    public long? DiskBytes { get; init; }

    /// <summary>Network egress by allow-list, enforced outside the sandbox by the server's gateway; absent: no network at all.</summary>
    public EgressPolicyRequest? Egress { get; init; }
}

/// <summary>A session as the server describes it.</summary>
public sealed record SessionInfo
{
    /// <summary>Session id.</summary>
    public required string Id { get; init; }

    /// <summary><c>running</c>; <c>unresponsive</c> while its supervisor does not answer (requests get 503 <c>supervisor_unavailable</c>
    /// and each one tries again); <c>gone</c> when the container disappeared.</summary>
    public required string Status { get; init; }

    /// <summary>Image the session runs.</summary>
    public required string Image { get; init; }

    /// <summary>End user the session belongs to, if any.</summary>
    public string? UserId { get; init; }

    /// <summary>Metadata labels given at creation.</summary>
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }

    /// <summary>Creation time.</summary>
    public required DateTimeOffset CreatedAt { get; init; }

    /// <summary>Last activity.</summary>
    public required DateTimeOffset LastActivityAt { get; init; }

    /// <summary>When the session expires if nothing happens before (idle deadline, capped by the maximum lifetime).</summary>
    public required DateTimeOffset ExpiresAt { get; init; }

    /// <summary>Hard end of the session's life.</summary>
    public required DateTimeOffset MaxExpiresAt { get; init; }

    /// <summary>Memory limit in bytes.</summary>
    public required long MemoryBytes { get; init; }

    /// <summary>CPU limit in cores.</summary>
    public required double Cpus { get; init; }

    /// <summary>Process limit.</summary>
    public required int PidsLimit { get; init; }

    /// <summary>Network mode.</summary>
    public required string NetworkMode { get; init; }

    /// <summary>Container runtime.</summary>
    public required string Runtime { get; init; }

    /// <summary>Path of the user's persistent storage inside the sandbox, when the session has a user id.</summary>
    public string? PersistentStoragePath { get; init; }

    /// <summary>What the session's image offers (interpreters and their versions), as its supervisor found it.</summary>
    public ImageOffers? Offers { get; init; }

    /// <summary>Size of the session's <c>/workspace</c> disk in bytes; null when this server does not bound disks.</summary>
    public long? DiskBytes { get; init; }

    /// <summary>The version of the supervisor running in the session.</summary>
    public string? SupervisorVersion { get; init; }

    /// <summary>The session's egress policy (header values never shown); null: no network.</summary>
    public EgressPolicyInfo? Egress { get; init; }
}

/// <summary>
/// What a session's image offers. A version is null when the program is absent, and empty when it is present but its
/// version is not known yet (<see cref="Probed"/> false).
/// </summary>
public sealed record ImageOffers
{
    /// <summary>False until the supervisor has run the interpreters to learn their versions.</summary>
    public bool Probed { get; init; }

    /// <summary>Version of the bash commands run with (SandboxKit brings a static bash, so it is always there).</summary>
    public string? Bash { get; init; }

    /// <summary>Version of the image's own bash, if it has one.</summary>
    public string? ImageBash { get; init; }

    /// <summary>Version of the image's <c>python3</c>, if it has one.</summary>
    public string? Python3 { get; init; }

    /// <summary>True when <c>python3</c> can import IPython.</summary>
    public bool IPython { get; init; }

    /// <summary>Version of the image's <c>node</c>, if it has one.</summary>
    public string? Node { get; init; }
}

/// <summary>Result of listing sessions.</summary>
public sealed record SessionList
{
    /// <summary>The sessions.</summary>
    public required IReadOnlyList<SessionInfo> Sessions { get; init; }
}

/// <summary>Resource use of a session's container, from <c>GET /v1/sessions/{id}/stats</c>.</summary>
public sealed record SessionStats
{
    /// <summary>Memory in use now (bytes, page cache included as the kernel counts it).</summary>
    public required long MemoryUsageBytes { get; init; }

    /// <summary>The session's memory limit (bytes).</summary>
    public required long MemoryLimitBytes { get; init; }

    /// <summary>CPU time used since the container started (seconds, all cores).</summary>
    public required double CpuSeconds { get; init; }

    /// <summary>Processes and threads running now.</summary>
    public required long Pids { get; init; }

    /// <summary>The session's process limit.</summary>
    public required int PidsLimit { get; init; }
}

/// <summary>What a tenant has used since the server started, from <c>GET /v1/usage</c>.</summary>
public sealed record UsageReport
{
    /// <summary>Tenant name.</summary>
    public required string Tenant { get; init; }

    /// <summary>Sessions open now.</summary>
    public required int ActiveSessions { get; init; }

    /// <summary>Sessions created.</summary>
    public required long SessionsCreated { get; init; }

    /// <summary>Commands and code runs finished.</summary>
    public required long Commands { get; init; }

    /// <summary>Commands that timed out.</summary>
    public required long CommandsTimedOut { get; init; }

    /// <summary>Sum of command durations (seconds).</summary>
    public required double CommandSeconds { get; init; }

    /// <summary>Bytes commands wrote to stdout and stderr.</summary>
    public required long OutputBytes { get; init; }

    /// <summary>CPU time (user + system) of the commands' process trees, in seconds.</summary>
    public double CpuSeconds { get; init; }

    /// <summary>The largest peak memory of any one command's process tree, in bytes.</summary>
    public long PeakMemoryBytes { get; init; }

    /// <summary>Egress connections and DNS answers the gateway allowed.</summary>
    public long EgressAllowed { get; init; }

    /// <summary>Egress connections and DNS queries the gateway refused.</summary>
    public long EgressDenied { get; init; }

    /// <summary>Bytes relayed out of and back into sandboxes through the gateway.</summary>
    public long EgressBytes { get; init; }

    /// <summary>Since when these counters run.</summary>
    public required DateTimeOffset Since { get; init; }
}
