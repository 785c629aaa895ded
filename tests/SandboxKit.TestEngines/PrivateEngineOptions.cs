using System.Text.Json.Nodes;

namespace SandboxKit.TestEngines;

/// <summary>How <see cref="PrivateEngine.StartAsync(string, PrivateEngineOptions?, CancellationToken)"/> sets an engine up.</summary>
public sealed record PrivateEngineOptions
{
    /// <summary>
    /// dockerd's <c>live-restore</c>. With it, containers keep running while the daemon is down (stopped with SIGTERM
    /// or killed) and are reattached when it starts again. Without it, a graceful stop stops every container first, and
    /// after a kill the containers keep running only until the daemon starts again, which then stops them (SIGTERM, the
    /// container's stop timeout, SIGKILL) and removes the <c>--rm</c> ones. Default: off, like a stock engine.
    /// </summary>
    public bool LiveRestore { get; init; }

    /// <summary>
    /// Also listen on <c>tcp://NamespaceAddress:2375</c> (plain HTTP, reachable only from this machine through the
    /// engine's veth). Off by default: dockerd 20.10 deliberately sleeps about a second at every start when it binds TCP
    /// without TLS, which more than doubles start and restart times.
    /// </summary>
    public bool ListenOnTcp { get; init; }

    /// <summary>
    /// Images (references in the main engine) the engine has from its first moment. They come from a seed (a data root
    /// made once per set of image ids, kept across runs) linked into the data root before the daemon starts, which takes
    /// well under a second, against seconds per image for <see cref="PrivateEngine.LoadImagesAsync(string[])"/>.
    /// </summary>
    public IReadOnlyList<string> Images { get; init; } = [];

    /// <summary>Copies the <c>runtimes</c> section (e.g. runsc) of the machine's /etc/docker/daemon.json. Default: on.</summary>
    public bool InheritRuntimes { get; init; } = true;

    /// <summary>Last say over the generated daemon.json (keys as in dockerd's configuration file).</summary>
    public Action<JsonObject>? ConfigureDaemon { get; init; }

    /// <summary>How long the daemon may take to answer after a start or restart. Default: 60 s.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// How long a graceful stop may take before the daemon is killed. Without live restore dockerd stops every container
    /// first (their stop timeout, 10 s by default, in parallel). Default: 60 s.
    /// </summary>
    public TimeSpan StopTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The main engine, where images are taken from: DOCKER_HOST if set, else the machine's socket.</summary>
    public string SourceEndpoint { get; init; } = DefaultSourceEndpoint;

    /// <summary>DOCKER_HOST when set, else <c>unix:///var/run/docker.sock</c>.</summary>
    public static string DefaultSourceEndpoint =>
        Environment.GetEnvironmentVariable("DOCKER_HOST") is { Length: > 0 } host ? host : "unix:///var/run/docker.sock";
}

/// <summary>What <see cref="PrivateEngine.KillAsync(KillScope, CancellationToken)"/> kills.</summary>
public enum KillScope
{
    /// <summary>
    /// dockerd and its containerd (SIGKILL): the engine's API disappears at once. The containers' shims and processes
    /// keep running. See <see cref="PrivateEngineOptions.LiveRestore"/> for what the next start does with them.
    /// </summary>
    Daemon,

    /// <summary>
    /// Every process of the engine (daemon, containerd, shims, every container process), like a machine losing power.
    /// The next start finds the containers exited (137); with <c>--rm</c> they are removed.
    /// </summary>
    Everything,
}

/// <summary>How an engine came up.</summary>
/// <param name="Total">From the call to a daemon that answers.</param>
/// <param name="SeedPreparation">Finding or building the image seed (zero without <see cref="PrivateEngineOptions.Images"/>).</param>
/// <param name="SeedBuilt">True when this start had to build the seed (first use of that set of image ids).</param>
/// <param name="SeedClone">Linking the seed into the data root.</param>
/// <param name="DaemonStart">From launching dockerd to its first answer.</param>
public sealed record EngineStartReport(TimeSpan Total, TimeSpan SeedPreparation, bool SeedBuilt, TimeSpan SeedClone, TimeSpan DaemonStart);

/// <summary>One image of <see cref="PrivateEngine.LoadImagesAsync(string[])"/>.</summary>
/// <param name="Reference">The reference as asked.</param>
/// <param name="ImageId">Its id (sha256:…) in the main engine, and now in this one.</param>
/// <param name="SavedToCache">True when this call had to save it from the main engine (the tar cache lacked it).</param>
/// <param name="SaveTime">Time spent saving it to the cache (zero when cached).</param>
/// <param name="LoadTime">Time spent loading the tar into this engine (zero when the engine already had it).</param>
public sealed record ImageLoadEntry(string Reference, string ImageId, bool SavedToCache, TimeSpan SaveTime, TimeSpan LoadTime);

/// <summary>The result of <see cref="PrivateEngine.LoadImagesAsync(string[])"/>.</summary>
/// <param name="Images">One entry per image, in the order asked.</param>
/// <param name="Elapsed">The whole call.</param>
public sealed record ImageLoadReport(IReadOnlyList<ImageLoadEntry> Images, TimeSpan Elapsed);

/// <summary>The result of <see cref="PrivateEngine.SweepStaleAsync(CancellationToken)"/>.</summary>
/// <param name="RemovedEngines">Ids of stale engines that were removed completely.</param>
/// <param name="RemovedRedisServers">Leases of stale Redis servers that were removed.</param>
/// <param name="Failures">What could not be removed, one line each (the next sweep tries again).</param>
/// <param name="PrunedCacheEntries">Image tars and seeds removed because the main engine no longer has those image ids.</param>
public sealed record SweepReport(
    IReadOnlyList<string> RemovedEngines, IReadOnlyList<string> RemovedRedisServers, IReadOnlyList<string> Failures, int PrunedCacheEntries);
