using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Docker.DotNet;
using Docker.DotNet.Models;

namespace SandboxKit.TestEngines;

/// <summary>
/// A private Docker engine for tests: its own dockerd (with its own containerd) in its own network namespace, data
/// root, exec root and cgroup, so a test can stop, kill or restart it under live sessions without touching the
/// machine's main engine, or run several SandboxKit nodes with an engine each.
/// </summary>
/// <remarks>
/// <para>Layout (all derived from <see cref="Id"/>, <c>skte</c> + 8 hex digits):</para>
/// <list type="bullet">
/// <item>network namespace <c>/run/netns/ID</c>, joined to the host by veth <c>IDh</c> (host, <see cref="HostAddress"/>)
/// and <c>IDn</c> (namespace, <see cref="NamespaceAddress"/>) on a /24 of 10.213.0.0/16 that no route of the machine
/// overlaps; no bridge, no iptables rules, no masquerading, so containers reach nothing beyond the engine's namespace
/// (use network mode <c>none</c> or <c>host</c>, which is the namespace);</item>
/// <item>dockerd runs under <c>nsenter --net</c> only (not <c>ip netns exec</c>, which remounts /sys and hides the
/// cgroup hierarchies), so it shares the host's mount and pid namespaces: volume paths and <c>/proc/PID/root</c> of its
/// containers are reachable from the test process as with the main engine;</item>
/// <item>data root <c>/var/lib/sandboxkit-test-engines/engines/ID</c>; socket, exec root, daemon.json and log in
/// <c>/run/sandboxkit-test-engines/ID</c>;</item>
/// <item>cgroup <c>/ID</c>: dockerd (and so containerd and every shim) in <c>/ID/daemon</c> of the pids hierarchy,
/// containers in <c>/ID/CONTAINER</c> (<c>--cgroup-parent</c>), so every process of the engine can be found and killed.</item>
/// </list>
/// <para>
/// containerd: each dockerd starts and supervises its own (not the system's): this machine has none at
/// /run/containerd/containerd.sock (the main dockerd runs a private one too), sharing the main engine's would tie
/// private engines to its lifecycle, and an own containerd lives in the engine's cgroup, where the teardown finds it.
/// dockerd takes it down when it exits, even when killed; the shims survive, which is what live restore needs.
/// </para>
/// <para>
/// Cleanup: <see cref="DisposeAsync"/> removes everything (always call it: <c>await using</c>). Engines a test forgot
/// are torn down synchronously at process exit; when the process dies without running that (SIGKILL), a detached
/// watchdog waiting on the owner's lease does it; <see cref="SweepStaleAsync"/> (run automatically once per process
/// before the first start) removes whatever an earlier run left anyway. Everything is safe for tests in parallel,
/// within and across processes: ids and subnets are claimed with kernel-released file locks.
/// </para>
/// <para>Requires root, dockerd, nsenter, ip, flock and setsid (util-linux, iproute2, docker.io on Debian).</para>
/// </remarks>
public sealed partial class PrivateEngine : IAsyncDisposable
{
    private const string DockerdPath = "/usr/sbin/dockerd";
    private const string NsenterPath = "/usr/bin/nsenter";
    private const string IpPath = "/usr/sbin/ip";
    private static readonly Lazy<Task<SweepReport>> InitialSweep = new(() => SweepStaleAsync(CancellationToken.None));

    private readonly EngineNames _names;
    private readonly OwnerLease _lease;
    private readonly PrivateEngineOptions _options;
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private readonly long _registration;
    private SubnetLease? _subnet;
    private DockerClient? _client;
    private Process? _daemon;
    private int _disposed;

    private PrivateEngine(string name, EngineNames names, OwnerLease lease, PrivateEngineOptions options)
    {
        Name = name;
        _names = names;
        _lease = lease;
        _options = options;
        _registration = LiveResources.Register($"engine {names.Id} ({name})", EmergencyTeardown);
    }

    /// <summary>The label the test gave (also in the daemon's labels as <c>sandboxkit.test-engine=NAME</c>).</summary>
    public string Name { get; }

    /// <summary>The unique id every resource of this engine is named after (<c>skte</c> + 8 hex digits).</summary>
    public string Id => _names.Id;

    /// <summary>The engine's API on a unix socket, e.g. <c>unix:///run/sandboxkit-test-engines/skte1234abcd/docker.sock</c>.</summary>
    public string Endpoint => "unix://" + _names.SocketPath;

