using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>
/// A fixture with one real server and one session shared by its tests. At the end it deletes every session the
/// tests left and asserts that the engine holds nothing more of this server (containers or volumes).
/// </summary>
public abstract class SessionFixture
{
    protected ServerHost Host { get; private set; } = null!;

    protected string SessionId { get; private set; } = null!;

    /// <summary>Server settings for this fixture (configuration keys to values).</summary>
    protected virtual IDictionary<string, string?> Settings => new Dictionary<string, string?>();

    [OneTimeSetUp]
    public async Task StartFixtureAsync()
    {
        Host = await ServerHost.StartAsync(Settings);
        SessionId = (await Host.CreateSessionAsync()).Id;
    }

    [OneTimeTearDown]
    public async Task StopFixtureAsync()
    {
        foreach (var s in (await Host.Http.GetFromJsonAsync("/v1/sessions", SandboxJsonContext.Default.SessionList))!.Sessions)
        {
            await Host.DeleteSessionAsync(s.Id);
        }
        await Host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(Host.Instance), Is.Zero, "containers or volumes left behind");
    }
}
