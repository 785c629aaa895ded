using System.Formats.Tar;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Supervisor;

/// <summary>
/// The supervisor bundle this server brings to every session (<c>src/SandboxKit.Agent</c>'s <c>PublishBundle</c> output:
/// the NativeAOT supervisor, a static bash, the preludes and interpreter drivers, and <c>BUILD</c>, their content hash),
/// and the read-only engine volume that carries it into containers. One volume per build, shared by every session and
/// server on the engine; it is filled through a never-started carrier container, so it works with any engine, local or
/// remote, and under gVisor.
/// </summary>
internal sealed class SupervisorBundle(IOptions<SandboxOptions> options, ILogger<SupervisorBundle> logger)
{
    /// <summary>Where the bundle is mounted in every container.</summary>
    public const string MountPath = "/.sandboxkit";

    /// <summary>The supervisor executable inside the container.</summary>
    public const string Executable = MountPath + "/sandboxkit-agent";

    /// <summary>The supervisor's socket inside the container (a root-only tmpfs).</summary>
    public const string RuntimeDirectory = "/run/sandboxkit";

    /// <summary>The supervisor's socket inside the container.</summary>
    public const string SocketPath = RuntimeDirectory + "/agent.sock";

    private readonly SemaphoreSlim _ensureLock = new(1, 1);
    private readonly Lazy<BundleFiles> _files = new(() => Load(ResolveDirectory(options.Value)));
    private IContainerEngine? _ensuredOn;

    /// <summary>The bundle directory on this host.</summary>
    public string Directory => _files.Value.Directory;

    /// <summary>The content hash the supervisor reports in its hello.</summary>
    public string Build => _files.Value.Build;

    /// <summary>The engine volume that carries this build.</summary>
    public string VolumeName => $"sandboxkit-supervisor-{Build}";

    /// <summary>Makes sure the bundle exists and can be read; fails start-up with one clear line otherwise.</summary>
    /// <exception cref="StartupException">The bundle is missing or incomplete.</exception>
    public void Validate() => _ = _files.Value;

