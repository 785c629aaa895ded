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
        IsLocal = endpoint.StartsWith("unix://", StringComparison.Ordinal);
        _logger = logger;
        // No default timeout: attach streams live as long as their session; every call passes a token instead.
        _client = new DockerClientConfiguration(new Uri(endpoint), defaultTimeout: Timeout.InfiniteTimeSpan).CreateClient();
    }

    public string Endpoint { get; }

    public bool IsLocal { get; }

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
        catch (DockerApiException e) when (e.StatusCode is HttpStatusCode.BadRequest or HttpStatusCode.InternalServerError)
        {
            // The runtime could not exec the entrypoint (e.g. the image lacks the libraries it links against).
            await RemoveContainerAsync(created.ID, CancellationToken.None).ConfigureAwait(false);
            throw new ContainerStartException(ResponseMessage(e), e);
        }
        catch
        {
            // A container that never started must not outlive the failed request.
            await RemoveContainerAsync(created.ID, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    });

    public Task<string> CreateCarrierAsync(string name, string image, IReadOnlyDictionary<string, string> labels, IReadOnlyList<VolumeMount> volumes, CancellationToken cancellationToken) => Guard(async () =>
    {
        var created = await _client.Containers.CreateContainerAsync(new CreateContainerParameters
        {
            Name = name,
            Image = image,
            Labels = labels.ToDictionary(),
            // Never started: the entrypoint only has to be a valid array.
            Entrypoint = ["/nonexistent-sandboxkit-carrier"],
            Cmd = [],
            NetworkDisabled = true,
            HostConfig = new HostConfig
            {
                NetworkMode = "none",
                Mounts = volumes.Select(v => new Mount { Type = "volume", Source = v.Source, Target = v.Target, ReadOnly = v.ReadOnly }).ToList(),
                LogConfig = new LogConfig { Type = "none" },
            },
        }, cancellationToken).ConfigureAwait(false);
        return created.ID;
    });

    public Task PutArchiveAsync(string containerId, string path, Stream tar, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            await _client.Containers.ExtractArchiveToContainerAsync(containerId, new ContainerPathStatParameters { Path = path, AllowOverwriteDirWithFile = false }, tar, cancellationToken)
                .ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException e)
        {
            throw new ContainerGoneException(containerId, e);
        }
        return true;
    });

    public Task<Stream?> GetArchiveAsync(string containerId, string path, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            var response = await _client.Containers.GetArchiveFromContainerAsync(containerId, new GetArchiveFromContainerParameters { Path = path }, statOnly: false, cancellationToken)
                .ConfigureAwait(false);
            return response.Stream;
        }
        catch (DockerContainerNotFoundException)
        {
            // Docker answers 404 both for a missing container and for a missing path in it.
            return (Stream?)null;
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
                c.Config.Labels?.AsReadOnly() ?? ReadOnlyEmpty,
                (int)c.State.Pid,
                c.State.ExitCode,
                string.IsNullOrEmpty(c.State.Error) ? null : c.State.Error);
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
                c.Labels?.AsReadOnly() ?? ReadOnlyEmpty,
                Created: new DateTimeOffset(DateTime.SpecifyKind(c.Created, DateTimeKind.Utc))))
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

    public Task<Stream> ExecStreamAsync(string containerId, IReadOnlyList<string> argv, string user, CancellationToken cancellationToken) => Guard(async () =>
    {
        ContainerExecCreateResponse exec;
        try
        {
            exec = await _client.Exec.ExecCreateContainerAsync(
                containerId,
                new ContainerExecCreateParameters { Cmd = argv.ToList(), User = user, AttachStdin = true, AttachStdout = true, AttachStderr = true, Tty = false },
                cancellationToken).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException e)
        {
            throw new ContainerGoneException(containerId, e);
        }
        catch (DockerApiException e) when (e.StatusCode == HttpStatusCode.Conflict)
        {
            // "container is not running"
            throw new ContainerGoneException(containerId, e);
        }
        var stream = await _client.Exec.StartAndAttachContainerExecAsync(exec.ID, tty: false, cancellationToken).ConfigureAwait(false);
        return (Stream)new ExecStream(stream);
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
            new VolumesCreateParameters { Name = name, Labels = labels.ToDictionary(), Driver = "local" },
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

    public Task<VolumeState?> InspectVolumeAsync(string name, CancellationToken cancellationToken) => Guard(async () =>
    {
        try
        {
            var v = await _client.Volumes.InspectAsync(name, cancellationToken).ConfigureAwait(false);
            return (VolumeState?)new VolumeState(v.Name, v.Labels?.AsReadOnly() ?? ReadOnlyEmpty);
        }
        catch (DockerApiException e) when (e.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
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
        catch (DockerApiException e) when (e.StatusCode == HttpStatusCode.Conflict)
        {
            throw new VolumeInUseException(name, e);
        }
        return true;
    });

    public void Dispose() => _client.Dispose();

    private static readonly IReadOnlyDictionary<string, string> ReadOnlyEmpty = new Dictionary<string, string>().AsReadOnly();

    private static List<ThrottleDevice>? Ceilings(ContainerSpec spec, Func<BlockIoCeiling, long> rate)
    {
        var devices = spec.BlockIoCeilings.Where(c => rate(c) > 0).Select(c => new ThrottleDevice { Path = c.Device, Rate = (ulong)rate(c) }).ToList();
        return devices.Count > 0 ? devices : null;
    }

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
            CapAdd = spec.AddCapabilities.Count > 0 ? spec.AddCapabilities.ToList() : null,
            DNS = spec.Dns.Count > 0 ? spec.Dns.ToList() : null,
            BlkioWeight = spec.BlockIoWeight is { } weight ? (ushort)weight : (ushort)0,
            ShmSize = spec.ShmSizeBytes ?? 0,
            BlkioDeviceReadBps = Ceilings(spec, c => c.ReadBytesPerSecond),
            BlkioDeviceWriteBps = Ceilings(spec, c => c.WriteBytesPerSecond),
            BlkioDeviceReadIOps = Ceilings(spec, c => c.ReadIops),
            BlkioDeviceWriteIOps = Ceilings(spec, c => c.WriteIops),
            SecurityOpt = spec.NoNewPrivileges ? ["no-new-privileges:true"] : null,
            Init = spec.Init,
            Tmpfs = spec.Tmpfs.ToDictionary(),
            Mounts = spec.Volumes.Select(v => new Mount { Type = v.Bind ? "bind" : "volume", Source = v.Source, Target = v.Target, ReadOnly = v.ReadOnly })
                .Concat(spec.AnonymousVolumes.Select(path => new Mount
                {
                    Type = "volume",
                    Target = path,
                    // Labelled like the container, so a leak check by label sees them too.
                    VolumeOptions = new VolumeOptions { Labels = spec.Labels.ToDictionary() },
                }))
                .ToList(),
            // Output travels on the supervisor's channel; a json-file log would copy every byte to disk.
            LogConfig = new LogConfig { Type = "none" },
        };
        return new CreateContainerParameters
        {
            Name = spec.Name,
            Image = spec.Image,
            Labels = spec.Labels.ToDictionary(),
            Env = spec.Environment.Select(kv => $"{kv.Key}={kv.Value}").ToList(),
            Entrypoint = spec.Entrypoint?.ToList(),
            Cmd = spec.Command?.ToList(),
            User = spec.User,
            WorkingDir = spec.WorkingDirectory,
            OpenStdin = false,
            AttachStdin = false,
            AttachStdout = false,
            AttachStderr = false,
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

    private static string ResponseMessage(DockerApiException e)
    {
        // Docker's body is {"message":"..."}; fall back to the whole text.
        var body = e.ResponseBody ?? e.Message;
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(body);
            if (doc.RootElement.TryGetProperty("message", out var m) && m.GetString() is { } text)
            {
                return text;
            }
        }
        catch (System.Text.Json.JsonException)
        {
        }
        return body;
    }

    /// <summary>An exec's hijacked, multiplexed stream as a plain duplex stream: stdout in, stdin out, stderr dropped.</summary>
    private sealed class ExecStream(MultiplexedStream stream) : Stream
    {
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray((ReadOnlyMemory<byte>)buffer, out var segment))
            {
                var rented = new byte[buffer.Length];
                var n = await ReadAsync(rented, 0, rented.Length, cancellationToken).ConfigureAwait(false);
                rented.AsSpan(0, n).CopyTo(buffer.Span);
                return n;
            }
            return await ReadAsync(segment.Array!, segment.Offset, segment.Count, cancellationToken).ConfigureAwait(false);
        }

        public override async Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            while (true)
            {
                var result = await stream.ReadOutputAsync(buffer, offset, count, cancellationToken).ConfigureAwait(false);
                if (result.EOF)
                {
                    return 0;
                }
                if (result.Target == MultiplexedStream.TargetStream.StandardOut)
                {
                    return result.Count;
                }
                // The relay's stderr has nothing the server needs; it is never logged verbatim.
            }
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray(buffer, out var segment))
            {
                segment = new ArraySegment<byte>(buffer.ToArray());
            }
            return new ValueTask(stream.WriteAsync(segment.Array!, segment.Offset, segment.Count, cancellationToken));
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            stream.WriteAsync(buffer, offset, count, cancellationToken);

        public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count, CancellationToken.None).GetAwaiter().GetResult();
        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer, offset, count, CancellationToken.None).GetAwaiter().GetResult();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                stream.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