    /// <summary>The engine's API over plain TCP inside its namespace, <c>tcp://NamespaceAddress:2375</c>; null unless <see cref="PrivateEngineOptions.ListenOnTcp"/>.</summary>
    public string? TcpEndpoint => _options.ListenOnTcp ? $"tcp://{NamespaceAddress}:2375" : null;

    /// <summary>The namespace's end of the veth pair (10.213.N.2): the engine's TCP endpoint and host-network containers.</summary>
    public IPAddress NamespaceAddress => Subnet.NamespaceAddress;

    /// <summary>The host's end of the veth pair (10.213.N.1): where the engine's namespace reaches the test process.</summary>
    public IPAddress HostAddress => Subnet.HostAddress;

    /// <summary>The network namespace's name (under /run/netns).</summary>
    public string NetworkNamespace => _names.NetworkNamespace;

    /// <summary>The daemon's data root.</summary>
    public string DataRoot => _names.DataRoot;

    /// <summary>The daemon's exec root.</summary>
    public string ExecRoot => _names.ExecRoot;

    /// <summary>dockerd's log (containerd's is in it too); gone after dispose, so read it before (<see cref="ReadLogAsync"/>).</summary>
    public string LogPath => _names.LogFile;

    /// <summary>Whether live restore is on (see <see cref="PrivateEngineOptions.LiveRestore"/>).</summary>
    public bool LiveRestore => _options.LiveRestore;

    /// <summary>The running dockerd's pid, or null while it is stopped or killed.</summary>
    public int? DaemonPid => _daemon is { HasExited: false } daemon ? daemon.Id : null;

    /// <summary>True while dockerd is running (it may still be starting).</summary>
    public bool IsRunning => _daemon is { HasExited: false };

    /// <summary>How the engine came up.</summary>
    public EngineStartReport? StartReport { get; private set; }

    private SubnetLease Subnet => _subnet ?? throw new InvalidOperationException("the engine has no network yet");

    private DockerClient Client => _client ?? throw new ObjectDisposedException(nameof(PrivateEngine));

    /// <summary>
    /// Starts a private engine. Returns once its API answers; on failure everything created so far is removed and
    /// the exception names dockerd's last log lines.
    /// </summary>
    /// <param name="name">A label for logs and diagnostics (not unique: the engine gets a unique <see cref="Id"/>).</param>
    /// <param name="options">Settings; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels the start (what was created is removed).</param>
    /// <exception cref="PrivateEngineException">The machine lacks a prerequisite, or the engine did not come up.</exception>
    public static async Task<PrivateEngine> StartAsync(string name, PrivateEngineOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        options ??= new PrivateEngineOptions();
        var total = Stopwatch.StartNew();
        CheckPrerequisites();
        // Leftovers of crashed earlier runs hold subnets and disk: clear them once per process, before the first start.
        await InitialSweep.Value.WaitAsync(cancellationToken).ConfigureAwait(false);

        var engine = CreateWithLease(name, options);
        try
        {
            await engine.SetUpAsync(total, cancellationToken).ConfigureAwait(false);
            return engine;
        }
        catch
        {
            try
            {
                await engine.DisposeAsync().ConfigureAwait(false);
            }
#pragma warning disable CA1031 // The start's own failure is the one to report; the sweep retries the cleanup.
            catch (Exception)
#pragma warning restore CA1031
            {
            }
            throw;
        }
    }

    /// <summary>
    /// Loads images from the main engine (<see cref="PrivateEngineOptions.SourceEndpoint"/>). Each image is saved once
    /// to a tar cache keyed by reference and image id (kept across runs), then loaded from that file; images the engine
    /// already has with the same id are skipped. For images wanted from the start, <see cref="PrivateEngineOptions.Images"/> is much faster.
    /// </summary>
    /// <param name="images">References as the main engine knows them, e.g. <c>sandboxkit/sandbox:0.1.0</c>.</param>
    public Task<ImageLoadReport> LoadImagesAsync(params string[] images) => LoadImagesAsync(images, CancellationToken.None);

