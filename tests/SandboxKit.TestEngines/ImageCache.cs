using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Docker.DotNet;

namespace SandboxKit.TestEngines;

/// <summary>
/// Moves images from the main engine into private ones, fast.
/// <list type="bullet">
/// <item>Tars: each (reference, image id) is saved from the main engine once, to
/// /var/cache/sandboxkit-test-engines/images/KEY.tar, and kept across runs (the key changes when the image does);
/// loading into a running engine reads that file.</item>
/// <item>Seeds: for engines that want images from the start, a data root fragment (<c>image/</c> and <c>overlay2/</c>)
/// made once per set of image ids by loading the tars into a throw-away engine and stopping it cleanly, kept across
/// runs; a new engine's data root links to its layers before the daemon starts (see <see cref="CloneSeedAsync"/>).</item>
/// </list>
/// Both are filled under an exclusive lock, so parallel test processes wait for one fill instead of doing it twice,
/// and are renamed into place only when complete.
/// </summary>
internal static class ImageCache
{
    public sealed record CachedTar(string Reference, string ImageId, string TarPath, bool Saved, TimeSpan SaveTime);

    public sealed record Seed(string Directory, bool Built);

    private sealed record Manifest(string Reference, string ImageId);

    private static readonly TimeSpan FillTimeout = TimeSpan.FromMinutes(15);

    public static async Task<CachedTar> GetTarAsync(string reference, string sourceEndpoint, CancellationToken cancellationToken)
    {
        using var source = new DockerClientConfiguration(new Uri(sourceEndpoint), defaultTimeout: Timeout.InfiniteTimeSpan).CreateClient();
        var imageId = await PrivateEngine.ImageIdAsync(source, reference, cancellationToken).ConfigureAwait(false)
            ?? throw new PrivateEngineException($"the main engine ({sourceEndpoint}) has no image {reference}");
        var key = Key($"{reference}@{imageId}");
        Directory.CreateDirectory(EngineNames.ImagesDirectory);
        var tar = Path.Combine(EngineNames.ImagesDirectory, key + ".tar");
        if (File.Exists(tar))
        {
            return new CachedTar(reference, imageId, tar, Saved: false, TimeSpan.Zero);
        }
        using var fill = await OwnerLease.AcquireAsync(Path.Combine(EngineNames.ImagesDirectory, key + ".lock"), FillTimeout, cancellationToken)
            .ConfigureAwait(false);
        if (File.Exists(tar))
        {
            return new CachedTar(reference, imageId, tar, Saved: false, TimeSpan.Zero);
        }
        var save = Stopwatch.StartNew();
        var partial = $"{tar}.{Environment.ProcessId}.partial";
        try
        {
            var image = await source.Images.SaveImageAsync(reference, cancellationToken).ConfigureAwait(false);
            await using (image.ConfigureAwait(false))
            {
                var file = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
                await using (file.ConfigureAwait(false))
                {
                    await image.CopyToAsync(file, 1 << 20, cancellationToken).ConfigureAwait(false);
                }
            }
            await WriteManifestAsync(Path.Combine(EngineNames.ImagesDirectory, key + ".json"), [new Manifest(reference, imageId)], cancellationToken)
                .ConfigureAwait(false);
            File.Move(partial, tar);
        }
        finally
        {
            File.Delete(partial);
        }
        return new CachedTar(reference, imageId, tar, Saved: true, save.Elapsed);
    }

