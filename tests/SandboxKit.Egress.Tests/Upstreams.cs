using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace SandboxKit.Egress.Tests;

/// <summary>What an upstream server saw of one request.</summary>
internal sealed record SeenRequest(string Host, string Method, string Path, Dictionary<string, string[]> Headers, string Body, string ConnectionId, bool Https);

/// <summary>
/// The "internet" of the tests, all on 127.0.0.1: a Kestrel server with an HTTP and an HTTPS endpoint (certificate
/// from a test CA for several names), an echo server and a server-speaks-first server. Started once for the run.
/// </summary>
internal sealed class Upstreams : IAsyncDisposable
{
    public static readonly string[] TlsNames = ["secure.test", "api.secret.test", "www.allowed.test", "other.test", "mirror.test"];

    private static readonly Lazy<Task<Upstreams>> Shared = new(StartAsync);
    private readonly WebApplication _app;
    private readonly TcpListener _echo;
    private readonly TcpListener _banner;
    private readonly CancellationTokenSource _stop = new();

    private Upstreams(WebApplication app, X509Certificate2 ca, TcpListener echo, TcpListener banner)
    {
        _app = app;
        Ca = ca;
        _echo = echo;
        _banner = banner;
    }

    public static Task<Upstreams> InstanceAsync => Shared.Value;

    public X509Certificate2 Ca { get; }

    public int HttpPort { get; private set; }

    public int HttpsPort { get; private set; }

    public int EchoPort => ((IPEndPoint)_echo.LocalEndpoint).Port;

    public int BannerPort => ((IPEndPoint)_banner.LocalEndpoint).Port;

    public ConcurrentQueue<SeenRequest> Requests { get; } = new();

    public static async ValueTask DisposeSharedAsync()
    {
        if (Shared.IsValueCreated)
        {
            await (await Shared.Value).DisposeAsync();
        }
    }

    /// <summary>Requests seen for <paramref name="marker"/> (a unique path segment per test).</summary>
    public List<SeenRequest> For(string marker) => Requests.Where(r => r.Path.Contains(marker, StringComparison.Ordinal)).ToList();

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _echo.Stop();
        _banner.Stop();
        await _app.StopAsync();
        await _app.DisposeAsync();
        _stop.Dispose();
    }

    private static async Task<Upstreams> StartAsync()
    {
        var ca = TestPki.CreateCa("SandboxKit Egress Tests Upstream CA");
        var certificate = TestPki.IssueServer(ca, TlsNames);
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http1);
            kestrel.Listen(IPAddress.Loopback, 0, listen =>
            {
                listen.Protocols = HttpProtocols.Http1;
                listen.UseHttps(certificate);
            });
        });
        var app = builder.Build();
        var echo = new TcpListener(IPAddress.Loopback, 0);
        var banner = new TcpListener(IPAddress.Loopback, 0);
        var upstreams = new Upstreams(app, ca, echo, banner);
        app.Run(upstreams.HandleAsync);
        await app.StartAsync();
        foreach (var address in app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses)
        {
            var uri = new Uri(address);
            if (uri.Scheme == "https")
            {
                upstreams.HttpsPort = uri.Port;
            }
            else
            {
                upstreams.HttpPort = uri.Port;
            }
        }
        echo.Start();
        banner.Start();
        _ = upstreams.AcceptLoopAsync(echo, upstreams.EchoAsync);
        _ = upstreams.AcceptLoopAsync(banner, BannerAsync);
        return upstreams;
    }

    private async Task HandleAsync(HttpContext context)
    {
        using var reader = new StreamReader(context.Request.Body, Encoding.UTF8);
        var body = await reader.ReadToEndAsync();
        var headers = context.Request.Headers.ToDictionary(h => h.Key, h => h.Value.Select(v => v ?? "").ToArray(), StringComparer.OrdinalIgnoreCase);
        Requests.Enqueue(new SeenRequest(context.Request.Host.Host, context.Request.Method, context.Request.Path + context.Request.QueryString, headers, body, context.Connection.Id, context.Request.IsHttps));
        context.Response.ContentType = "text/plain";
        await context.Response.WriteAsync(body.Length > 0 ? "echo:" + body : $"hello {context.Request.Host.Host}{context.Request.Path}");
    }

    private async Task AcceptLoopAsync(TcpListener listener, Func<Socket, Task> handle)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }
            _ = Task.Run(async () =>
            {
                using (socket)
                {
                    try
                    {
                        await handle(socket);
                    }
                    catch (Exception e) when (e is SocketException or IOException or OperationCanceledException)
                    {
                        // The test closed its end.
                    }
                }
            });
        }
    }

    private async Task EchoAsync(Socket socket)
    {
        var buffer = new byte[4096];
        while (true)
        {
            int read = await socket.ReceiveAsync(buffer, _stop.Token);
            if (read == 0)
            {
                socket.Shutdown(SocketShutdown.Send);
                return;
            }
            await socket.SendAsync(buffer.AsMemory(0, read), _stop.Token);
        }
    }

    // Speaks first, then counts what the client sends until it half-closes, then answers and closes: exercises
    // server-first protocols and half-close in both directions.
    private static async Task BannerAsync(Socket socket)
    {
        await socket.SendAsync("220 banner.test ready\r\n"u8.ToArray());
        var buffer = new byte[4096];
        long total = 0;
        while (true)
        {
            int read = await socket.ReceiveAsync(buffer);
            if (read == 0)
            {
                break;
            }
            total += read;
        }
        await socket.SendAsync(Encoding.ASCII.GetBytes($"got {total} bytes\r\n"));
        socket.Shutdown(SocketShutdown.Send);
    }
}

[SetUpFixture]
public sealed class UpstreamsLifetime
{
    [OneTimeTearDown]
    public async Task StopUpstreams() => await Upstreams.DisposeSharedAsync();
}
