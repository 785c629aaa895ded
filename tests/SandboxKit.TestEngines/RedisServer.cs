using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace SandboxKit.TestEngines;

/// <summary>
/// A throw-away Redis for tests (e.g. Orleans' Redis clustering in cluster tests): Debian's redis-server (installed
/// with apt-get when missing), on 127.0.0.1 and a free port, with no persistence (no RDB snapshots, no AOF), killed
/// and its directory removed on dispose. Like the engines, it is covered by process-exit cleanup, a watchdog that
/// kills it when the test process dies, and <see cref="PrivateEngine.SweepStaleAsync"/>.
/// </summary>
public sealed class RedisServer : IAsyncDisposable
{
    private const string ServerPath = "/usr/bin/redis-server";
    private static readonly SemaphoreSlim InstallLock = new(1, 1);

    private readonly Process _process;
    private readonly OwnerLease _lease;
    private readonly string _directory;
    private readonly string _watchdogPidFile;
    private readonly long _registration;
    private int _disposed;

    private RedisServer(Process process, OwnerLease lease, string directory, string watchdogPidFile, int port)
    {
        _process = process;
        _lease = lease;
        _directory = directory;
        _watchdogPidFile = watchdogPidFile;
        Port = port;
        _registration = LiveResources.Register($"redis on port {port}", Kill);
    }

    /// <summary>Always 127.0.0.1: the server listens on loopback only.</summary>
    public static string Host => "127.0.0.1";

    /// <summary>The port it listens on.</summary>
    public int Port { get; }

    /// <summary><c>127.0.0.1:PORT</c>, the form StackExchange.Redis (and so Orleans' Redis providers) take.</summary>
    public string ConnectionString => $"{Host}:{Port}";

    /// <summary>The server's pid.</summary>
    public int ProcessId => _process.Id;

    /// <summary>
    /// Starts a server and returns once it answers PING. Installs the redis-server package first when it is missing
    /// (serialised across test processes; needs root and the Debian archive).
    /// </summary>
    public static async Task<RedisServer> StartAsync(CancellationToken cancellationToken = default)
    {
        await EnsureInstalledAsync(cancellationToken).ConfigureAwait(false);
        Directory.CreateDirectory(EngineNames.LeaseDirectory);
        Exception? last = null;
        // A free port can be taken between probing and binding: try a few.
        for (var attempt = 0; attempt < 5; attempt++)
        {
            try
            {
                return await TryStartAsync(FreePort(), cancellationToken).ConfigureAwait(false);
            }
            catch (PrivateEngineException e)
            {
                last = e;
            }
        }
        throw new PrivateEngineException("redis-server did not start", last!);
    }

    /// <summary>Sends one command (RESP) and returns the reply as text: simple strings and bulk strings as they are,
    /// integers in decimal, arrays as their elements on separate lines, nil as null. Errors throw.</summary>
    /// <param name="arguments">The command and its arguments, e.g. <c>"SET", "k", "v"</c>.</param>
    public Task<string?> ExecuteAsync(params string[] arguments) => ExecuteAsync(arguments, CancellationToken.None);

    /// <summary>Sends one command; see <see cref="ExecuteAsync(string[])"/>.</summary>
    /// <param name="arguments">The command and its arguments.</param>
    /// <param name="cancellationToken">Cancels the exchange.</param>
    public async Task<string?> ExecuteAsync(IReadOnlyList<string> arguments, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        using var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, Port, cancellationToken).ConfigureAwait(false);
        var stream = client.GetStream();
        var request = new StringBuilder().Append(CultureInfo.InvariantCulture, $"*{arguments.Count}\r\n");
        foreach (var argument in arguments)
        {
            request.Append(CultureInfo.InvariantCulture, $"${Encoding.UTF8.GetByteCount(argument)}\r\n{argument}\r\n");
        }
        await stream.WriteAsync(Encoding.UTF8.GetBytes(request.ToString()), cancellationToken).ConfigureAwait(false);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return await ReadReplyAsync(reader, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Kills the server (SIGKILL: nothing to persist), waits for it, and removes its directory.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        Watchdog.Stop(_lease.Path, _watchdogPidFile);
        try
        {
            _process.Kill();
        }
        catch (InvalidOperationException)
        {
        }
        await _process.WaitForExitAsync().ConfigureAwait(false);
        _process.Dispose();
        Directory.Delete(_directory, recursive: true);
        _lease.Release(deleteFile: true);
        LiveResources.Unregister(_registration);
    }

