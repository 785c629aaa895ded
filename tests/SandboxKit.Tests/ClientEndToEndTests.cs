using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>The client SDK against the real server and engine: what a C# agent developer does.</summary>
[TestFixture]
public sealed class ClientEndToEndTests
{
    private ServerHost _host = null!;
    private SandboxClient _client = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _host = await ServerHost.StartAsync(new Dictionary<string, string?> { ["Sandbox:WarmPoolSize"] = "1" });
        _client = new SandboxClient(_host.BaseAddress);
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        _client.Dispose();
        await _host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(_host.Instance), Is.Zero);
    }

    [Test]
    public async Task The_seeds_basic_usage_works_and_state_is_kept_across_calls()
    {
        string id;
        await using (var session = await _client.CreateSessionAsync())
        {
            id = session.Id;
            var listing = await session.ExecuteAsync("ls -la");
            Assert.That(listing.ExitCode, Is.Zero);
            Assert.That(listing.Stdout, Does.Contain("total"));

            await session.ExecuteAsync("cd /tmp && export COLOR=green");
            var state = await session.ExecuteAsync("echo $PWD $COLOR");
            Assert.That(state.Stdout, Is.EqualTo("/tmp green\n"));

            var failed = await session.ExecuteAsync("ls /nope");
            Assert.That(failed.ExitCode, Is.EqualTo(2));
            Assert.Throws<CommandFailedException>(() => failed.EnsureSuccess());
        }
        await Assert.ThrowsAsync<SessionNotFoundException>(() => _client.AttachSessionAsync(id));
    }

    [Test]
    public async Task A_timeout_is_a_result_and_the_session_goes_on()
    {
        await using var session = await _client.CreateSessionAsync();
        var r = await session.ExecuteAsync("echo start; sleep 60", new ExecuteOptions { Timeout = TimeSpan.FromSeconds(1) });
        Assert.That(r.TimedOut, Is.True);
        Assert.That(r.Stdout, Is.EqualTo("start\n"));
        Assert.That((await session.ExecuteAsync("echo next")).Stdout, Is.EqualTo("next\n"));
    }

    [Test]
    public async Task Files_round_trip_through_the_client()
    {
        await using var session = await _client.CreateSessionAsync();
        var bytes = new byte[200_000];
        new Random(7).NextBytes(bytes);
        await session.WriteFileAsync("/workspace/in.bin", bytes);
        await session.WriteFileAsync("notes/hello.txt", "hello ✓\n");
        Assert.That(await session.ReadFileAsync("/workspace/in.bin"), Is.EqualTo(bytes));
        Assert.That(await session.ReadTextAsync("/workspace/notes/hello.txt"), Is.EqualTo("hello ✓\n"));
        var entries = await session.ListFilesAsync("/workspace");
        Assert.That(entries.Select(e => e.Name), Is.SupersetOf(new[] { "in.bin", "notes" }));
        await session.DeleteFileAsync("/workspace/notes", recursive: true);
        await Assert.ThrowsAsync<SandboxException>(() => session.ReadFileAsync("/workspace/notes/hello.txt"));
    }

    [Test]
    public async Task Streaming_code_runs_and_background_processes_work_through_the_client()
    {
        await using var session = await _client.CreateSessionAsync();
        var events = new List<CommandEvent>();
        await foreach (var e in session.StreamAsync("for i in 1 2 3; do echo $i; sleep 0.1; done"))
        {
            events.Add(e);
        }
        Assert.That(string.Concat(events.Where(e => e.Type == "stdout").Select(e => e.Data)), Is.EqualTo("1\n2\n3\n"));
        Assert.That(events[^1].Result!.ExitCode, Is.Zero);

        var code = await session.RunCodeAsync("print(sum(range(10)))");
        Assert.That(code.Stdout, Is.EqualTo("45\n"));

        var process = await session.StartProcessAsync("echo bg; sleep 0.2; exit 6");
        var exited = await process.WaitAsync();
        Assert.That(exited.ExitCode, Is.EqualTo(6));
    }

    [Test]
    public async Task Dispose_twice_is_safe_and_deletes_the_session_once()
    {
        var session = await _client.CreateSessionAsync();
        await session.DisposeAsync();
        await session.DisposeAsync();
        await Assert.ThrowsAsync<SessionNotFoundException>(() => _client.AttachSessionAsync(session.Id));
    }

    [Test]
    public async Task Get_or_create_for_a_user_reuses_the_users_session()
    {
        var user = "e2e-" + Guid.NewGuid().ToString("N")[..6];
        await using var first = await _client.GetOrCreateSessionForUserAsync(user);
        var second = await _client.GetOrCreateSessionForUserAsync(user);
        Assert.That(second.Id, Is.EqualTo(first.Id));
        await first.DeleteAsync();
        await _client.DeleteUserStorageAsync(user);
    }
}
