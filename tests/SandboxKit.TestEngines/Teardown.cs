using System.Security.Cryptography;

namespace SandboxKit.TestEngines;

/// <summary>Runs teardown.sh (the one teardown implementation) and checks independently that nothing is left.</summary>
internal static class Teardown
{
    private static readonly Lazy<string> ScriptPath = new(InstallScript);

    /// <summary>
    /// The script on disk, under the state root rather than in an engine's directory: the watchdog of a dead process
    /// still needs it. Named by its content hash, so versions of the harness never overwrite each other's copy.
    /// </summary>
    public static string Script => ScriptPath.Value;

    public static IReadOnlyList<string> Command(EngineNames names) => ["/bin/sh", Script, .. names.TeardownArguments];

    public static async Task<CommandResult> RunAsync(EngineNames names, CancellationToken cancellationToken) =>
        await ProcessRunner.RunAsync("/bin/sh", [Script, .. names.TeardownArguments], TimeSpan.FromMinutes(2), cancellationToken: cancellationToken)
            .ConfigureAwait(false);

    public static int RunSync(EngineNames names) => ProcessRunner.RunSync("/bin/sh", [Script, .. names.TeardownArguments], TimeSpan.FromSeconds(30));

    /// <summary>
    /// What is left of an engine, each as one readable line (empty when the engine is gone): processes that belong to
    /// it (in its cgroup tree, or naming its id on their command line), mounts under its
    /// directories, its namespace, veth, cgroups, directories, and lease.
    /// </summary>
    public static IReadOnlyList<string> FindLeftovers(EngineNames names, int? ignorePid = null)
    {
        var found = new List<string>();
        foreach (var pid in ProcessesOf(names).Where(p => p != ignorePid))
        {
            found.Add($"process {pid} ({Comm(pid)})");
        }
        foreach (var mount in Mounts.Under(names.DataRoot, names.RunDirectory, names.NetworkNamespacePath))
        {
            found.Add($"mount {mount}");
        }
        if (File.Exists(names.NetworkNamespacePath))
        {
            found.Add($"network namespace {names.NetworkNamespace}");
        }
        if (Directory.Exists("/sys/class/net/" + names.HostVeth))
        {
            found.Add($"link {names.HostVeth}");
        }
        foreach (var cgroup in CgroupsOf(names))
        {
            found.Add($"cgroup {cgroup}");
        }
        foreach (var directory in new[] { names.DataRoot, names.RunDirectory })
        {
            if (Directory.Exists(directory))
            {
                found.Add($"directory {directory}");
            }
        }
        if (File.Exists(names.LeaseFile))
        {
            found.Add($"lease {names.LeaseFile}");
        }
        return found;
    }

    public static IEnumerable<string> CgroupsOf(EngineNames names)
    {
        if (!Directory.Exists("/sys/fs/cgroup"))
        {
            yield break;
        }
        var direct = Path.Combine("/sys/fs/cgroup", names.Cgroup);
        if (Directory.Exists(direct))
        {
            yield return direct;
        }
        foreach (var hierarchy in Directory.EnumerateDirectories("/sys/fs/cgroup"))
        {
            var candidate = Path.Combine(hierarchy, names.Cgroup);
            if (Directory.Exists(candidate))
            {
                yield return candidate;
            }
        }
    }

    private static SortedSet<int> ProcessesOf(EngineNames names)
    {
        var pids = new SortedSet<int>();
        foreach (var cgroup in CgroupsOf(names))
        {
            foreach (var procs in SafeEnumerate(cgroup, "cgroup.procs"))
            {
                foreach (var line in SafeReadLines(procs))
                {
                    if (int.TryParse(line, out var pid) && !IsZombie(pid))
                    {
                        pids.Add(pid);
                    }
                }
            }
        }
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid) || pid == Environment.ProcessId || IsZombie(pid))
            {
                continue;
            }
            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline"));
                // dockerd, containerd and the shims name the engine's paths or namespace on their command line.
                if (cmdline.Contains(names.Id, StringComparison.Ordinal))
                {
                    pids.Add(pid);
                }
            }
            catch (IOException)
            {
                // Exited while we looked.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        return pids;
    }

    private static bool IsZombie(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
            return state == "Z";
        }
        catch (IOException)
        {
            return true; // Gone altogether.
        }
    }

    private static string Comm(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim();
        }
        catch (IOException)
        {
            return "exited";
        }
    }

    private static IEnumerable<string> SafeEnumerate(string root, string fileName)
    {
        try
        {
            return Directory.EnumerateFiles(root, fileName, SearchOption.AllDirectories).ToList();
        }
        catch (IOException)
        {
            return [];
        }
        catch (UnauthorizedAccessException)
        {
            return [];
        }
    }

    private static IEnumerable<string> SafeReadLines(string path)
    {
        try
        {
            return File.ReadAllLines(path);
        }
        catch (IOException)
        {
            return [];
        }
    }

    private static string InstallScript()
    {
        using var resource = typeof(Teardown).Assembly.GetManifestResourceStream("SandboxKit.TestEngines.teardown.sh")
            ?? throw new PrivateEngineException("teardown.sh is not embedded in SandboxKit.TestEngines");
        using var buffer = new MemoryStream();
        resource.CopyTo(buffer);
        var bytes = buffer.ToArray();
        var directory = Path.Combine(EngineNames.StateRoot, "bin");
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, $"teardown-{Convert.ToHexStringLower(SHA256.HashData(bytes))[..12]}.sh");
        if (!File.Exists(path))
        {
            var temporary = $"{path}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(temporary, bytes);
            File.Move(temporary, path, overwrite: true);
        }
        return path;
    }
}
