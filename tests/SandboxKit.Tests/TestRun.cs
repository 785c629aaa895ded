using System.Collections.Concurrent;

namespace SandboxKit.Tests;

/// <summary>
/// Runs once around the whole assembly. Fixtures assert that they left nothing behind; this removes whatever a
/// failed test could not clean up, so one failure never leaks containers into the next run.
/// </summary>
[SetUpFixture]
public sealed class TestRun
{
    private static readonly ConcurrentBag<string> Instances = [];

    /// <summary>Records an instance label whose resources are swept at the end of the run.</summary>
    public static void Track(string instance) => Instances.Add(instance);

    [OneTimeTearDown]
    public async Task SweepAsync()
    {
        foreach (var instance in Instances.Distinct())
        {
            await Engine.RemoveAllAsync(instance);
        }
    }
}
