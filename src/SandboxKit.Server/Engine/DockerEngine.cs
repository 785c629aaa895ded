using System.Net;
using System.Net.Sockets;
using System.Text;
using Docker.DotNet;
using Docker.DotNet.Models;

namespace SandboxKit.Server.Engine;

/// <summary><see cref="IContainerEngine"/> over the Docker Engine API (one <see cref="DockerClient"/>, reused).</summary>
internal sealed class DockerEngine : IContainerEngine, IDisposable
{
    private const int ExecOutputCap = 1 << 20;
    private readonly DockerClient _client;
    private readonly ILogger<DockerEngine> _logger;

    public DockerEngine(string endpoint, ILogger<DockerEngine> logger)
    {
        Endpoint = endpoint;
        _logger = logger;
        // No default timeout: attach streams live as long as their session; every call passes a token instead.
        _client = new DockerClientConfiguration(new Uri(endpoint), defaultTimeout: Timeout.InfiniteTimeSpan).CreateClient();
    }

    public string Endpoint { get; }

    /// <summary>The endpoint from <c>DOCKER_HOST</c>, else the local socket.</summary>
    public static string DefaultEndpoint =>
        Environment.GetEnvironmentVariable("DOCKER_HOST") is { Length: > 0 } host ? host : "unix:///var/run/docker.sock";

    public Task<EngineInfo> GetInfoAsync(CancellationToken cancellationToken) => Guard(async () =>
    {
        var version = await _client.System.GetVersionAsync(cancellationToken).ConfigureAwait(false);
        var info = await _client.System.GetSystemInfoAsync(cancellationToken).ConfigureAwait(false);
        var runtimes = info.Runtimes?.Keys.Order(StringComparer.Ordinal).ToArray() ?? [];
        return new EngineInfo(version.Version, version.APIVersion, runtimes);
    });

    public Task<bool> ImageExistsAsync(string image, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            await _client.Images.InspectImageAsync(image, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (DockerImageNotFoundException)
        {
            return false;
        }
    });

    public Task<string> RunContainerAsync(ContainerSpec spec, CancellationToken cancellationToken) => Guard(async () =>
    {
        var created = await _client.Containers.CreateContainerAsync(ToParameters(spec), cancellationToken).ConfigureAwait(false);
        try
        {
            await _client.Containers.StartContainerAsync(created.ID, new ContainerStartParameters(), cancellationToken).ConfigureAwait(false);
            return created.ID;
        }
        catch
        {
            // A container that never started must not outlive the failed request.
            await RemoveContainerAsync(created.ID, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    });

    public Task<ContainerState?> InspectContainerAsync(string containerId, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            var c = await _client.Containers.InspectContainerAsync(containerId, cancellationToken).ConfigureAwait(false);
            return (ContainerState?)new ContainerState(
                c.ID,
                c.Name.TrimStart('/'),
                c.State.Running,
                c.State.OOMKilled,
                c.Config.Labels?.AsReadOnly() ?? ReadOnlyEmpty);
        }
        catch (DockerContainerNotFoundException)
        {
            return null;
        }
    });

    public Task<IReadOnlyList<ContainerState>> ListContainersAsync(string labelKey, string labelValue, CancellationToken cancellationToken) => Guard(async () =>
    {
        var list = await _client.Containers.ListContainersAsync(
            new ContainersListParameters
            {
                All = true,
                Filters = new Dictionary<string, IDictionary<string, bool>>
                {
                    ["label"] = new Dictionary<string, bool> { [$"{labelKey}={labelValue}"] = true },
                },
            },
            cancellationToken).ConfigureAwait(false);
        return (IReadOnlyList<ContainerState>)list
            .Select(c => new ContainerState(
                c.ID,
                c.Names.FirstOrDefault()?.TrimStart('/') ?? c.ID,
                string.Equals(c.State, "running", StringComparison.Ordinal),
                false,
                c.Labels?.AsReadOnly() ?? ReadOnlyEmpty))
            .ToList();
    });

