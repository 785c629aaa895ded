using System.Net.Sockets;
using Microsoft.Extensions.Options;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Supervisor;

/// <summary>
/// Reaches a container's supervisor and opens a checked connection to it. Two ways, same socket inside:
/// <list type="bullet">
/// <item><b>direct</b>: the socket through <c>/proc/&lt;pid&gt;/root</c> of the container's init, for an engine on this host
/// (needs root; not under gVisor, whose sockets live inside its sandbox). No dockerd or shim in the data path.</item>
/// <item><b>relay</b>: <c>docker exec -u 0 … sandboxkit-agent relay</c>, which copies the exec's stdin/stdout to the socket.
/// Works with any engine and runtime.</item>
/// </list>
/// <c>Sandbox:SupervisorTransport</c> = <c>auto</c> (direct where it can work, else relay), <c>direct</c> or <c>relay</c>.
/// </summary>
internal sealed class SupervisorDialer(IContainerEngine engine, SupervisorBundle bundle, IOptions<SandboxOptions> options, ILogger<SupervisorDialer> logger)
{
    private readonly SandboxOptions _options = options.Value;

    /// <summary>
    /// Connects and completes the hello, retrying while the supervisor is still starting (its socket does not exist yet)
    /// until <paramref name="timeout"/> passes.
    /// </summary>
    /// <exception cref="SupervisorUnavailableException">No connection in time.</exception>
    /// <exception cref="SupervisorMismatchException">The supervisor is not this server's build.</exception>
    /// <exception cref="ContainerGoneException">The container does not exist or stopped.</exception>
    public async Task<SupervisorConnection> ConnectAsync(string containerId, string runtime, string sessionLabel, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        var delay = TimeSpan.FromMilliseconds(5);
        var direct = UseDirect(runtime);
        Exception? last = null;
        int? pid = null;
        while (true)
        {
            try
            {
                Stream stream;
                if (direct)
                {
                    pid ??= await RunningPidAsync(containerId, cancellationToken).ConfigureAwait(false);
                    stream = await ConnectDirectAsync(pid.Value, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    stream = await engine.ExecStreamAsync(containerId,
                        [SupervisorBundle.Executable, "relay", "--socket", SupervisorBundle.SocketPath], "0:0", cancellationToken).ConfigureAwait(false);
                }
                return await SupervisorConnection.OpenAsync(stream, Settings(sessionLabel), logger, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or SupervisorUnavailableException or IOException)
            {
                last = e;
                if (direct && _options.SupervisorTransport == "auto" && e is SocketException { SocketErrorCode: SocketError.AccessDenied })
                {
                    // Not allowed through /proc here (not root): the relay works for everyone.
                    direct = false;
                    continue;
                }
            }
            if (pid is { } known && !Directory.Exists($"/proc/{known}"))
            {
                // The supervisor's process is gone (an image it cannot run, an OOM): ask the engine now, not at the deadline.
                pid = null;
                await RunningPidAsync(containerId, cancellationToken).ConfigureAwait(false);
            }
            if (DateTime.UtcNow + delay > deadline)
            {
                // Tell a dead container apart from a slow supervisor.
                await RunningPidAsync(containerId, cancellationToken).ConfigureAwait(false);
                throw new SupervisorUnavailableException(
                    $"The sandbox supervisor did not answer within {timeout.TotalSeconds:0.#} s ({last?.Message ?? "no answer"}).", last);
            }
            await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
            delay = TimeSpan.FromMilliseconds(Math.Min(200, delay.TotalMilliseconds * 2));
        }
    }

    internal SupervisorConnectionSettings Settings(string sessionLabel) => new()
    {
        ExpectedBuild = bundle.Build,
        SessionLabel = sessionLabel,
        Window = _options.SupervisorWindowBytes,
        KeyTtl = TimeSpan.FromSeconds(_options.IdempotencyWindowSeconds),
        KeepaliveInterval = TimeSpan.FromSeconds(_options.SupervisorKeepaliveSeconds),
        KeepaliveTimeout = TimeSpan.FromSeconds(_options.SupervisorKeepaliveTimeoutSeconds),
    };

    private bool UseDirect(string runtime) => _options.SupervisorTransport switch
    {
        "direct" => true,
        "relay" => false,
        // gVisor keeps the socket inside its sandbox; a remote engine's pids are not this host's.
        _ => engine.IsLocal && runtime != "runsc" && OperatingSystem.IsLinux(),
    };

    private async Task<int> RunningPidAsync(string containerId, CancellationToken cancellationToken)
    {
        var state = await engine.InspectContainerAsync(containerId, cancellationToken).ConfigureAwait(false);
        if (state is not { Running: true, Pid: > 0 })
        {
            throw new ContainerGoneException(containerId);
        }
        return state.Pid;
    }

    private static async Task<Stream> ConnectDirectAsync(int pid, CancellationToken cancellationToken)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint($"/proc/{pid}/root{SupervisorBundle.SocketPath}"), cancellationToken).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
