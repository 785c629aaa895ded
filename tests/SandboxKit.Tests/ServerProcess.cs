using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace SandboxKit.Tests;

/// <summary>The server as a real process on a loopback port, for what an in-process host cannot show: SIGKILL, SIGTERM, restarts.</summary>
public sealed class ServerProcess : IAsyncDisposable
{
    private readonly Process _process;

    private ServerProcess(Process process, string instance, int port)
    {
        _process = process;
        Instance = instance;
        Port = port;
        Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(120) };
    }

    public string Instance { get; }
    public int Port { get; }
    public HttpClient Http { get; }
    public int Id => _process.Id;

    /// <summary>Starts the server and waits until it is healthy.</summary>
    /// <param name="instance">The instance label (the same one again adopts the earlier process's sessions).</param>
    /// <param name="port">The port (0: a free one).</param>
    /// <param name="settings">More <c>--key=value</c> settings.</param>
    public static async Task<ServerProcess> StartAsync(string instance, int port = 0, IDictionary<string, string>? settings = null)
    {
        TestRun.Track(instance);
        port = port == 0 ? FreePort() : port;
        var info = new ProcessStartInfo("dotnet")
        {
            ArgumentList =
            {
                Path.Combine(AppContext.BaseDirectory, "SandboxKit.Server.dll"),
                "--urls", $"http://127.0.0.1:{port}",
                $"--Sandbox:InstanceName={instance}",
            },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var (key, value) in settings ?? new Dictionary<string, string>())
        {
            info.ArgumentList.Add($"--{key}={value}");
        }
        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { TestContext.Progress.WriteLine("server: " + e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var server = new ServerProcess(process, instance, port);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline && !process.HasExited)
        {
            try
            {
                if ((await server.Http.GetAsync("/healthz")).StatusCode == HttpStatusCode.OK)
                {
                    return server;
                }
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(200);
        }
        await server.KillAsync();
        Assert.Fail("The server process did not become healthy within 60 s.");
        return server;
    }

    /// <summary>SIGKILL: nothing of the server's shutdown runs.</summary>
    public async Task KillAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }
        await _process.WaitForExitAsync();
    }

    /// <summary>SIGTERM, as a service manager stops it, and waits for the exit.</summary>
    public async Task<int> TerminateAsync(TimeSpan timeout)
    {
        using (var kill = Process.Start("kill", ["-TERM", _process.Id.ToString()]))
        {
            await kill.WaitForExitAsync();
        }
        using var cts = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(cts.Token);
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        Http.Dispose();
        _process.Dispose();
    }

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
