using System.Net;
using System.Net.Http.Json;
using SandboxKit.Contracts;
using SandboxKit.Server.Sessions;

namespace SandboxKit.Tests;

/// <summary>
/// Every place a session can write is bounded: its workspace and user storage are their own small ext4 disks (loop
/// devices), /tmp, home and /dev/shm are sized tmpfs, the rest of the root file system is read-only. A fill ends in
/// ENOSPC for the command and nothing else.
/// </summary>
[TestFixture]
public sealed class DiskTests : SessionFixture
{
    private const long Disk = 64L << 20;

    protected override IDictionary<string, string?> Settings => new Dictionary<string, string?>
    {
        ["Sandbox:DiskQuotas"] = "on",
        ["Sandbox:DefaultDiskBytes"] = Disk.ToString(),
        ["Sandbox:MaxDiskBytes"] = (256L << 20).ToString(),
        ["Sandbox:UserStorageBytes"] = (32L << 20).ToString(),
        ["Sandbox:MaxUserStoragePerTenant"] = "2",
        ["Sandbox:DiskPoolSize"] = "1",
    };

    [Test]
    public async Task Filling_the_workspace_is_ENOSPC_for_the_command_and_df_shows_the_sessions_own_size()
    {
        var df = await Host.ExecuteAsync(SessionId, "df -B1 --output=size /workspace | tail -1");
        Assert.That(long.Parse(df.Stdout.Trim()), Is.InRange(Disk * 9 / 10, Disk), "df inside shows the session's disk, not the host's");

        var info = await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}", SandboxJsonContext.Default.SessionInfo);
        Assert.That(info!.DiskBytes, Is.EqualTo(Disk));

        var fill = await Host.ExecuteAsync(SessionId, "dd if=/dev/zero of=/workspace/fill bs=1M count=200 2>&1; echo rc=$?", 120);
        Assert.That(fill.Stdout, Does.Contain("No space left on device"));
        Assert.That(fill.Stdout, Does.Not.Contain("rc=0"));