    public static async Task<Seed> GetSeedAsync(IReadOnlyList<string> references, string sourceEndpoint, CancellationToken cancellationToken)
    {
        var tars = new List<CachedTar>();
        foreach (var reference in references.Distinct(StringComparer.Ordinal))
        {
            tars.Add(await GetTarAsync(reference, sourceEndpoint, cancellationToken).ConfigureAwait(false));
        }
        var key = Key(string.Join('\n', tars.Select(t => $"{t.Reference}@{t.ImageId}").Order(StringComparer.Ordinal)));
        Directory.CreateDirectory(EngineNames.SeedsDirectory);
        var seed = Path.Combine(EngineNames.SeedsDirectory, key);
        if (Directory.Exists(seed))
        {
            return new Seed(seed, Built: false);
        }
        using var fill = await OwnerLease.AcquireAsync(Path.Combine(EngineNames.SeedsDirectory, key + ".lock"), FillTimeout, cancellationToken)
            .ConfigureAwait(false);
        if (Directory.Exists(seed))
        {
            return new Seed(seed, Built: false);
        }

        var builder = await PrivateEngine.StartAsync("seed-builder", new PrivateEngineOptions { SourceEndpoint = sourceEndpoint, InheritRuntimes = false },
            cancellationToken).ConfigureAwait(false);
        await using (builder.ConfigureAwait(false))
        {
            await builder.LoadImagesAsync(tars.Select(t => t.Reference), cancellationToken).ConfigureAwait(false);
            // A clean stop unmounts the data root (dockerd binds it onto itself), so its directories can be renamed out.
            await builder.StopAsync(cancellationToken).ConfigureAwait(false);
            if (Mounts.Under(builder.DataRoot) is { Count: > 0 } mounts)
            {
                throw new PrivateEngineException($"the seed builder {builder.Id} left mounts: {string.Join(", ", mounts)}");
            }
            // Named after the builder, so a sweep can tell an abandoned build (builder gone) from one in progress.
            var building = Path.Combine(EngineNames.SeedsDirectory, ".building-" + builder.Id);
            Directory.CreateDirectory(building);
            Directory.Move(Path.Combine(builder.DataRoot, "image"), Path.Combine(building, "image"));
            Directory.Move(Path.Combine(builder.DataRoot, "overlay2"), Path.Combine(building, "overlay2"));
            await WriteManifestAsync(Path.Combine(building, "manifest.json"), tars.Select(t => new Manifest(t.Reference, t.ImageId)).ToList(), cancellationToken)
                .ConfigureAwait(false);
            Directory.Move(building, seed);
        }
        return new Seed(seed, Built: true);
    }

    /// <summary>
    /// Gives a data root whose daemon has not started yet the seed's images: every layer directory becomes a symlink
    /// into the seed (a handful of links instead of copying or hard-linking tens of thousands of files), the
    /// <c>l/</c> short-name links and the image metadata are copied (dockerd rewrites metadata; it never writes into
    /// a committed layer, and overlayfs only reads lower directories). Removing the image or the engine unlinks the
    /// symlinks and leaves the seed alone (rm and Go's RemoveAll do not follow them).
    /// </summary>
    public static async Task CloneSeedAsync(string seed, string dataRoot, CancellationToken cancellationToken)
    {
        var seedLayers = Path.Combine(seed, "overlay2");
        var layers = Path.Combine(dataRoot, "overlay2");
        Directory.CreateDirectory(layers, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute);
        foreach (var layer in Directory.EnumerateDirectories(seedLayers))
        {
            var name = Path.GetFileName(layer);
            if (name != "l")
            {
                Directory.CreateSymbolicLink(Path.Combine(layers, name), layer);
            }
        }
        await ProcessRunner.RunCheckedAsync("/bin/cp", ["-a", "--", Path.Combine(seedLayers, "l"), Path.Combine(layers, "l")],
            TimeSpan.FromMinutes(1), cancellationToken: cancellationToken).ConfigureAwait(false);
        await ProcessRunner.RunCheckedAsync("/bin/cp", ["-a", "--", Path.Combine(seed, "image"), Path.Combine(dataRoot, "image")],
            TimeSpan.FromMinutes(1), cancellationToken: cancellationToken).ConfigureAwait(false);
    }

    /// <summary>True when a data root of some engine (live or not yet swept) links into the seed.</summary>
    private static bool IsInUse(string seed)
    {
        if (!Directory.Exists(EngineNames.EnginesDirectory))
        {
            return false;
        }
        var prefix = Path.Combine(seed, "overlay2") + "/";
        foreach (var engine in Directory.EnumerateDirectories(EngineNames.EnginesDirectory))
        {
            var layers = Path.Combine(engine, "overlay2");
            if (!Directory.Exists(layers))
            {
                continue;
            }
            foreach (var entry in Directory.EnumerateFileSystemEntries(layers))
            {
                if (new FileInfo(entry).LinkTarget is { } target && target.StartsWith(prefix, StringComparison.Ordinal))
                {
                    return true;
                }
            }
        }
        return false;
    }