    /// <summary>
    /// Makes sure the engine has this build's volume, filled. Cheap after the first call; safe to race with other servers
    /// (they write identical bytes). <paramref name="carrierImage"/> is any image present on the engine.
    /// </summary>
    public async Task EnsureVolumeAsync(IContainerEngine engine, string carrierImage, CancellationToken cancellationToken)
    {
        if (ReferenceEquals(Volatile.Read(ref _ensuredOn), engine))
        {
            return;
        }
        await _ensureLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (ReferenceEquals(_ensuredOn, engine))
            {
                return;
            }
            var labels = new Dictionary<string, string>
            {
                [Sessions.SessionLabels.Kind] = Sessions.SessionLabels.KindSupervisor,
                [Sessions.SessionLabels.SupervisorBuild] = Build,
            };
            if (await engine.InspectVolumeAsync(VolumeName, cancellationToken).ConfigureAwait(false) is null)
            {
                await engine.CreateVolumeAsync(VolumeName, labels, cancellationToken).ConfigureAwait(false);
            }
            var carrier = await engine.CreateCarrierAsync($"sandboxkit-carrier-{Build}-{Guid.NewGuid():N}"[..48], carrierImage, labels,
                [new VolumeMount(VolumeName, "/bundle")], cancellationToken).ConfigureAwait(false);
            try
            {
                if (await ReadBuildAsync(engine, carrier, cancellationToken).ConfigureAwait(false) != Build)
                {
                    await using var tar = CreateArchive();
                    await engine.PutArchiveAsync(carrier, "/bundle", tar, cancellationToken).ConfigureAwait(false);
                    logger.LogInformation("Supervisor bundle {Build} copied into volume {Volume}", Build, VolumeName);
                }
            }
            finally
            {
                await engine.RemoveContainerAsync(carrier, CancellationToken.None).ConfigureAwait(false);
            }
            Volatile.Write(ref _ensuredOn, engine);
        }
        finally
        {
            _ensureLock.Release();
        }
    }

    /// <summary>Removes carriers that a killed server left behind, then volumes of other builds that no container uses any more.</summary>
    public async Task<int> SweepStaleVolumesAsync(IContainerEngine engine, CancellationToken cancellationToken, TimeSpan? carrierLifetime = null)
    {
        // A server killed between creating a carrier and removing it leaves the carrier behind, and the carrier keeps
        // its volume in use. Carriers live for well under a second; one older than a minute belongs to no one (the age
        // keeps a server that starts at this moment from losing the carrier it is filling).
        var abandonedBefore = DateTimeOffset.UtcNow - (carrierLifetime ?? TimeSpan.FromMinutes(1));
        foreach (var carrier in await engine.ListContainersAsync(Sessions.SessionLabels.Kind, Sessions.SessionLabels.KindSupervisor, cancellationToken).ConfigureAwait(false))
        {
            if (!carrier.Running && carrier.Created is { } created && created < abandonedBefore)
            {
                await engine.RemoveContainerAsync(carrier.Id, cancellationToken).ConfigureAwait(false);
            }
        }
        var removed = 0;
        foreach (var volume in await engine.ListVolumesAsync(Sessions.SessionLabels.Kind, Sessions.SessionLabels.KindSupervisor, cancellationToken).ConfigureAwait(false))
        {
            if (volume.Name == VolumeName)
            {
                continue;
            }
            try
            {
                await engine.RemoveVolumeAsync(volume.Name, cancellationToken).ConfigureAwait(false);
                removed++;
            }
            catch (VolumeInUseException)
            {
                // Sessions of an earlier server version still run on it; a later sweep removes it.
            }
        }
        return removed;
    }

    /// <summary>The bundle as a tar, BUILD last: a volume with the right BUILD is therefore complete.</summary>
    internal Stream CreateArchive()
    {
        var files = _files.Value;
        var buffer = new MemoryStream();
        using (var writer = new TarWriter(buffer, TarEntryFormat.Pax, leaveOpen: true))
        {
            var directories = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var relative in files.Relative)
            {
                for (var dir = Path.GetDirectoryName(relative); !string.IsNullOrEmpty(dir); dir = Path.GetDirectoryName(dir))
                {
                    directories.Add(dir);
                }
            }
            foreach (var dir in directories)
            {
                writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, dir + "/")
                {
                    Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute
                        | UnixFileMode.OtherRead | UnixFileMode.OtherExecute,
                    Uid = 0,
                    Gid = 0,
                });
            }
            foreach (var relative in files.Relative.Append("BUILD"))
            {
                var full = Path.Combine(files.Directory, relative);
                // The server runs on Linux only (it drives a Linux engine's containers); the bundle keeps the exec bits it was built with.
                var executable = !OperatingSystem.IsWindows() && (File.GetUnixFileMode(full) & UnixFileMode.UserExecute) != 0;
                using var content = File.OpenRead(full);
                writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, relative)
                {
                    // Root-owned and not writable by anyone in the container: the mount is read-only anyway.
                    Mode = UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead
                        | (executable ? UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute : 0),
                    Uid = 0,
                    Gid = 0,
                    ModificationTime = DateTimeOffset.UnixEpoch,
                    DataStream = content,
                });
            }
        }
        buffer.Position = 0;
        return buffer;
    }

    private static async Task<string?> ReadBuildAsync(IContainerEngine engine, string carrier, CancellationToken cancellationToken)
    {
        await using var tar = await engine.GetArchiveAsync(carrier, "/bundle/BUILD", cancellationToken).ConfigureAwait(false);
        if (tar is null)
        {
            return null;
        }
        using var reader = new TarReader(tar);
        while (await reader.GetNextEntryAsync(copyData: false, cancellationToken).ConfigureAwait(false) is { } entry)
        {
            if (entry.EntryType == TarEntryType.RegularFile && entry.DataStream is not null && entry.Length <= 256)
            {
                using var text = new StreamReader(entry.DataStream);
                return (await text.ReadToEndAsync(cancellationToken).ConfigureAwait(false)).Trim();
            }
        }
        return null;
    }

    private static string ResolveDirectory(SandboxOptions options) =>
        string.IsNullOrWhiteSpace(options.SupervisorBundlePath) ? Path.Combine(AppContext.BaseDirectory, "supervisor") : options.SupervisorBundlePath!;

    private static BundleFiles Load(string directory)
    {
        var build = Path.Combine(directory, "BUILD");
        var executable = Path.Combine(directory, "sandboxkit-agent");
        if (!File.Exists(build) || !File.Exists(executable) || !File.Exists(Path.Combine(directory, "bin", "bash")))
        {
            throw new StartupException(
                $"the supervisor bundle is missing or incomplete at {directory} (needs sandboxkit-agent, bin/bash and BUILD). " +
                "Build the server with `dotnet build` (it publishes src/SandboxKit.Agent; that needs Debian's clang, lld and bash-static) " +
                "or set Sandbox:SupervisorBundlePath.");
        }
        var relative = System.IO.Directory.EnumerateFiles(directory, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(directory, f).Replace('\\', '/'))
            .Where(f => f != "BUILD" && !f.EndsWith(".dbg", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .ToArray();
        return new BundleFiles(directory, File.ReadAllText(build).Trim(), relative);
    }

    private sealed record BundleFiles(string Directory, string Build, IReadOnlyList<string> Relative);
}
