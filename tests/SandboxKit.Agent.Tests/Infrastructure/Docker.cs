using System.Diagnostics;
using System.Reflection;
using System.Text;

namespace SandboxKit.Agent.Tests.Infrastructure;

/// <summary>The docker CLI, for arranging containers and images (everything the tests make is labelled <see cref="Label"/>).</summary>
public static class Docker
{
    public const string Label = "org.sandboxkit.test=agent";
    public const string Image = "sandboxkit/sandbox:0.1.0";

    /// <summary>The bundle built by the agent project's PublishBundle (see the test project file).</summary>
    public static string BundleDirectory { get; } =
        typeof(Docker).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "AgentBundle").Value!;

    public static string Build => File.ReadAllText(Path.Combine(BundleDirectory, "BUILD")).Trim();

    /// <summary>The repository's VERSION, as the build saw it.</summary>
    public static string Version { get; } =
        typeof(Docker).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "AgentVersion").Value!;

    public sealed record Output(int ExitCode, string Stdout, string Stderr)
    {
        public string Trimmed => Stdout.Trim();
    }

    /// <summary>Runs docker with <paramref name="args"/>; throws on a non-zero exit unless <paramref name="check"/> is false.</summary>
    public static Output Run(IEnumerable<string> args, bool check = true, int timeoutMs = 120_000, byte[]? stdin = null)
    {
        var info = new ProcessStartInfo("docker")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = stdin is not null,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (stdin is not null)
        {
            process.StandardInput.BaseStream.Write(stdin);
            process.StandardInput.Close();
        }
        if (!process.WaitForExit(timeoutMs))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"docker {string.Join(' ', info.ArgumentList)} did not finish in {timeoutMs} ms");
        }
        var output = new Output(process.ExitCode, stdout.Result, stderr.Result);
        if (check && output.ExitCode != 0)
        {
            throw new InvalidOperationException($"docker {string.Join(' ', info.ArgumentList)} exited {output.ExitCode}: {output.Stderr.Trim()}");
        }
        return output;
    }

    public static Output Run(params string[] args) => Run((IEnumerable<string>)args);

    /// <summary>Removes every container the tests labelled (leftovers of an aborted run).</summary>
    public static void RemoveLabelled()
    {
        var ids = Run("ps", "-aq", "--filter", $"label={Label}").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (ids.Length > 0)
        {
            Run(new[] { "rm", "-f" }.Concat(ids), check: false);
        }
    }

    /// <summary>An image made with <c>docker import</c> from files of this host (tagged sandboxkit/test-*, labelled).</summary>
    public static string ImportImage(string tag, IReadOnlyDictionary<string, string> files, IEnumerable<string> changes)
    {
        var tar = BuildTar(files);
        var args = new List<string> { "import" };
        foreach (var change in changes.Append($"LABEL {Label}"))
        {
            args.Add("--change");
            args.Add(change);
        }
        args.Add("-");
        args.Add(tag);
        Run(args, stdin: tar);
        return tag;
    }

    /// <summary>A tar (ustar) of host files: image path → host path, with their directories.</summary>
    private static byte[] BuildTar(IReadOnlyDictionary<string, string> files)
    {
        using var memory = new MemoryStream();
        using (var writer = new System.Formats.Tar.TarWriter(memory, System.Formats.Tar.TarEntryFormat.Pax, leaveOpen: true))
        {
            var directories = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var path in files.Keys)
            {
                var parts = path.Trim('/').Split('/');
                for (var i = 1; i < parts.Length; i++)
                {
                    directories.Add(string.Join('/', parts[..i]));
                }
            }
            foreach (var directory in directories)
            {
                writer.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.Directory, directory + "/")
                {
                    Mode = (UnixFileMode)Convert.ToInt32("755", 8),
                });
            }
            foreach (var (path, host) in files)
            {
                var entry = new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, path.Trim('/'))
                {
                    Mode = (UnixFileMode)Convert.ToInt32("755", 8),
                    DataStream = new MemoryStream(File.ReadAllBytes(host)),
                };
                writer.WriteEntry(entry);
            }
        }
        return memory.ToArray();
    }

    public static string Text(byte[] bytes) => Encoding.UTF8.GetString(bytes);
}
