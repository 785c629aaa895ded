namespace SandboxKit.TestEngines.Tests;

/// <summary>The locking the harness's safety rests on: exclusive within and across processes, freed with the holder.</summary>
[TestFixture]
public sealed class LeaseTests
{
    [Test]
    public async Task A_lease_excludes_other_opens_in_this_process_and_flock_in_others_until_released()
    {
        Directory.CreateDirectory(EngineNames.LeaseDirectory);
        var path = Path.Combine(EngineNames.LeaseDirectory, $"test-{Guid.NewGuid():N}.lease");
        var lease = OwnerLease.TryAcquire(path, FileMode.CreateNew, "owner");
        Assert.That(lease, Is.Not.Null);
        try
        {
            Assert.That(OwnerLease.TryAcquire(path, FileMode.Open), Is.Null, "same process, second open");
            Assert.That(OwnerLease.TryAcquire(path, FileMode.CreateNew), Is.Null, "an existing file is never new");
            Assert.That(OwnerLease.IsHeld(path), Is.True);
            // flock(1) in another process: what the watchdog waits on.
            var probe = await ProcessRunner.RunAsync("/usr/bin/flock", ["-n", path, "true"]);
            Assert.That(probe.ExitCode, Is.EqualTo(1), "another process cannot take it");
            Assert.That(lease!.ReadContents(), Is.EqualTo("owner"));
        }
        finally
        {
            lease!.Release(deleteFile: false);
        }
        Assert.That((await ProcessRunner.RunAsync("/usr/bin/flock", ["-n", path, "true"])).ExitCode, Is.Zero, "free once released");
        Assert.That(OwnerLease.IsHeld(path), Is.False);
        File.Delete(path);
    }

    [Test]
    public void Subnets_allocated_concurrently_are_distinct_and_avoid_routed_ranges()
    {
        var leases = new SubnetLease[24];
        try
        {
            Parallel.For(0, leases.Length, i => leases[i] = SubnetAllocator.Allocate());
            Assert.That(leases.Select(l => l.Slot).Distinct().Count(), Is.EqualTo(leases.Length));
            var routes = SubnetAllocator.ReadIpv4Routes();
            Assert.That(leases.Where(l => SubnetAllocator.Overlaps(routes, l.Slot)), Is.Empty);
            Assert.That(leases.Select(l => l.NamespaceAddress.ToString()), Has.All.StartsWith("10.213."));
        }
        finally
        {
            foreach (var lease in leases)
            {
                lease?.Dispose();
            }
        }
    }

    [Test]
    public void A_slot_overlapped_by_a_route_is_reported_as_overlapping()
    {
        // 10.213.7.0/24 itself, and 10.0.0.0/8 covering it; 10.214.0.0/16 does not.
        List<(uint, uint)> routes = [(0x0AD50700, 0xFFFFFF00)];
        Assert.That(SubnetAllocator.Overlaps(routes, 7), Is.True);
        Assert.That(SubnetAllocator.Overlaps(routes, 8), Is.False);
        Assert.That(SubnetAllocator.Overlaps([(0x0A000000, 0xFF000000)], 8), Is.True);
        Assert.That(SubnetAllocator.Overlaps([(0x0AD60000, 0xFFFF0000)], 8), Is.False);
    }

    [Test]
    public void Engine_ids_and_derived_names_fit_the_kernel_limits()
    {
        var names = EngineNames.CreateNew();
        Assert.That(EngineNames.IsEngineId(names.Id), Is.True);
        Assert.That(names.HostVeth.Length, Is.LessThanOrEqualTo(15), "IFNAMSIZ - 1");
        // sun_path is 108 bytes; containerd's debug socket has the longest name under the exec root.
        Assert.That(Path.Combine(names.ExecRoot, "containerd", "containerd-debug.sock").Length, Is.LessThan(100));
        Assert.That(EngineNames.IsEngineId("skte1234"), Is.False);
        Assert.That(EngineNames.IsEngineId("docker0"), Is.False);
    }
}