    /// <summary>Loads images from the main engine; see <see cref="LoadImagesAsync(string[])"/>.</summary>
    /// <param name="images">References as the main engine knows them.</param>
    /// <param name="cancellationToken">Cancels the load.</param>
    public async Task<ImageLoadReport> LoadImagesAsync(IEnumerable<string> images, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(images);
        var elapsed = Stopwatch.StartNew();
        var entries = new List<ImageLoadEntry>();
        foreach (var reference in images)
        {
            var cached = await ImageCache.GetTarAsync(reference, _options.SourceEndpoint, cancellationToken).ConfigureAwait(false);
            if (await ImageIdAsync(Client, reference, cancellationToken).ConfigureAwait(false) == cached.ImageId)
            {
                entries.Add(new ImageLoadEntry(reference, cached.ImageId, cached.Saved, cached.SaveTime, TimeSpan.Zero));
                continue;
            }
            var load = Stopwatch.StartNew();
            var stream = new FileStream(cached.TarPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            await using (stream.ConfigureAwait(false))
            {
                await Client.Images.LoadImageAsync(new ImageLoadParameters { Quiet = true }, stream, new Progress<JSONMessage>(), cancellationToken)
                    .ConfigureAwait(false);
            }
            var loadedId = await ImageIdAsync(Client, reference, cancellationToken).ConfigureAwait(false);
            if (loadedId != cached.ImageId)
            {
                throw new PrivateEngineException($"loading {reference} into {Id} gave image {loadedId ?? "(none)"}, expected {cached.ImageId}");
            }
            entries.Add(new ImageLoadEntry(reference, cached.ImageId, cached.Saved, cached.SaveTime, load.Elapsed));
        }
        return new ImageLoadReport(entries, elapsed.Elapsed);
    }

    /// <summary>A new Docker.DotNet client for this engine (no default timeout; the caller disposes it).</summary>
    public DockerClient CreateClient() =>
        new DockerClientConfiguration(new Uri(Endpoint), defaultTimeout: Timeout.InfiniteTimeSpan).CreateClient();

    /// <summary>Runs the docker CLI against this engine (<c>docker -H Endpoint ARGS</c>) and returns what it printed.</summary>
    /// <param name="arguments">The CLI arguments, e.g. <c>"run", "--rm", "--network", "none", image, "true"</c>.</param>
    public Task<CommandResult> DockerAsync(params string[] arguments) => DockerAsync(arguments, TimeSpan.FromMinutes(2), CancellationToken.None);

    /// <summary>Runs the docker CLI against this engine with a deadline.</summary>
    /// <param name="arguments">The CLI arguments.</param>
    /// <param name="timeout">Kills the CLI when it runs longer.</param>
    /// <param name="cancellationToken">Cancels (kills) the CLI.</param>
    public Task<CommandResult> DockerAsync(IEnumerable<string> arguments, TimeSpan timeout, CancellationToken cancellationToken) =>
        ProcessRunner.RunAsync("docker", ["-H", Endpoint, .. arguments], timeout, cancellationToken: cancellationToken);

    /// <summary>dockerd's log so far (for a failing test's output).</summary>
    public async Task<string> ReadLogAsync()
    {
        try
        {
            return await File.ReadAllTextAsync(_names.LogFile).ConfigureAwait(false);
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>
    /// Stops dockerd gracefully (SIGTERM) and waits for it and its containerd to exit; kills it after
    /// <see cref="PrivateEngineOptions.StopTimeout"/>. Without live restore dockerd stops every container first; with it
    /// the containers keep running. Does nothing when the daemon is not running.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await StopDaemonAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Kills the engine abruptly (SIGKILL) and waits until the killed processes are gone. With
    /// <see cref="KillScope.Daemon"/> (the default) only dockerd and its containerd die and the containers keep running
    /// (see <see cref="PrivateEngineOptions.LiveRestore"/> for what <see cref="RestartAsync"/> then does with them);
    /// with <see cref="KillScope.Everything"/> every container process dies too.
    /// </summary>
    /// <param name="scope">What to kill.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public async Task KillAsync(KillScope scope = KillScope.Daemon, CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await KillDaemonAsync(cancellationToken).ConfigureAwait(false);
            if (scope == KillScope.Everything)
            {
                await KillCgroupTreeAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Stops the daemon gracefully if it runs (<see cref="StopAsync"/>), then starts it again on the same data root,
    /// namespace and endpoints, and returns once the API answers. After <see cref="KillAsync"/> it is the way back.
    /// </summary>
    public async Task RestartAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            await StopDaemonAsync(cancellationToken).ConfigureAwait(false);
            await LaunchDaemonAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Removes the engine: every container (forced, with its anonymous volumes), volume and network through the API
    /// while it answers, then the daemon and every process left in its cgroup, its mounts, data and exec roots, veth,
    /// network namespace, cgroups and lease. Safe on any partial state and idempotent.
    /// </summary>
    /// <exception cref="PrivateEngineException">Something could not be removed (named in the message); the watchdog
    /// and the next sweep try again.</exception>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _lifecycle.WaitAsync().ConfigureAwait(false);
        try
        {
            // Read before the teardown, which deletes the pid file with the lease.
            var watchdog = Watchdog.ReadPid(_names.WatchdogPidFile);
            if (IsRunning && _client is not null)
            {
                await RemoveEngineObjectsAsync(_client).ConfigureAwait(false);
            }
            await KillDaemonAsync(CancellationToken.None).ConfigureAwait(false);
            var teardown = await Teardown.RunAsync(_names, CancellationToken.None).ConfigureAwait(false);
            // The watchdog (still waiting on our lease) names the engine too; it is stopped right after this check.
            var leftovers = Teardown.FindLeftovers(_names, ignorePid: watchdog)
                .Where(l => l != $"lease {_names.LeaseFile}").ToList();
            var clean = teardown.Succeeded && leftovers.Count == 0;
            if (clean)
            {
                Watchdog.Stop(_names.LeaseFile, watchdog, _names.WatchdogPidFile);
            }
            // When something survived, the lease is released with the watchdog still waiting on it: it retries at once,
            // and the lease file stays for the next sweep if that fails too.
            _subnet?.Dispose();
            _lease.Release(deleteFile: clean);
            LiveResources.Unregister(_registration);
            _client?.Dispose();
            _client = null;
            if (!clean)
            {
                throw new PrivateEngineException(
                    $"engine {Id} ({Name}) was not removed completely: {string.Join("; ", leftovers)} {teardown.Stderr.Trim()}".Trim());
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Removes what earlier runs left: engines whose owning process is gone (their lease is free) are torn down
    /// completely, as are stray namespaces, veths, cgroups and directories named after an engine id with no live owner;
    /// Redis servers of dead owners are killed; cached image tars and seeds for image ids the main engine no longer has
    /// are deleted. Engines of live processes (other test projects running in parallel) are never touched.
    /// </summary>
    public static async Task<SweepReport> SweepStaleAsync(CancellationToken cancellationToken = default)
    {
        CheckPrerequisites();
        var removed = new List<string>();
        var failures = new List<string>();
        foreach (var id in FindEngineIds())
        {
            var names = new EngineNames(id);
            // Held: its owner (or its watchdog, or another sweep) is alive and responsible for it.
            using var lease = OwnerLease.TryAcquire(names.LeaseFile, FileMode.OpenOrCreate);
            if (lease is null)
            {
                continue;
            }
            var result = await Teardown.RunAsync(names, cancellationToken).ConfigureAwait(false);
            if (result.Succeeded)
            {
                removed.Add(id);
            }
            else
            {
                failures.Add($"{id}: {result.Stderr.Trim()}");
            }
            lease.Release(deleteFile: result.Succeeded);
        }
        SweepAbandonedSeedBuilds(failures);
        var redis = RedisServer.SweepStale(failures);
        var pruned = await ImageCache.PruneObsoleteAsync(PrivateEngineOptions.DefaultSourceEndpoint, failures, cancellationToken).ConfigureAwait(false);
        return new SweepReport(removed, redis, failures, pruned);
    }

    /// <summary>
    /// Test seam for the sweep and the watchdog: makes this engine look like one whose test process crashed (the lease
    /// is released, nothing is torn down, the daemon keeps running). With <paramref name="keepWatchdog"/> the watchdog
    /// sees the free lease and tears the engine down by itself; without, it is stopped first and only a sweep can.
    /// </summary>
    internal void AbandonForTesting(bool keepWatchdog)
    {
        Interlocked.Exchange(ref _disposed, 1);
        if (!keepWatchdog)
        {
            Watchdog.Stop(_names.LeaseFile, _names.WatchdogPidFile);
        }
        LiveResources.Unregister(_registration);
        _subnet?.Dispose();
        _lease.Release(deleteFile: false);
        _client?.Dispose();
        _client = null;
        // The daemon is this process's child; forget it without killing it, as a crashed owner would.
        _daemon?.Dispose();
        _daemon = null;
    }

    internal EngineNames Names => _names;

    /// <summary>What is left of the engine with that id (empty when it is gone completely); for tests and diagnostics.</summary>
    /// <param name="id">An engine id (<see cref="Id"/>).</param>
    public static IReadOnlyList<string> FindLeftovers(string id) =>
        EngineNames.IsEngineId(id) ? Teardown.FindLeftovers(new EngineNames(id)) : throw new ArgumentException($"not an engine id: {id}", nameof(id));

    private static PrivateEngine CreateWithLease(string name, PrivateEngineOptions options)
    {
        Directory.CreateDirectory(EngineNames.LeaseDirectory);
        // A clash of random ids is all but impossible, but CreateNew makes it harmless: the loser draws again. So is a
        // sweep that grabs the fresh file between its creation and its lock: the creator fails to lock and draws again.
        for (var attempt = 0; attempt < 20; attempt++)
        {
            var names = EngineNames.CreateNew();
            var owner = JsonSerializer.Serialize(new { pid = Environment.ProcessId, name, started = DateTimeOffset.UtcNow });
            if (OwnerLease.TryAcquire(names.LeaseFile, FileMode.CreateNew, owner) is { } lease)
            {
                return new PrivateEngine(name, names, lease, options);
            }
        }
        throw new PrivateEngineException("could not claim a fresh engine id");
    }

    private async Task SetUpAsync(Stopwatch total, CancellationToken cancellationToken)
    {
        // The watchdog comes first: from here on, a crash of this process at any point still gets cleaned up.
        await Watchdog.StartAsync(_names.LeaseFile, _names.WatchdogPidFile, Teardown.Command(_names), cancellationToken).ConfigureAwait(false);
        _subnet = SubnetAllocator.Allocate();
        Directory.CreateDirectory(_names.RunDirectory);
        Directory.CreateDirectory(_names.DataRoot);

        var seedPreparation = TimeSpan.Zero;
        var seedClone = TimeSpan.Zero;
        var seedBuilt = false;
        if (_options.Images.Count > 0)
        {
            var preparation = Stopwatch.StartNew();
            var seed = await ImageCache.GetSeedAsync(_options.Images, _options.SourceEndpoint, cancellationToken).ConfigureAwait(false);
            seedPreparation = preparation.Elapsed;
            seedBuilt = seed.Built;
            var clone = Stopwatch.StartNew();
            await ImageCache.CloneSeedAsync(seed.Directory, _names.DataRoot, cancellationToken).ConfigureAwait(false);
            seedClone = clone.Elapsed;
        }

        await CreateNetworkAsync(cancellationToken).ConfigureAwait(false);
        await File.WriteAllTextAsync(_names.ConfigFile, CreateDaemonConfig().ToJsonString(new JsonSerializerOptions { WriteIndented = true }), cancellationToken)
            .ConfigureAwait(false);
        _client = CreateClient();
        var daemonStart = Stopwatch.StartNew();
        await LaunchDaemonAsync(cancellationToken).ConfigureAwait(false);
        StartReport = new EngineStartReport(total.Elapsed, seedPreparation, seedBuilt, seedClone, daemonStart.Elapsed);
    }

    private async Task CreateNetworkAsync(CancellationToken cancellationToken)
    {
        var subnet = Subnet;
        // Two batches (host side, namespace side) instead of nine ip invocations.
        var host = string.Join('\n',
            $"netns add {_names.NetworkNamespace}",
            $"link add {_names.HostVeth} type veth peer name {_names.NamespaceVeth} netns {_names.NetworkNamespace}",
            $"addr add {subnet.HostAddress}/24 dev {_names.HostVeth}",
            $"link set {_names.HostVeth} up") + "\n";
        await ProcessRunner.RunCheckedAsync(IpPath, ["-batch", "-"], TimeSpan.FromSeconds(30), host, cancellationToken).ConfigureAwait(false);
        var inside = string.Join('\n',
            "link set lo up",
            $"addr add {subnet.NamespaceAddress}/24 dev {_names.NamespaceVeth}",
            $"link set {_names.NamespaceVeth} up") + "\n";
        await ProcessRunner.RunCheckedAsync(IpPath, ["-n", _names.NetworkNamespace, "-batch", "-"], TimeSpan.FromSeconds(30), inside, cancellationToken)
            .ConfigureAwait(false);
    }

    private JsonObject CreateDaemonConfig()
    {
        var hosts = new JsonArray(Endpoint);
        if (_options.ListenOnTcp)
        {
            hosts.Add(TcpEndpoint);
        }
        var config = new JsonObject
        {
            ["data-root"] = _names.DataRoot,
            ["exec-root"] = _names.ExecRoot,
            ["pidfile"] = _names.PidFile,
            ["hosts"] = hosts,
            ["tls"] = false,
            // Isolation: no docker0 bridge, no iptables rules, no NAT and no forwarding sysctl; traffic of this engine
            // stays in its namespace and on its veth.
            ["bridge"] = "none",
            ["iptables"] = false,
            ["ip-masq"] = false,
            ["ip-forward"] = false,
            ["userland-proxy"] = false,
            ["cgroup-parent"] = "/" + _names.Cgroup,
            ["live-restore"] = _options.LiveRestore,
            ["storage-driver"] = "overlay2",
            // Own containerd, but namespaces named after the engine, so its shims are recognisable in a process list.
            ["containerd-namespace"] = _names.Id,
            ["containerd-plugins-namespace"] = _names.Id + "-plugins",
            ["labels"] = new JsonArray($"sandboxkit.test-engine={Name}", $"sandboxkit.test-engine.id={Id}"),
        };
        if (_options.InheritRuntimes && ReadMachineRuntimes() is { } runtimes)
        {
            config["runtimes"] = runtimes;
        }
        _options.ConfigureDaemon?.Invoke(config);
        return config;
    }

    private static JsonNode? ReadMachineRuntimes()
    {
        const string machineConfig = "/etc/docker/daemon.json";
        if (!File.Exists(machineConfig))
        {
            return null;
        }
        try
        {
            return JsonNode.Parse(File.ReadAllText(machineConfig))?["runtimes"]?.DeepClone();
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// Starts dockerd: a shell puts itself into the engine's daemon cgroup, then becomes nsenter, which enters the
    /// network namespace and becomes dockerd, so the <see cref="Process"/> we hold is dockerd itself. Its output goes
    /// to the log file, not to pipes of ours: it must not die of SIGPIPE when this process goes away.
    /// </summary>
    private async Task LaunchDaemonAsync(CancellationToken cancellationToken)
    {
        var cgroup = DaemonCgroup();
        Directory.CreateDirectory(cgroup);
        // A killed containerd is reparented to init and may linger as a zombie for a while; dockerd takes a pid file
        // whose pid still exists for a live containerd, waits for it to answer and gives up after 15 s. A pid file
        // of a dead process is only in the way: the daemon then starts a fresh containerd, which reattaches the shims.
        foreach (var pidFile in new[] { _names.ContainerdPidFile, _names.PidFile })
        {
            if (File.Exists(pidFile) && (!int.TryParse(File.ReadAllText(pidFile).Trim(), out var stale) || !IsAlive(stale)))
            {
                File.Delete(pidFile);
            }
        }
        const string launcher = "echo $$ > \"$1\" && exec \"$2\" --net=\"$3\" -- \"$4\" --config-file \"$5\" >>\"$6\" 2>&1 </dev/null";
        var info = ProcessRunner.CreateStartInfo("/bin/sh",
            ["-c", launcher, "sandboxkit-dockerd", Path.Combine(cgroup, "cgroup.procs"), NsenterPath, _names.NetworkNamespacePath,
             DockerdPath, _names.ConfigFile, _names.LogFile]);
        var daemon = Process.Start(info) ?? throw new PrivateEngineException("could not start dockerd");
        daemon.StandardInput.Close();
        _ = daemon.StandardOutput.ReadToEndAsync(CancellationToken.None);
        _ = daemon.StandardError.ReadToEndAsync(CancellationToken.None);
        _daemon?.Dispose();
        _daemon = daemon;

        var deadline = Stopwatch.StartNew();
        while (true)
        {
            if (daemon.HasExited)
            {
                throw new PrivateEngineException($"dockerd of {Id} exited with {daemon.ExitCode} while starting:\n{await LogTailAsync().ConfigureAwait(false)}");
            }
            if (deadline.Elapsed > _options.StartTimeout)
            {
                throw new PrivateEngineException($"dockerd of {Id} did not answer within {_options.StartTimeout}:\n{await LogTailAsync().ConfigureAwait(false)}");
            }
            if (File.Exists(_names.SocketPath))
            {
                using var attempt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                attempt.CancelAfter(TimeSpan.FromSeconds(2));
                try
                {
                    await Client.System.PingAsync(attempt.Token).ConfigureAwait(false);
                    return;
                }
                catch (Exception e) when (e is HttpRequestException or IOException or OperationCanceledException or DockerApiException
                                              && !cancellationToken.IsCancellationRequested)
                {
                    // Not listening yet (the socket file may be stale from a killed daemon).
                }
            }
            await Task.Delay(15, cancellationToken).ConfigureAwait(false);
        }
    }

    private string DaemonCgroup() =>
        File.Exists("/sys/fs/cgroup/cgroup.controllers")
            ? Path.Combine("/sys/fs/cgroup", _names.Cgroup, "daemon")          // cgroup v2: one unified tree
            : Path.Combine("/sys/fs/cgroup/pids", _names.Cgroup, "daemon");   // v1: the pids hierarchy is enough to track processes

    private async Task StopDaemonAsync(CancellationToken cancellationToken)
    {
        if (_daemon is not { HasExited: false } daemon)
        {
            return;
        }
        var containerd = ContainerdPid();
        Signal(daemon.Id, SigTerm);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.StopTimeout);
        try
        {
            await daemon.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            await KillDaemonAsync(cancellationToken).ConfigureAwait(false);
        }
        await WaitGoneAsync(containerd, cancellationToken).ConfigureAwait(false);
    }

    private async Task KillDaemonAsync(CancellationToken cancellationToken)
    {
        var containerd = ContainerdPid();
        if (_daemon is { HasExited: false } daemon)
        {
            Signal(daemon.Id, SigKill);
            await daemon.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
        }
        // dockerd's death takes its containerd along, but not at once: kill it too, so the API is gone for sure.
        if (containerd is { } pid)
        {
            Signal(pid, SigKill);
            await WaitGoneAsync(pid, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task KillCgroupTreeAsync(CancellationToken cancellationToken)
    {
        for (var round = 0; round < 200; round++)
        {
            var pids = CgroupPids();
            if (pids.Count == 0)
            {
                return;
            }
            foreach (var pid in pids)
            {
                Signal(pid, SigKill);
            }
            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }
        throw new PrivateEngineException($"processes of {Id} survive SIGKILL: {string.Join(' ', CgroupPids())}");
    }

    private List<int> CgroupPids()
    {
        var pids = new List<int>();
        // The pids hierarchy on cgroup v1 (dockerd sits in /ID/daemon, containers in /ID/CONTAINER), the tree itself on v2.
        var tree = File.Exists("/sys/fs/cgroup/cgroup.controllers")
            ? Path.Combine("/sys/fs/cgroup", _names.Cgroup)
            : Path.Combine("/sys/fs/cgroup/pids", _names.Cgroup);
        if (!Directory.Exists(tree))
        {
            return pids;
        }
        foreach (var file in Directory.EnumerateFiles(tree, "cgroup.procs", SearchOption.AllDirectories))
        {
            foreach (var line in File.ReadAllLines(file))
            {
                if (int.TryParse(line, out var pid) && IsAlive(pid))
                {
                    pids.Add(pid);
                }
            }
        }
        return pids;
    }

    /// <summary>containerd's pid from its pid file, if that process still is this engine's containerd.</summary>
    private int? ContainerdPid()
    {
        try
        {
            if (int.TryParse(File.ReadAllText(_names.ContainerdPidFile).Trim(), out var pid)
                && File.ReadAllText($"/proc/{pid}/cmdline").Contains(_names.ExecRoot, StringComparison.Ordinal))
            {
                return pid;
            }
        }
        catch (IOException)
        {
        }
        return null;
    }

    private static async Task WaitGoneAsync(int? pid, CancellationToken cancellationToken)
    {
        if (pid is null)
        {
            return;
        }
        var deadline = Stopwatch.StartNew();
        while (IsAlive(pid.Value) && deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(10, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Alive and not a zombie (a killed child of another process may wait a moment to be reaped).</summary>
    internal static bool IsAlive(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static async Task RemoveEngineObjectsAsync(DockerClient client)
    {
        using var budget = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            var containers = await client.Containers.ListContainersAsync(new ContainersListParameters { All = true }, budget.Token).ConfigureAwait(false);
            await Task.WhenAll(containers.Select(c => client.Containers.RemoveContainerAsync(
                c.ID, new ContainerRemoveParameters { Force = true, RemoveVolumes = true }, budget.Token))).ConfigureAwait(false);
            var volumes = await client.Volumes.ListAsync(budget.Token).ConfigureAwait(false);
            await Task.WhenAll((volumes.Volumes ?? []).Select(v => client.Volumes.RemoveAsync(v.Name, force: true, budget.Token))).ConfigureAwait(false);
            var networks = await client.Networks.ListNetworksAsync(new NetworksListParameters(), budget.Token).ConfigureAwait(false);
            await Task.WhenAll(networks.Where(n => n.Name is not ("none" or "host" or "bridge"))
                .Select(n => client.Networks.DeleteNetworkAsync(n.ID, budget.Token))).ConfigureAwait(false);
        }
        catch (Exception e) when (e is DockerApiException or HttpRequestException or IOException or OperationCanceledException)
        {
            // The teardown that follows kills and deletes whatever the API could not remove.
        }
    }

    internal static async Task<string?> ImageIdAsync(DockerClient client, string reference, CancellationToken cancellationToken)
    {
        try
        {
            return (await client.Images.InspectImageAsync(reference, cancellationToken).ConfigureAwait(false)).ID;
        }
        catch (DockerImageNotFoundException)
        {
            return null;
        }
    }

    private async Task<string> LogTailAsync()
    {
        var log = await ReadLogAsync().ConfigureAwait(false);
        // grpc's connection chatter says nothing a reader needs and would push the real cause out of the tail.
        var lines = log.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.Contains("module=grpc", StringComparison.Ordinal));
        return string.Join('\n', lines.TakeLast(30));
    }

    /// <summary>Process exit without a dispose: kill and tear down synchronously, then free the lease.</summary>
    private void EmergencyTeardown()
    {
        if (_daemon is { HasExited: false } daemon)
        {
            Signal(daemon.Id, SigKill);
        }
        var watchdog = Watchdog.ReadPid(_names.WatchdogPidFile);
        var clean = Teardown.RunSync(_names) == 0;
        if (clean)
        {
            Watchdog.Stop(_names.LeaseFile, watchdog, _names.WatchdogPidFile);
        }
        _lease.Release(deleteFile: clean);
    }

    private static IEnumerable<string> FindEngineIds()
    {
        var ids = new SortedSet<string>(StringComparer.Ordinal);
        void AddNames(IEnumerable<string> candidates)
        {
            foreach (var candidate in candidates)
            {
                if (EngineNames.IsEngineId(candidate))
                {
                    ids.Add(candidate);
                }
            }
        }
        static IEnumerable<string> Entries(string directory, bool directories)
        {
            try
            {
                return (directories ? Directory.EnumerateDirectories(directory) : Directory.EnumerateFileSystemEntries(directory))
                    .Select(Path.GetFileName).OfType<string>().ToList();
            }
            catch (DirectoryNotFoundException)
            {
                return [];
            }
        }
        AddNames(Entries(EngineNames.LeaseDirectory, directories: false).Select(f => f.Split('.')[0]));
        AddNames(Entries(EngineNames.StateRoot, directories: true));
        AddNames(Entries(EngineNames.EnginesDirectory, directories: true));
        AddNames(Entries("/run/netns", directories: false));
        AddNames(Entries("/sys/class/net", directories: false).Where(n => n.Length == 13).Select(n => n[..12]));
        AddNames(Entries("/sys/fs/cgroup", directories: true));
        foreach (var hierarchy in Entries("/sys/fs/cgroup", directories: true))
        {
            AddNames(Entries(Path.Combine("/sys/fs/cgroup", hierarchy), directories: true));
        }
        return ids;
    }

    private static void SweepAbandonedSeedBuilds(List<string> failures)
    {
        if (!Directory.Exists(EngineNames.SeedsDirectory))
        {
            return;
        }
        foreach (var building in Directory.EnumerateDirectories(EngineNames.SeedsDirectory, ".building-*"))
        {
            var id = Path.GetFileName(building)[".building-".Length..];
            if (EngineNames.IsEngineId(id) && OwnerLease.IsHeld(new EngineNames(id).LeaseFile))
            {
                continue; // Its builder engine is alive: the seed is being made right now.
            }
            var result = ProcessRunner.RunSync("/bin/rm", ["-rf", "--one-file-system", "--", building], TimeSpan.FromMinutes(1));
            if (result != 0)
            {
                failures.Add($"could not remove {building}");
            }
        }
        // Seeds a prune renamed away but could not finish deleting.
        foreach (var obsolete in Directory.EnumerateDirectories(EngineNames.SeedsDirectory, ".obsolete-*"))
        {
            if (ProcessRunner.RunSync("/bin/rm", ["-rf", "--one-file-system", "--", obsolete], TimeSpan.FromMinutes(1)) != 0)
            {
                failures.Add($"could not remove {obsolete}");
            }
        }
    }

    private static void CheckPrerequisites()
    {
        if (!OperatingSystem.IsLinux() || !Environment.IsPrivilegedProcess)
        {
            throw new PrivateEngineException("private engines need Linux and root (network namespaces, cgroups, dockerd)");
        }
        foreach (var tool in new[] { DockerdPath, NsenterPath, IpPath, "/usr/bin/flock", "/usr/bin/setsid" })
        {
            if (!File.Exists(tool))
            {
                throw new PrivateEngineException($"{tool} is missing (Debian: apt-get install docker.io util-linux iproute2)");
            }
        }
    }

    private const int SigKill = 9;
    private const int SigTerm = 15;

    private static void Signal(int pid, int signal)
    {
        // ESRCH (already gone) is fine; anything else would show up as a process that does not exit.
        _ = Kill(pid, signal);
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