    /// <summary>Kills servers whose owner died and whose watchdog did not (leases of the form redis-PORT.lease).</summary>
    internal static List<string> SweepStale(List<string> failures)
    {
        var removed = new List<string>();
        if (!Directory.Exists(EngineNames.LeaseDirectory))
        {
            return removed;
        }
        foreach (var leaseFile in Directory.EnumerateFiles(EngineNames.LeaseDirectory, "redis-*.lease"))
        {
            using var lease = OwnerLease.TryAcquire(leaseFile, FileMode.Open);
            if (lease is null)
            {
                continue;
            }
            try
            {
                var owner = JsonSerializer.Deserialize<RedisLease>(lease.ReadContents());
                if (owner is not null)
                {
                    KillIfRedis(owner.Pid, owner.Port);
                    if (Directory.Exists(owner.Directory) && owner.Directory.StartsWith(Path.Combine(EngineNames.StateRoot, "redis-"), StringComparison.Ordinal))
                    {
                        Directory.Delete(owner.Directory, recursive: true);
                    }
                }
                File.Delete(Path.ChangeExtension(leaseFile, ".watchdog"));
                lease.Release(deleteFile: true);
                removed.Add(Path.GetFileName(leaseFile));
            }
            catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
            {
                failures.Add($"{leaseFile}: {e.Message}");
            }
        }
        return removed;
    }

    private sealed record RedisLease(int Pid, int Port, string Directory);

