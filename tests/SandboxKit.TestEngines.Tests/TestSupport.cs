using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Docker.DotNet;

[assembly: Parallelizable(ParallelScope.All)]
[assembly: LevelOfParallelism(3)]
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace SandboxKit.TestEngines.Tests;

/// <summary>What the tests share: the sandbox image, the main engine, and the timing table printed at the end.</summary>
internal static class TestSupport
{
    /// <summary>The sandbox image of this checkout (tag from VERSION), or SANDBOXKIT_TEST_IMAGE.</summary>
    public static string SandboxImage { get; } = Environment.GetEnvironmentVariable("SANDBOXKIT_TEST_IMAGE") is { Length: > 0 } image
        ? image
        : "sandboxkit/sandbox:" + File.ReadAllText(FindUp("VERSION")).Trim();

    public static DockerClient MainEngine() =>
        new DockerClientConfiguration(new Uri(PrivateEngineOptions.DefaultSourceEndpoint)).CreateClient();

    public static CancellationToken Token => TestContext.CurrentContext.CancellationToken;

    /// <summary>Runs docker on the engine and returns stdout, failing the test (with the engine log tail) otherwise.</summary>
    public static async Task<string> DockerOkAsync(this PrivateEngine engine, params string[] arguments)
    {
        var result = await engine.DockerAsync(arguments, TimeSpan.FromMinutes(2), Token);
        if (!result.Succeeded)
        {
            var log = (await engine.ReadLogAsync()).Split('\n').TakeLast(15);
            Assert.Fail($"docker {string.Join(' ', arguments)} on {engine.Id} exited {result.ExitCode}: {result.Stderr}\n{string.Join('\n', log)}");
        }
        return result.Stdout.Trim();
    }

    public static async Task<int> ContainerPidAsync(this PrivateEngine engine, string container) =>
        int.Parse(await engine.DockerOkAsync("inspect", "--format", "{{.State.Pid}}", container), CultureInfo.InvariantCulture);

    public static bool ProcessAlive(int pid) => PrivateEngine.IsAlive(pid);

    /// <summary>Polls until <paramref name="condition"/> holds, failing after <paramref name="timeout"/>.</summary>
    public static Task EventuallyAsync(Func<bool> condition, TimeSpan timeout, string what) =>
        EventuallyAsync(() => Task.FromResult(condition()), timeout, what);

    /// <summary>Polls until <paramref name="condition"/> holds, failing after <paramref name="timeout"/>.</summary>
    public static async Task EventuallyAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (!await condition())
        {
            if (deadline.Elapsed > timeout)
            {
                Assert.Fail($"{what} did not happen within {timeout}");
            }
            await Task.Delay(50, Token);
        }
    }

    private static string FindUp(string file)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, file);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new FileNotFoundException($"{file} not found above {AppContext.BaseDirectory}");
    }
}

/// <summary>Collects measured durations and prints them as one table when the run ends.</summary>
internal static class Timings
{
    private static readonly ConcurrentQueue<(string Name, TimeSpan Elapsed)> Entries = new();

    public static void Record(string name, TimeSpan elapsed)
    {
        Entries.Enqueue((name, elapsed));
        TestContext.Progress.WriteLine(FormattableString.Invariant($"timing: {name,-58} {elapsed.TotalMilliseconds,9:F0} ms"));
    }

    public static async Task<T> MeasureAsync<T>(string name, Func<Task<T>> action)
    {
        var watch = Stopwatch.StartNew();
        var result = await action();
        Record(name, watch.Elapsed);
        return result;
    }

    public static async Task MeasureAsync(string name, Func<Task> action)
    {
        var watch = Stopwatch.StartNew();
        await action();
        Record(name, watch.Elapsed);
    }

    public static void Print()
    {
        TestContext.Progress.WriteLine("== SandboxKit.TestEngines timings");
        foreach (var (name, elapsed) in Entries)
        {
            TestContext.Progress.WriteLine(FormattableString.Invariant($"  {name,-58} {elapsed.TotalMilliseconds,9:F0} ms"));
        }
    }
}

[SetUpFixture]
public sealed class RunTimings
{
    private readonly Stopwatch _run = new();

    [OneTimeSetUp]
    public void Start() => _run.Start();

    [OneTimeTearDown]
    public void PrintTable()
    {
        Timings.Record("whole run (fixtures in parallel)", _run.Elapsed);
        Timings.Print();
    }
}