    /// <summary>
    /// Deletes tars and seeds of image ids the main engine no longer has under that reference (the image was rebuilt),
    /// if they are older than ten minutes, so an entry in use by a run that started before the rebuild is left alone.
    /// </summary>
    public static async Task<int> PruneObsoleteAsync(string sourceEndpoint, List<string> failures, CancellationToken cancellationToken)
    {
        var pruned = 0;
        DockerClient source;
        try
        {
            source = new DockerClientConfiguration(new Uri(sourceEndpoint), defaultTimeout: TimeSpan.FromSeconds(10)).CreateClient();
        }
        catch (ArgumentException)
        {
            return 0;
        }
        using (source)
        {
            var currentIds = new Dictionary<string, string?>(StringComparer.Ordinal);
            async Task<bool> IsCurrentAsync(IReadOnlyList<Manifest> manifest)
            {
                foreach (var entry in manifest)
                {
                    if (!currentIds.TryGetValue(entry.Reference, out var id))
                    {
                        try
                        {
                            id = await PrivateEngine.ImageIdAsync(source, entry.Reference, cancellationToken).ConfigureAwait(false);
                        }
                        catch (Exception e) when (e is HttpRequestException or IOException or DockerApiException or TimeoutException)
                        {
                            return true; // Main engine unreachable: prune nothing.
                        }
                        currentIds[entry.Reference] = id;
                    }
                    if (id != entry.ImageId)
                    {
                        return false;
                    }
                }
                return true;
            }
            var cutoff = DateTime.UtcNow - TimeSpan.FromMinutes(10);
            if (Directory.Exists(EngineNames.ImagesDirectory))
            {
                foreach (var manifestFile in Directory.EnumerateFiles(EngineNames.ImagesDirectory, "*.json"))
                {
                    var tar = Path.ChangeExtension(manifestFile, ".tar");
                    if (File.GetLastWriteTimeUtc(manifestFile) < cutoff && await ReadManifestAsync(manifestFile).ConfigureAwait(false) is { } manifest
                        && !await IsCurrentAsync(manifest).ConfigureAwait(false))
                    {
                        File.Delete(tar);
                        File.Delete(manifestFile);
                        pruned++;
                    }
                }
            }
            if (Directory.Exists(EngineNames.SeedsDirectory))
            {
                foreach (var seed in Directory.EnumerateDirectories(EngineNames.SeedsDirectory).Where(d => !Path.GetFileName(d).StartsWith('.')))
                {
                    var manifestFile = Path.Combine(seed, "manifest.json");
                    if (Directory.GetLastWriteTimeUtc(seed) < cutoff && await ReadManifestAsync(manifestFile).ConfigureAwait(false) is { } manifest
                        && !await IsCurrentAsync(manifest).ConfigureAwait(false) && !IsInUse(seed))
                    {
                        // Rename first, so no engine starts cloning a seed that is half deleted.
                        var doomed = Path.Combine(EngineNames.SeedsDirectory, ".obsolete-" + Path.GetFileName(seed));
                        Directory.Move(seed, doomed);
                        if (ProcessRunner.RunSync("/bin/rm", ["-rf", "--one-file-system", "--", doomed], TimeSpan.FromMinutes(2)) == 0)
                        {
                            pruned++;
                        }
                        else
                        {
                            failures.Add($"could not remove {doomed}");
                        }
                    }
                }
            }
        }
        return pruned;
    }

    private static string Key(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..24];

    private static async Task WriteManifestAsync(string path, IReadOnlyList<Manifest> entries, CancellationToken cancellationToken) =>
        await File.WriteAllTextAsync(path, JsonSerializer.Serialize(entries), cancellationToken).ConfigureAwait(false);

    private static async Task<IReadOnlyList<Manifest>?> ReadManifestAsync(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<List<Manifest>>(await File.ReadAllTextAsync(path).ConfigureAwait(false));
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return null;
        }
    }
}