        // The session goes on: it can look, free room and write again.
        var after = await Host.ExecuteAsync(SessionId, "rm /workspace/fill && echo hello > /workspace/again && cat /workspace/again");
        Assert.That(after.Stdout, Is.EqualTo("hello\n"));
        var empty = await Host.ExecuteAsync(SessionId, "ls -A /workspace");
        Assert.That(empty.Stdout, Is.EqualTo("again\n"), "a fresh workspace has no lost+found");
        await Host.ExecuteAsync(SessionId, "rm /workspace/again");
    }

    [Test]
    public async Task Tmp_home_and_shm_are_bounded_and_the_rest_is_read_only()
    {
        var tmp = await Host.ExecuteAsync(SessionId, "dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1; rm -f /tmp/fill", 60);
        Assert.That(tmp.Stdout, Does.Contain("No space left on device"));
        var home = await Host.ExecuteAsync(SessionId, "dd if=/dev/zero of=$HOME/fill bs=1M count=100 2>&1; rm -f $HOME/fill", 60);
        Assert.That(home.Stdout, Does.Contain("No space left on device"));
        var shm = await Host.ExecuteAsync(SessionId, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=100 2>&1; rm -f /dev/shm/fill", 60);
        Assert.That(shm.Stdout, Does.Contain("No space left on device"));
        var root = await Host.ExecuteAsync(SessionId, "touch /usr/x /etc/x /var/x /x 2>&1 | grep -c 'Read-only file system'");
        Assert.That(root.Stdout.Trim(), Is.EqualTo("4"));
        var own = await Host.ExecuteAsync(SessionId, "touch /etc/sandboxkit/x 2>&1; echo rc=$?");
        Assert.That(own.Stdout, Does.Contain("Permission denied"), "the supervisor's /etc/sandboxkit is not the user's");
    }

    [Test]
    public async Task A_disk_size_is_chosen_per_session_within_the_servers_maximum()
    {
        var session = await Host.CreateSessionAsync(new CreateSessionRequest { DiskBytes = 128L << 20 });
        var df = await Host.ExecuteAsync(session.Id, "df -B1 --output=size /workspace | tail -1");
        Assert.That(long.Parse(df.Stdout.Trim()), Is.InRange((128L << 20) * 9 / 10, 128L << 20));
        await Host.DeleteSessionAsync(session.Id);

        var tooBig = await Host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { DiskBytes = 1L << 30 }, SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(tooBig.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That((await ServerHost.ProblemAsync(tooBig)).GetProperty("detail").GetString(), Does.Contain("diskBytes"));
    }

    [Test]
    public async Task A_deleted_session_leaves_no_disk_image_or_loop_device()
    {
        var session = await Host.CreateSessionAsync(new CreateSessionRequest { DiskBytes = 32L << 20 });
        var image = Engine.DiskImages(Host.Instance).Single(f => f.Contains(session.Id, StringComparison.Ordinal));
        Assert.That(LoopDeviceOf(image), Is.Not.Null);
        await Host.DeleteSessionAsync(session.Id);
        Assert.That(File.Exists(image), Is.False);
        Assert.That(LoopDeviceOf(image), Is.Null);
    }

    [Test]
    public async Task User_storage_is_bounded_capped_per_tenant_deletable_and_survives_a_lost_loop_device()
    {
        var first = await Host.CreateSessionAsync(new CreateSessionRequest { UserId = "disk-ann" });
        var fill = await Host.ExecuteAsync(first.Id, "dd if=/dev/zero of=/home/sandbox/persist/fill bs=1M count=100 2>&1; rm /home/sandbox/persist/fill; echo kept > /home/sandbox/persist/note", 60);
        Assert.That(fill.Stdout, Does.Contain("No space left on device"));
        var df = await Host.ExecuteAsync(first.Id, "df -B1 --output=size /home/sandbox/persist | tail -1");
        Assert.That(long.Parse(df.Stdout.Trim()), Is.LessThanOrEqualTo(32L << 20));
        await Host.DeleteSessionAsync(first.Id);

        // A host reboot loses mounts and loop devices (and their numbers may back other disks since): simulate it.
        var image = Engine.DiskImages(Host.Instance).Single(f => f.Contains("sk-user-", StringComparison.Ordinal));
        var device = LoopDeviceOf(image)!;
        Run("umount", Path.Combine(Engine.DiskDirectory(Host.Instance), "mnt", Path.GetFileNameWithoutExtension(image)));
        Run("losetup", "-d", device);
        Assert.That(LoopDeviceOf(image), Is.Null);
        var again = await Host.CreateSessionAsync(new CreateSessionRequest { UserId = "disk-ann" });
        Assert.That((await Host.ExecuteAsync(again.Id, "cat /home/sandbox/persist/note")).Stdout, Is.EqualTo("kept\n"));

        var second = await Host.CreateSessionAsync(new CreateSessionRequest { UserId = "disk-bob" });
        var third = await Host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest { UserId = "disk-cat" }, SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(third.StatusCode, Is.EqualTo(HttpStatusCode.TooManyRequests));
        var problem = await ServerHost.ProblemAsync(third);
        Assert.That(problem.GetProperty("code").GetString(), Is.EqualTo("quota_exceeded"));
        Assert.That(problem.GetProperty("detail").GetString(), Does.Contain("persistent storage for 2 users"));

        // Storage in use is not deleted; once its session is gone it is, image and all.
        var busy = await Host.Http.DeleteAsync("/v1/users/disk-ann/storage");
        Assert.That(busy.StatusCode, Is.EqualTo(HttpStatusCode.Conflict));
        await Host.DeleteSessionAsync(again.Id);
        await Host.DeleteSessionAsync(second.Id);
        Assert.That((await Host.Http.DeleteAsync("/v1/users/disk-ann/storage")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        Assert.That((await Host.Http.DeleteAsync("/v1/users/disk-bob/storage")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        Assert.That(File.Exists(image), Is.False);
        var cat = await Host.CreateSessionAsync(new CreateSessionRequest { UserId = "disk-cat" });
        await Host.DeleteSessionAsync(cat.Id);
        Assert.That((await Host.Http.DeleteAsync("/v1/users/disk-cat/storage")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
    }

    [Test]
    public async Task Block_io_ceilings_apply_to_the_sessions_disks_and_the_shared_host_disk()
    {
        var session = await Host.CreateSessionAsync(new CreateSessionRequest { UserId = "disk-io" });
        try
        {
            var throttles = await Host.ExecuteAsync(session.Id, "cat /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device /sys/fs/cgroup/blkio/blkio.throttle.write_iops_device");
            var lines = throttles.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            var mounts = await Host.ExecuteAsync(session.Id, "awk '$2==\"/workspace\" || $2==\"/home/sandbox/persist\" {print $1}' /proc/mounts");
            var devices = mounts.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.That(devices, Has.Length.EqualTo(2).And.All.StartsWith("/dev/loop"), mounts.Stdout);
            foreach (var device in devices)
            {
                var numbers = File.ReadAllText($"/sys/block/{Path.GetFileName(device)}/dev").Trim();
                Assert.That(lines, Does.Contain($"{numbers} {256L << 20}"), $"read ceiling on {device}");
                Assert.That(lines, Does.Contain($"{numbers} 2000"), $"write IOPS ceiling on {device}");
            }
            var host = BlockIo.WholeDiskOf(Engine.DiskDirectory(Host.Instance));
            Assert.That(host, Is.Not.Null);
            var hostNumbers = File.ReadAllText($"/sys/block/{Path.GetFileName(host)}/dev").Trim();
            Assert.That(lines, Does.Contain($"{hostNumbers} {256L << 20}"), "the shared host disk is throttled per session too");
        }
        finally
        {
            await Host.DeleteSessionAsync(session.Id);
            await Host.Http.DeleteAsync("/v1/users/disk-io/storage");
        }
    }

    [Test]
    public async Task Disk_commitment_beyond_what_the_host_allows_is_a_503_with_retry_after()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:DiskQuotas"] = "on",
            ["Sandbox:DefaultDiskBytes"] = (64L << 20).ToString(),
            ["Sandbox:DiskPoolSize"] = "0",
            ["Sandbox:MaxCommittedDiskBytes"] = (100L << 20).ToString(),
        });
        var one = await host.CreateSessionAsync();
        var two = await host.Http.PostAsJsonAsync("/v1/sessions", new CreateSessionRequest(), SandboxJsonContext.Default.CreateSessionRequest);
        Assert.That(two.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        Assert.That(two.Headers.RetryAfter, Is.Not.Null);
        Assert.That((await ServerHost.ProblemAsync(two)).GetProperty("code").GetString(), Is.EqualTo("capacity_exhausted"));
        await host.DeleteSessionAsync(one.Id);
        var three = await host.CreateSessionAsync();
        await host.DeleteSessionAsync(three.Id);
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);
    }

    [Test]
    public async Task Unused_user_storage_expires_after_the_retention()
    {
        await using var host = await ServerHost.StartAsync(new Dictionary<string, string?>
        {
            ["Sandbox:DiskQuotas"] = "on",
            ["Sandbox:UserStorageBytes"] = (32L << 20).ToString(),
            ["Sandbox:DiskPoolSize"] = "0",
            // Two seconds.
            ["Sandbox:UserStorageRetentionDays"] = (2.0 / 86400).ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Sandbox:ReaperIntervalSeconds"] = "0.5",
        });
        var session = await host.CreateSessionAsync(new CreateSessionRequest { UserId = "short-lived" });
        await host.ExecuteAsync(session.Id, "echo x > /home/sandbox/persist/x");
        await Task.Delay(3000);
        Assert.That(await UserVolumesAsync(host), Is.EqualTo(1), "storage in use does not expire");
        await host.DeleteSessionAsync(session.Id);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (await UserVolumesAsync(host) > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(250);
        }
        Assert.That(await UserVolumesAsync(host), Is.Zero, "unused storage is deleted after the retention");
        Assert.That(Engine.DiskImages(host.Instance), Is.Empty);
        await host.DisposeAsync();
        Assert.That(await Engine.CountResourcesAsync(host.Instance), Is.Zero);

        static async Task<int> UserVolumesAsync(ServerHost host) =>
            (await Engine.Docker.ListVolumesAsync(SessionLabels.Instance, host.Instance, CancellationToken.None))
                .Count(v => v.Labels.GetValueOrDefault(SessionLabels.Kind) == SessionLabels.KindUserStorage);
    }

    private static string? LoopDeviceOf(string image)
    {
        foreach (var block in Directory.EnumerateDirectories("/sys/block", "loop*"))
        {
            var backing = Path.Combine(block, "loop", "backing_file");
            if (File.Exists(backing) && File.ReadAllText(backing).Trim() == image)
            {
                return "/dev/" + Path.GetFileName(block);
            }
        }
        return null;
    }

    private static void Run(string program, params string[] arguments)
    {
        using var process = System.Diagnostics.Process.Start(program, arguments);
        process.WaitForExit();
        Assert.That(process.ExitCode, Is.Zero, $"{program} {string.Join(' ', arguments)}");
    }
}
