using System.Globalization;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Turns a session shape into the container the engine runs: hardened by default, the same for cold starts and the
/// warm pool, and independent of the image's ENTRYPOINT, CMD, USER, WORKDIR and users. The supervisor is the entrypoint
/// and init, running as root with only the capabilities it needs to start commands as the command user and to keep
/// them away from itself (docs/supervisor-protocol.md); its children run without any.
/// </summary>
internal sealed class ContainerSpecFactory(IOptions<SandboxOptions> options, SandboxImage images, SupervisorBundle bundle, BlockIo blockIo)
{
    /// <summary>What the supervisor keeps (and its commands lose): start processes as the user, signal them, own the PTYs it makes.</summary>
    private static readonly string[] SupervisorCapabilities = ["CHOWN", "SETUID", "SETGID", "KILL"];

    /// <summary>
    /// With no network, also what the egress relay needs (a session may get a policy at any time, so every such container
    /// has them): DNS on port 53 and a local default route inside the container's own network namespace, which holds
    /// only its loopback.
    /// </summary>
    private static readonly string[] RelayCapabilities = ["NET_BIND_SERVICE", "NET_ADMIN"];

    private readonly SandboxOptions _options = options.Value;

    /// <summary>The hardened container for a session shape; every property here is checked from inside a container by the tests.</summary>
    /// <param name="shape">Image and limits.</param>
    /// <param name="name">The container's name.</param>
    /// <param name="userStorage">The end user's storage volume, if any.</param>
    /// <param name="workspace">The bounded disk for /workspace; null: an anonymous (unbounded) volume.</param>
    /// <param name="environment">The session's environment.</param>
    public ContainerSpec Build(SessionShape shape, string name, DiskVolume? userStorage, DiskVolume? workspace, IReadOnlyDictionary<string, string>? environment = null)
    {
        var volumes = new List<VolumeMount> { new(bundle.VolumeName, SupervisorBundle.MountPath, ReadOnly: true) };
        if (workspace is not null)
        {
            volumes.Add(Mount(workspace, SandboxKit.Contracts.SandboxPath.Workspace));
        }
        if (userStorage is not null)
        {
            volumes.Add(Mount(userStorage, _options.PersistentStoragePath));
        }
        var uid = _options.CommandUid.ToString(CultureInfo.InvariantCulture);
        var gid = _options.CommandGid.ToString(CultureInfo.InvariantCulture);
        return new ContainerSpec
        {
            Name = name,
            Image = shape.Image,
            Labels = new Dictionary<string, string>
            {
                [SessionLabels.Instance] = _options.InstanceName,
                [SessionLabels.Kind] = SessionLabels.KindSandbox,
                [SessionLabels.Shape] = shape.Key,
                [SessionLabels.Generation] = SessionLabels.CurrentGeneration,
                [SessionLabels.SupervisorBuild] = bundle.Build,
            },
            // The supervisor starts every command with these (and carries them into the persisted state, so `unset` sticks).
            Environment = environment ?? new Dictionary<string, string>(),
            Entrypoint = [SupervisorBundle.Executable],
            Command =
            [
                "serve", "--uid", uid, "--gid", gid, "--home", _options.HomePath, "--workdir", SandboxKit.Contracts.SandboxPath.Workspace,
                "--socket", SupervisorBundle.SocketPath, "--warm", _options.SupervisorWarmShells.ToString(CultureInfo.InvariantCulture),
            ],
            User = "0:0",
            WorkingDirectory = "/",
            MemoryBytes = shape.MemoryBytes,
            Cpus = shape.Cpus,
            PidsLimit = shape.PidsLimit,
            NetworkMode = shape.NetworkMode,
            Runtime = shape.Runtime == "runc" ? null : shape.Runtime,
            ReadOnlyRootFilesystem = true,
            DropAllCapabilities = true,
            AddCapabilities = shape.NetworkMode == "none" ? [.. SupervisorCapabilities, .. RelayCapabilities] : SupervisorCapabilities,
            // The relay answers DNS there; without a policy nothing does and names simply do not resolve.
            Dns = shape.NetworkMode == "none" ? ["127.0.0.1"] : [],
            NoNewPrivileges = true,
            // The supervisor is the init: it reaps orphans and must be PID 1 for the kernel's protection of the init.
            Init = false,
            Tmpfs = new Dictionary<string, string>
            {
                ["/tmp"] = $"rw,nosuid,nodev,size={_options.TmpSize},mode=1777",
                [_options.HomePath] = $"rw,nosuid,nodev,size={_options.HomeSize},uid={uid},gid={gid},mode=0755",
                // Root-only: the supervisor's socket lives here, out of reach of the command user.
                [SupervisorBundle.RuntimeDirectory] = "rw,nosuid,nodev,noexec,size=1m,mode=0700",
                // Readable by all, writable by the supervisor only: the egress relay's CA bundle goes here.
                ["/etc/sandboxkit"] = "rw,nosuid,nodev,noexec,size=1m,mode=0755",
            },
            AnonymousVolumes = workspace is null ? [SandboxKit.Contracts.SandboxPath.Workspace] : [],
            Volumes = volumes,
            BlockIoWeight = blockIo.Weight,
            BlockIoCeilings = blockIo.CeilingsFor([workspace?.Device, userStorage?.Device]),
            ShmSizeBytes = _options.ShmSizeBytes,
        };
    }

    /// <summary>A bounded disk is bound from where the server mounted it; an unbounded one is the engine's volume.</summary>
    private static VolumeMount Mount(DiskVolume volume, string target) =>
        volume.MountPath is { } path ? new VolumeMount(path, target, Bind: true) : new VolumeMount(volume.Name, target);

    public SessionShape DefaultShape => new(images.Default, _options.DefaultMemoryBytes, _options.DefaultCpus, _options.DefaultPidsLimit, "none", DefaultRuntime);

    public string DefaultRuntime => string.IsNullOrWhiteSpace(_options.DefaultRuntime) ? "runc" : _options.DefaultRuntime!;
}
