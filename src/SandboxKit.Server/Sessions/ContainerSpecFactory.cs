using Microsoft.Extensions.Options;
using SandboxKit.Server.Api;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Sessions;

/// <summary>Turns a session shape into the container the engine runs: hardened by default, the same for cold starts and the warm pool.</summary>
internal sealed class ContainerSpecFactory(IOptions<SandboxOptions> options, SandboxImage images)
{
    private readonly SandboxOptions _options = options.Value;

    /// <summary>The hardened container for a session shape; every property here is checked from inside a container by the tests.</summary>
    public ContainerSpec Build(SessionShape shape, string name, string? userVolume, IReadOnlyDictionary<string, string>? environment = null)
    {
        var volumes = new Dictionary<string, string>();
        if (userVolume is not null)
        {
            volumes[userVolume] = _options.PersistentStoragePath;
        }
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
            },
            // The agent starts with these and carries them into every command's persisted state (so `unset` sticks).
            Environment = environment ?? new Dictionary<string, string>(),
            User = "1000:1000",
            WorkingDirectory = "/workspace",
            MemoryBytes = shape.MemoryBytes,
            Cpus = shape.Cpus,
            PidsLimit = shape.PidsLimit,
            NetworkMode = shape.NetworkMode,
            Runtime = shape.Runtime == "runc" ? null : shape.Runtime,
            ReadOnlyRootFilesystem = true,
            DropAllCapabilities = true,
            NoNewPrivileges = true,
            OpenStdin = true,
            Tmpfs = new Dictionary<string, string>
            {
                ["/tmp"] = $"rw,nosuid,nodev,size={_options.TmpSize},mode=1777",
                ["/home/sandbox"] = $"rw,nosuid,nodev,size={_options.HomeSize},uid=1000,gid=1000,mode=0755",
            },
            AnonymousVolumes = ["/workspace"],
            Volumes = volumes,
        };
    }

    public SessionShape DefaultShape => new(images.Default, _options.DefaultMemoryBytes, _options.DefaultCpus, _options.DefaultPidsLimit, "none", DefaultRuntime);

    public string DefaultRuntime => string.IsNullOrWhiteSpace(_options.DefaultRuntime) ? "runc" : _options.DefaultRuntime!;

}