    public Task RemoveContainerAsync(string containerId, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            await _client.Containers.RemoveContainerAsync(
                containerId,
                new ContainerRemoveParameters { Force = true, RemoveVolumes = true },
                cancellationToken).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException)
        {
        }
        catch (DockerApiException e) when (e.StatusCode == HttpStatusCode.Conflict)
        {
            // "removal already in progress": someone else is removing it, which is what we wanted.
        }
        return true;
    });

    public Task<IAttachedStream> AttachAsync(string containerId, CancellationToken cancellationToken) => Guard(async () =>
    {
        MultiplexedStream stream;
        try
        {
            stream = await _client.Containers.AttachContainerAsync(
                containerId,
                tty: false,
                new ContainerAttachParameters { Stream = true, Stdin = true, Stdout = true, Stderr = true },
                cancellationToken).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException e)
        {
            throw new ContainerGoneException(containerId, e);
        }
        return (IAttachedStream)new AttachedStream(stream, containerId, _logger);
    });

    public Task<ExecOutcome> ExecAsync(string containerId, IReadOnlyList<string> argv, CancellationToken cancellationToken) => Guard(async () =>
    {
        var exec = await _client.Exec.ExecCreateContainerAsync(
            containerId,
            new ContainerExecCreateParameters { Cmd = argv.ToList(), AttachStdout = true, AttachStderr = true },
            cancellationToken).ConfigureAwait(false);
        using var stream = await _client.Exec.StartAndAttachContainerExecAsync(exec.ID, tty: false, cancellationToken).ConfigureAwait(false);
        var output = new MemoryStream();
        var buffer = new byte[16 * 1024];
        while (true)
        {
            var read = await stream.ReadOutputAsync(buffer, 0, buffer.Length, cancellationToken).ConfigureAwait(false);
            if (read.EOF)
            {
                break;
            }
            var room = ExecOutputCap - (int)output.Length;
            if (room > 0)
            {
                output.Write(buffer, 0, Math.Min(room, read.Count));
            }
        }
        var inspect = await _client.Exec.InspectContainerExecAsync(exec.ID, cancellationToken).ConfigureAwait(false);
        return new ExecOutcome(inspect.ExitCode, Encoding.UTF8.GetString(output.GetBuffer(), 0, (int)output.Length));
    });

    public Task<ContainerStats?> GetStatsAsync(string containerId, CancellationToken cancellationToken) => Guard(async () =>
    {
        var reading = new LastReading<ContainerStatsResponse>();
        try
        {
            await _client.Containers.GetContainerStatsAsync(
                containerId,
                new ContainerStatsParameters { Stream = false, OneShot = true },
                reading,
                cancellationToken).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException)
        {
            return null;
        }
        return reading.Value is not { } r
            ? null
            : (ContainerStats?)new ContainerStats(
                (long)r.MemoryStats.Usage,
                (long)r.MemoryStats.Limit,
                r.CPUStats.CPUUsage.TotalUsage / 1e9,
                (long)r.PidsStats.Current);
    });

    public Task CreateVolumeAsync(string name, IReadOnlyDictionary<string, string> labels, CancellationToken cancellationToken) => Guard(async () =>
    {
        await _client.Volumes.CreateAsync(
            new VolumesCreateParameters { Name = name, Labels = labels.ToDictionary() },
            cancellationToken).ConfigureAwait(false);
        return true;
    });

    public Task<IReadOnlyList<VolumeState>> ListVolumesAsync(string labelKey, string labelValue, CancellationToken cancellationToken) => Guard(async () =>
    {
        var response = await _client.Volumes.ListAsync(
            new VolumesListParameters
            {
                Filters = new Dictionary<string, IDictionary<string, bool>>
                {
                    ["label"] = new Dictionary<string, bool> { [$"{labelKey}={labelValue}"] = true },
                },
            },
            cancellationToken).ConfigureAwait(false);
        return (IReadOnlyList<VolumeState>)(response.Volumes?.Select(v => new VolumeState(v.Name, v.Labels?.AsReadOnly() ?? ReadOnlyEmpty)).ToList() ?? []);
    });

    public Task RemoveVolumeAsync(string name, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            await _client.Volumes.RemoveAsync(name, force: true, cancellationToken).ConfigureAwait(false);
        }
        catch (DockerApiException e) when (e.StatusCode == HttpStatusCode.NotFound)
        {
        }
        return true;
    });

    public void Dispose() => _client.Dispose();

    private static readonly IReadOnlyDictionary<string, string> ReadOnlyEmpty = new Dictionary<string, string>().AsReadOnly();

    private static CreateContainerParameters ToParameters(ContainerSpec spec)
    {
        var host = new HostConfig
        {
            Memory = spec.MemoryBytes,
            // Equal to Memory: no swap on top of the limit.
            MemorySwap = spec.MemoryBytes,
            NanoCPUs = (long)Math.Round(spec.Cpus * 1_000_000_000),
            PidsLimit = spec.PidsLimit,
            NetworkMode = spec.NetworkMode,
            Runtime = string.IsNullOrEmpty(spec.Runtime) ? null : spec.Runtime,
            ReadonlyRootfs = spec.ReadOnlyRootFilesystem,
            CapDrop = spec.DropAllCapabilities ? ["ALL"] : null,
            SecurityOpt = spec.NoNewPrivileges ? ["no-new-privileges:true"] : null,
            Init = spec.Init,
            Tmpfs = spec.Tmpfs.ToDictionary(),
            Mounts = spec.Volumes.Select(v => new Mount { Type = "volume", Source = v.Key, Target = v.Value })
                .Concat(spec.AnonymousVolumes.Select(path => new Mount
                {
                    Type = "volume",
                    Target = path,
                    // Labelled like the container, so a leak check by label sees them too.
                    VolumeOptions = new VolumeOptions { Labels = spec.Labels.ToDictionary() },
                }))
                .ToList(),
            // Output goes to the session's attach stream; a json-file log would copy every byte to disk.
            LogConfig = new LogConfig { Type = "none" },
        };
        return new CreateContainerParameters
        {
            Name = spec.Name,
            Image = spec.Image,
            Labels = spec.Labels.ToDictionary(),
            Env = spec.Environment.Select(kv => $"{kv.Key}={kv.Value}").ToList(),
            Cmd = spec.Command?.ToList(),
            User = spec.User,
            WorkingDir = spec.WorkingDirectory,
            OpenStdin = spec.OpenStdin,
            StdinOnce = false,
            AttachStdin = spec.OpenStdin,
            AttachStdout = true,
            AttachStderr = true,
            Tty = false,
            HostConfig = host,
        };
    }

    private async Task<T> Guard<T>(Func<Task<T>> call)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (Exception e) when (IsUnreachable(e))
        {
            throw new EngineUnavailableException($"The container engine at {Endpoint} is not reachable: {Innermost(e).Message}", e);
        }
    }

    private static bool IsUnreachable(Exception e) => e switch
    {
        HttpRequestException or SocketException or IOException => true,
        TimeoutException => true,
        DockerApiException api => api.StatusCode is HttpStatusCode.ServiceUnavailable or HttpStatusCode.BadGateway,
        AggregateException agg => agg.InnerExceptions.Any(IsUnreachable),
        _ => e.InnerException is not null && IsUnreachable(e.InnerException),
    };

    private static Exception Innermost(Exception e) => e.InnerException is null ? e : Innermost(e.InnerException);

    /// <summary>Keeps the reading synchronously (Progress&lt;T&gt; would post it to the thread pool, after the call returns).</summary>
    private sealed class LastReading<T> : IProgress<T>
    {
        public T? Value { get; private set; }

        public void Report(T value) => Value = value;
    }

    private sealed class AttachedStream(MultiplexedStream stream, string containerId, ILogger logger) : IAttachedStream
    {
        public async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken)
        {
            // MultiplexedStream wants arrays; the reader passes an array-backed buffer.
            if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray((ReadOnlyMemory<byte>)buffer, out var segment))
            {
                throw new ArgumentException("Buffer must be array-backed.", nameof(buffer));
            }
            // One reader at a time by contract: the agent connection's read loop.
            while (true)
            {
                var result = await stream.ReadOutputAsync(segment.Array!, segment.Offset, segment.Count, cancellationToken).ConfigureAwait(false);
                if (result.EOF)
                {
                    return 0;
                }
                if (result.Target == MultiplexedStream.TargetStream.StandardError)
                {
                    // The agent's stderr carries only human-readable log lines.
                    logger.LogInformation("agent {Container}: {Line}", containerId[..12], Encoding.UTF8.GetString(segment.Array!, segment.Offset, result.Count).TrimEnd());
                    continue;
                }
                return result.Count;
            }
        }

        public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
        {
            if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray(data, out var segment))
            {
                segment = new ArraySegment<byte>(data.ToArray());
            }
            await stream.WriteAsync(segment.Array!, segment.Offset, segment.Count, cancellationToken).ConfigureAwait(false);
        }

        public ValueTask DisposeAsync()
        {
            stream.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