    private static async Task<RedisServer> TryStartAsync(int port, CancellationToken cancellationToken)
    {
        var leaseFile = Path.Combine(EngineNames.LeaseDirectory, $"redis-{port}.lease");
        var lease = OwnerLease.TryAcquire(leaseFile, FileMode.CreateNew)
            ?? throw new PrivateEngineException($"port {port} is leased by another test process");
        var directory = Path.Combine(EngineNames.StateRoot, $"redis-{port}");
        Process process;
        try
        {
            Directory.CreateDirectory(directory);
            var info = ProcessRunner.CreateStartInfo(ServerPath,
            [
                "--bind", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture),
                "--save", "", "--appendonly", "no", "--dir", directory, "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", "", "--loglevel", "warning",
            ]);
            process = Process.Start(info) ?? throw new PrivateEngineException("could not start redis-server");
        }
        catch
        {
            lease.Release(deleteFile: true);
            Directory.Delete(directory, recursive: true);
            throw;
        }
        var output = new StringBuilder();
        process.StandardInput.Close();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var watchdogPidFile = Path.ChangeExtension(leaseFile, ".watchdog");
        // From here on the server object owns the process: any failure below disposes it.
        var server = new RedisServer(process, lease, directory, watchdogPidFile, port);
        try
        {
            lease.Write(JsonSerializer.Serialize(new RedisLease(process.Id, port, directory)));
            await Watchdog.StartAsync(leaseFile, watchdogPidFile,
                ["/bin/sh", "-c", "grep -q redis-server /proc/$1/cmdline 2>/dev/null && kill -KILL $1; rm -rf -- \"$2\" \"$3\" \"$4\"", "redis-cleanup",
                 process.Id.ToString(CultureInfo.InvariantCulture), directory, leaseFile, watchdogPidFile],
                cancellationToken).ConfigureAwait(false);
            var deadline = Stopwatch.StartNew();
            while (true)
            {
                if (process.HasExited)
                {
                    string text;
                    lock (output)
                    {
                        text = output.ToString();
                    }
                    throw new PrivateEngineException($"redis-server on port {port} exited: {text.Trim()}");
                }
                try
                {
                    if (await server.ExecuteAsync(["PING"], cancellationToken).ConfigureAwait(false) == "PONG")
                    {
                        return server;
                    }
                }
                catch (Exception e) when (e is SocketException or IOException && deadline.Elapsed < TimeSpan.FromSeconds(10))
                {
                    // Not listening yet.
                }
                await Task.Delay(10, cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static async Task<string?> ReadReplyAsync(StreamReader reader, CancellationToken cancellationToken)
    {
        var line = await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false) ?? throw new IOException("redis closed the connection");
        var payload = line[1..];
        switch (line[0])
        {
            case '+':
            case ':':
                return payload;
            case '-':
                throw new PrivateEngineException("redis: " + payload);
            case '$':
            {
                var length = int.Parse(payload, CultureInfo.InvariantCulture);
                if (length < 0)
                {
                    return null;
                }
                var buffer = new char[length];
                var read = 0;
                while (read < length)
                {
                    var n = await reader.ReadAsync(buffer.AsMemory(read, length - read), cancellationToken).ConfigureAwait(false);
                    if (n == 0)
                    {
                        throw new IOException("redis closed the connection");
                    }
                    read += n;
                }
                await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false);
                return new string(buffer);
            }
            case '*':
            {
                var count = int.Parse(payload, CultureInfo.InvariantCulture);
                if (count < 0)
                {
                    return null;
                }
                var items = new List<string?>();
                for (var i = 0; i < count; i++)
                {
                    items.Add(await ReadReplyAsync(reader, cancellationToken).ConfigureAwait(false));
                }
                return string.Join('\n', items);
            }
            default:
                throw new IOException($"unexpected redis reply: {line}");
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static async Task EnsureInstalledAsync(CancellationToken cancellationToken)
    {
        if (File.Exists(ServerPath))
        {
            return;
        }
        await InstallLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Serialise with other test processes too; dpkg's own lock would make the loser fail instead of wait.
            Directory.CreateDirectory(EngineNames.StateRoot);
            using var machineLock = await OwnerLease.AcquireAsync(Path.Combine(EngineNames.StateRoot, "apt.lock"), TimeSpan.FromMinutes(10), cancellationToken)
                .ConfigureAwait(false);
            if (File.Exists(ServerPath))
            {
                return;
            }
            string[] install = ["install", "-y", "-q", "--no-install-recommends", "redis-server"];
            var result = await ProcessRunner.RunAsync("apt-get", install, TimeSpan.FromMinutes(5), cancellationToken: cancellationToken).ConfigureAwait(false);
            if (!result.Succeeded)
            {
                await ProcessRunner.RunAsync("apt-get", ["update", "-q"], TimeSpan.FromMinutes(5), cancellationToken: cancellationToken).ConfigureAwait(false);
                result = await ProcessRunner.RunAsync("apt-get", install, TimeSpan.FromMinutes(5), cancellationToken: cancellationToken).ConfigureAwait(false);
            }
            if (!result.Succeeded || !File.Exists(ServerPath))
            {
                throw new PrivateEngineException($"apt-get install redis-server failed: {result.Stderr.Trim()}");
            }
        }
        finally
        {
            InstallLock.Release();
        }
    }

    private static void KillIfRedis(int pid, int port)
    {
        try
        {
            var cmdline = File.ReadAllText($"/proc/{pid}/cmdline");
            if (cmdline.Contains("redis-server", StringComparison.Ordinal) && cmdline.Contains(port.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal))
            {
                using var process = Process.GetProcessById(pid);
                process.Kill();
            }
        }
        catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException)
        {
            // Gone already.
        }
    }

    private void Kill()
    {
        Watchdog.Stop(_lease.Path, _watchdogPidFile);
        try
        {
            _process.Kill();
            _process.WaitForExit(5000);
        }
        catch (InvalidOperationException)
        {
        }
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
        _lease.Release(deleteFile: true);
    }
}
