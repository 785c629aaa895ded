using System.Globalization;
using System.Text.Json;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Label keys. Containers carry the instance and kind; each session's facts live in the labels of its
/// claim volume (labels cannot change after creation, and a pooled container is claimed after it starts).
/// A restarted server rebuilds every session from these alone.
/// </summary>
internal static class SessionLabels
{
    public const string Prefix = "org.sandboxkit.";
    public const string Instance = Prefix + "instance";
    public const string Kind = Prefix + "kind";
    public const string Shape = Prefix + "shape";
    /// <summary>Which server process made a container; adoption never sweeps the current process's own.</summary>
    public const string Generation = Prefix + "generation";

    public static readonly string CurrentGeneration = Guid.NewGuid().ToString("N");
    public const string Session = Prefix + "session";
    public const string Container = Prefix + "container";
    public const string Tenant = Prefix + "tenant";
    public const string User = Prefix + "user";
    public const string Image = Prefix + "image";
    public const string Created = Prefix + "created";
    public const string MaxExpires = Prefix + "max-expires";
    public const string IdleTimeout = Prefix + "idle-timeout";
    public const string Memory = Prefix + "memory";
    public const string Cpus = Prefix + "cpus";
    public const string Pids = Prefix + "pids";
    public const string Network = Prefix + "network";
    public const string Runtime = Prefix + "runtime";
    public const string Metadata = Prefix + "metadata";
    public const string PersistPath = Prefix + "persist-path";
    /// <summary>The digest of the Idempotency-Key that created the session and its request's fingerprint: a retry after a restart finds it.</summary>
    public const string Idempotency = Prefix + "idempotency";

    public const string KindSandbox = "sandbox";
    public const string KindClaim = "claim";
    public const string KindUserStorage = "user-storage";
    public const string KindSupervisor = "supervisor";
    public const string KindWorkspace = "workspace";

    /// <summary>The named volume (a bounded disk) mounted at /workspace, when disks are bounded.</summary>
    public const string Workspace = Prefix + "workspace";
    public const string DiskBytes = Prefix + "workspace-bytes";

    /// <summary>The supervisor bundle build a container runs (on containers and the bundle volume).</summary>
    public const string SupervisorBuild = Prefix + "supervisor-build";

    public static Dictionary<string, string> ForClaim(Session s, string instance)
    {
        var labels = new Dictionary<string, string>
        {
            [Instance] = instance,
            [Kind] = KindClaim,
            [Session] = s.Id,
            [Container] = s.ContainerId,
            [Tenant] = s.Tenant,
            [Image] = s.Image,
            [Created] = s.CreatedAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture),
            [MaxExpires] = s.MaxExpiresAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture),
            [IdleTimeout] = ((long)s.IdleTimeout.TotalSeconds).ToString(CultureInfo.InvariantCulture),
            [Memory] = s.MemoryBytes.ToString(CultureInfo.InvariantCulture),
            [Cpus] = s.Cpus.ToString(CultureInfo.InvariantCulture),
            [Pids] = s.PidsLimit.ToString(CultureInfo.InvariantCulture),
            [Network] = s.NetworkMode,
            [Runtime] = s.Runtime,
            [Metadata] = JsonSerializer.Serialize(s.Metadata, LabelJsonContext.Default.IReadOnlyDictionaryStringString),
        };
        if (s.UserId is not null)
        {
            labels[User] = s.UserId;
        }
        if (s.PersistentStoragePath is not null)
        {
            labels[PersistPath] = s.PersistentStoragePath;
        }
        if (s.Idempotency is not null)
        {
            labels[Idempotency] = s.Idempotency;
        }
        if (s.WorkspaceVolume is not null)
        {
            labels[Workspace] = s.WorkspaceVolume;
            labels[DiskBytes] = (s.DiskBytes ?? 0).ToString(CultureInfo.InvariantCulture);
        }
        return labels;
    }

    /// <summary>Rebuilds a session from its claim labels; null when they are incomplete (then the claim is an orphan).</summary>
    public static Session? ToSession(string claimVolume, IReadOnlyDictionary<string, string> l)
    {
        try
        {
            return new Session
            {
                Id = l[Session],
                ContainerId = l[Container],
                ClaimVolume = claimVolume,
                Tenant = l[Tenant],
                UserId = l.GetValueOrDefault(User),
                Image = l[Image],
                CreatedAt = DateTimeOffset.FromUnixTimeMilliseconds(long.Parse(l[Created], CultureInfo.InvariantCulture)),
                MaxExpiresAt = DateTimeOffset.FromUnixTimeMilliseconds(long.Parse(l[MaxExpires], CultureInfo.InvariantCulture)),
                IdleTimeout = TimeSpan.FromSeconds(long.Parse(l[IdleTimeout], CultureInfo.InvariantCulture)),
                MemoryBytes = long.Parse(l[Memory], CultureInfo.InvariantCulture),
                Cpus = double.Parse(l[Cpus], CultureInfo.InvariantCulture),
                PidsLimit = int.Parse(l[Pids], CultureInfo.InvariantCulture),
                NetworkMode = l[Network],
                Runtime = l[Runtime],
                // The environment is the container's and the supervisor's; labels never carry it (it may hold secrets).
                Environment = new Dictionary<string, string>(),
                Metadata = JsonSerializer.Deserialize(l[Metadata], LabelJsonContext.Default.IReadOnlyDictionaryStringString) ?? new Dictionary<string, string>(),
                PersistentStoragePath = l.GetValueOrDefault(PersistPath),
                Idempotency = l.GetValueOrDefault(Idempotency),
                WorkspaceVolume = l.GetValueOrDefault(Workspace),
                DiskBytes = l.TryGetValue(DiskBytes, out var bytes) ? long.Parse(bytes, CultureInfo.InvariantCulture) : null,
            };
        }
        catch (Exception e) when (e is KeyNotFoundException or FormatException or JsonException or OverflowException)
        {
            return null;
        }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(IReadOnlyDictionary<string, string>))]
internal sealed partial class LabelJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
