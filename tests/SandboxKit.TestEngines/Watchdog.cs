using System.Diagnostics;

namespace SandboxKit.TestEngines;

/// <summary>
/// The last line of defence when the test process dies without disposing (SIGKILL, a crash, a runner that kills the
/// test host): a detached flock(1) that waits on the owner's lease and, once the kernel drops the lock with the dead
/// owner, runs the cleanup command while holding the lock (so a concurrent sweep leaves that engine alone).
/// It is started with setsid -f: not a child of the test host, not in its process group or session, so neither a
/// process-tree kill nor a terminal's Ctrl-C takes it down before it has done its job. Dispose kills it (by the pid it
/// wrote, after checking that pid still is that flock) before releasing the lease.
/// </summary>
internal static class Watchdog
{
    // $1 pid file, $2 lease file, the rest the cleanup command. Standard streams go to /dev/null first thing, so
    // the detached process never holds the test runner's pipes open.
    private const string Script =
        "exec </dev/null >/dev/null 2>&1; echo $$ > \"$1\"; lease=$2; shift 2; exec /usr/bin/flock \"$lease\" \"$@\"";

    public static async Task StartAsync(string leaseFile, string pidFile, IReadOnlyList<string> command, CancellationToken cancellationToken)
    {
        File.Delete(pidFile);
        var arguments = new List<string> { "-f", "/bin/sh", "-c", Script, "sandboxkit-test-engines-watchdog", pidFile, leaseFile };
        arguments.AddRange(command);
        var result = await ProcessRunner.RunAsync("/usr/bin/setsid", arguments, TimeSpan.FromSeconds(10), cancellationToken: cancellationToken)
            .ConfigureAwait(false);
        if (!result.Succeeded)
        {
            throw new PrivateEngineException($"could not start the watchdog: {result.Stderr.Trim()}");
        }
        // Wait until it is flock and blocked on the lease, so a crash right after StartAsync is still covered.
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(5))
        {
            if (ReadPid(pidFile) is { } pid && IsWatchdog(pid, leaseFile))
            {
                return;
            }
            await Task.Delay(10, cancellationToken).ConfigureAwait(false);
        }
        throw new PrivateEngineException($"the watchdog for {leaseFile} did not come up");
    }

    /// <summary>Stops the watchdog of a lease this process still holds (so it cannot have started its cleanup yet).</summary>
    public static void Stop(string leaseFile, string pidFile) => Stop(leaseFile, ReadPid(pidFile), pidFile);

    /// <summary>Stops the watchdog whose pid was read earlier (the teardown deletes the pid file).</summary>
    public static void Stop(string leaseFile, int? watchdogPid, string pidFile)
    {
        if (watchdogPid is { } pid && IsWatchdog(pid, leaseFile))
        {
            try
            {
                using var process = Process.GetProcessById(pid);
                process.Kill();
                // Not our child (setsid -f): poll until it is gone, so "nothing left" holds when Stop returns.
                var deadline = Stopwatch.StartNew();
                while (PrivateEngine.IsAlive(pid) && deadline.Elapsed < TimeSpan.FromSeconds(5))
                {
                    Thread.Sleep(5);
                }
            }
            catch (ArgumentException)
            {
                // Exited meanwhile.
            }
            catch (InvalidOperationException)
            {
                // Exited meanwhile.
            }
        }
        File.Delete(pidFile);
    }

    public static int? ReadPid(string pidFile)
    {
        try
        {
            return int.TryParse(File.ReadAllText(pidFile).Trim(), out var pid) ? pid : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Checks the command line, so a recycled pid is never killed by mistake.</summary>
    private static bool IsWatchdog(int pid, string leaseFile)
    {
        try
        {
            var argv = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0');
            return argv.Length > 2 && argv[0] == "/usr/bin/flock" && argv[1] == leaseFile;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }
}
