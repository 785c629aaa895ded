using SandboxKit.Agent.Protocol;
using SandboxKit.Agent.Tests.Infrastructure;

[assembly: Parallelizable(ParallelScope.Fixtures)]
[assembly: LevelOfParallelism(4)]
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace SandboxKit.Agent.Tests;

/// <summary>Removes what an aborted earlier run left, once per run.</summary>
[SetUpFixture]
public sealed class SuiteSetup
{
    [OneTimeSetUp]
    public void CleanLeftovers() => Docker.RemoveLabelled();

    [OneTimeTearDown]
    public void CleanUp()
    {
        Docker.RemoveLabelled();
        Sandbox.RemoveWorkspaceRoot();
    }
}

/// <summary>
/// Each test gets a fresh session container (the Python suite's fresh agent per test) and a connection to it; the
/// fixture's tests run one after another, fixtures in parallel.
/// </summary>
public abstract class AgentTest
{
    private readonly List<IDisposable> _cleanup = [];
    private readonly List<Sandbox> _boxes = [];

    protected Sandbox Box { get; private set; } = null!;

    protected AgentClient A { get; private set; } = null!;

    /// <summary>Options of the per-test container.</summary>
    protected virtual SandboxOptions Options => new();

    protected string Workdir => "/workspace";

    /// <summary>Whether SetUp connects straight to the socket (not possible under gVisor).</summary>
    protected virtual bool ConnectDirectly => true;

    [SetUp]
    public void StartSandbox()
    {
        Box = Sandbox.Start(Options);
        A = ConnectDirectly ? Box.Connect() : null!;
    }

    [TearDown]
    public void StopSandbox()
    {
        // A handler that threw, or anything else the supervisor calls an error, fails the test that caused it.
        var errors = A?.Logs.Where(l => l.Level == "error").Select(l => l.Message).ToList() ?? [];
        // Every client of every sandbox of the test checked the supervisor's data frames against its credit.
        var creditViolations = (Box is null ? _boxes : _boxes.Prepend(Box)).SelectMany(b => b.Clients).SelectMany(c => c.CreditViolations).ToList();
        if (errors.Count > 0)
        {
            TestContext.Out.WriteLine($"supervisor errors: {string.Join(" | ", errors)}");
        }
        if (TestContext.CurrentContext.Result.Outcome.Status == NUnit.Framework.Interfaces.TestStatus.Failed && Box is not null)
        {
            TestContext.Out.WriteLine($"supervisor log: {A?.LogText()}\n{Box.Logs()}");
        }
        for (var i = _cleanup.Count - 1; i >= 0; i--)
        {
            try
            {
                _cleanup[i].Dispose();
            }
            catch (Exception e)
            {
                TestContext.Out.WriteLine($"cleanup: {e.Message}");
            }
        }
        _cleanup.Clear();
        _boxes.Clear();
        A?.Dispose();
        Box?.Dispose();
        Assert.That(errors, Is.Empty, "the supervisor logged errors");
        Assert.That(creditViolations, Is.Empty, "the supervisor sent data beyond the credit");
    }

    protected T Track<T>(T disposable) where T : IDisposable
    {
        _cleanup.Add(disposable);
        return disposable;
    }

    /// <summary>Another container (e.g. one without warm shells), removed after the test.</summary>
    protected (Sandbox Box, AgentClient Client) Another(SandboxOptions options)
    {
        var box = Track(Sandbox.Start(options));
        _boxes.Add(box);
        return (box, Track(box.Connect()));
    }

    protected static void AssertRan(Result result, int code = 0)
    {
        Assert.That(result.Error, Is.Null, result.ToString());
        Assert.That(result.Code, Is.EqualTo(code), $"{result} stdout={result.Out}");
    }

    protected static RunRequest Cmd(string command) => new() { Command = command };
}
