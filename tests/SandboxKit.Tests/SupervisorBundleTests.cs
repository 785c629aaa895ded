using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using SandboxKit.Server;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Tests;

public sealed class SupervisorBundleTests
{
    [Test]
    public async Task A_carrier_left_by_a_killed_server_is_removed_at_the_next_sweep_and_a_fresh_one_is_kept()
    {
        var labels = new Dictionary<string, string> { [SessionLabels.Kind] = SessionLabels.KindSupervisor, [SessionLabels.SupervisorBuild] = "test" };
        var bundle = new SupervisorBundle(Options.Create(new SandboxOptions()), NullLogger<SupervisorBundle>.Instance);
        var abandoned = await Engine.Docker.CreateCarrierAsync("sandboxkit-carrier-test-" + Guid.NewGuid().ToString("N")[..12], Engine.Image, labels, [], CancellationToken.None);
        string? fresh = null;
        try
        {
            await Task.Delay(TimeSpan.FromSeconds(4));
            fresh = await Engine.Docker.CreateCarrierAsync("sandboxkit-carrier-test-" + Guid.NewGuid().ToString("N")[..12], Engine.Image, labels, [], CancellationToken.None);

            await bundle.SweepStaleVolumesAsync(Engine.Docker, CancellationToken.None, carrierLifetime: TimeSpan.FromSeconds(3));

            Assert.That(await Engine.Docker.InspectContainerAsync(abandoned, CancellationToken.None), Is.Null, "the old carrier is gone");
            Assert.That(await Engine.Docker.InspectContainerAsync(fresh, CancellationToken.None), Is.Not.Null, "a carrier another server may be filling right now stays");
        }
        finally
        {
            await Engine.Docker.RemoveContainerAsync(abandoned, CancellationToken.None);
            if (fresh is not null)
            {
                await Engine.Docker.RemoveContainerAsync(fresh, CancellationToken.None);
            }
        }
    }
}
