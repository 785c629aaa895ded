using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using SandboxKit.Contracts;
using SandboxKit.Server;

namespace SandboxKit.Tests;

/// <summary>The real server, in-process on a free loopback port, against the real engine. Each host has its own instance label so its leftovers are countable.</summary>
public sealed class ServerHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ServerHost(WebApplication app, string instance, Uri baseAddress)
    {
        _app = app;
        Instance = instance;
        BaseAddress = baseAddress;
        Http = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromMinutes(3) };
    }

    public string Instance { get; }
    public Uri BaseAddress { get; }
    public HttpClient Http { get; }
    public IServiceProvider Services => _app.Services;

    public static async Task<ServerHost> StartAsync(IDictionary<string, string?>? settings = null, string? instance = null)
    {
        instance ??= "test" + Guid.NewGuid().ToString("N")[..8];
        TestRun.Track(instance);
        var args = new List<string> { "--urls", "http://127.0.0.1:0", $"--Sandbox:InstanceName={instance}", "--Sandbox:WarmPoolSize=0", "--Logging:LogLevel:Default=Warning" };
        foreach (var (key, value) in settings ?? new Dictionary<string, string?>())
        {
            args.Add($"--{key}={value}");
        }
        var app = SandboxServerApp.Build(args.ToArray());
        await SandboxServerApp.StartCheckedAsync(app);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new ServerHost(app, instance, new Uri(address));
    }

    public async Task<SessionInfo> CreateSessionAsync(CreateSessionRequest? request = null, HttpClient? http = null)
    {
        var response = await (http ?? Http).PostAsJsonAsync("/v1/sessions", request ?? new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        await EnsureAsync(response, System.Net.HttpStatusCode.Created);
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.SessionInfo))!;
    }

    public async Task<ExecuteResult> ExecuteAsync(string sessionId, ExecuteRequest request)
    {
        var response = await Http.PostAsJsonAsync($"/v1/sessions/{sessionId}/commands", request, SandboxJsonContext.Default.ExecuteRequest);
        await EnsureAsync(response, System.Net.HttpStatusCode.OK);
        return (await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.ExecuteResult))!;
    }

    public Task<ExecuteResult> ExecuteAsync(string sessionId, string command, double? timeoutSeconds = null) =>
        ExecuteAsync(sessionId, new ExecuteRequest { Command = command, TimeoutSeconds = timeoutSeconds });

    public async Task DeleteSessionAsync(string sessionId) => await Http.DeleteAsync($"/v1/sessions/{sessionId}");

    public static async Task EnsureAsync(HttpResponseMessage response, System.Net.HttpStatusCode expected)
    {
        if (response.StatusCode != expected)
        {
            Assert.Fail($"Expected {(int)expected}, got {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        }
    }

    public static async Task<JsonElement> ProblemAsync(HttpResponseMessage response)
    {
        Assert.That(response.Content.Headers.ContentType?.MediaType, Is.EqualTo("application/problem+json"));
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
