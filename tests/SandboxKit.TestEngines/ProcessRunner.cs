using System.Diagnostics;
using System.Text;

namespace SandboxKit.TestEngines;

/// <summary>What a finished command printed and how it ended.</summary>
/// <param name="ExitCode">The process's exit code.</param>
/// <param name="Stdout">Everything it wrote to standard output.</param>
/// <param name="Stderr">Everything it wrote to standard error.</param>
public sealed record CommandResult(int ExitCode, string Stdout, string Stderr)
{
    /// <summary>True when the exit code is 0.</summary>
    public bool Succeeded => ExitCode == 0;
}

/// <summary>Runs short-lived commands (ip, docker, cp, the teardown script) with captured output and a deadline.</summary>
internal static class ProcessRunner
{
    /// <summary>Runs <paramref name="file"/> to completion; kills it (and its children) when the deadline passes.</summary>
    public static async Task<CommandResult> RunAsync(
        string file, IEnumerable<string> arguments, TimeSpan? timeout = null, string? standardInput = null, CancellationToken cancellationToken = default)
    {
        using var process = new Process { StartInfo = CreateStartInfo(file, arguments) };
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (stdout) { stdout.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (stderr) { stderr.AppendLine(e.Data); } } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (standardInput is not null)
        {
            await process.StandardInput.WriteAsync(standardInput.AsMemory(), cancellationToken).ConfigureAwait(false);
        }
        process.StandardInput.Close();

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout ?? TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            TryKill(process);
            if (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            throw new TimeoutException($"{Describe(file, arguments)} did not finish within {timeout ?? TimeSpan.FromMinutes(2)}");
        }
        // WaitForExitAsync returns once the streams reached EOF as well, so the builders are complete here.
        return new CommandResult(process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs the command and throws <see cref="PrivateEngineException"/> when it fails.</summary>
    public static async Task<string> RunCheckedAsync(
        string file, IEnumerable<string> arguments, TimeSpan? timeout = null, string? standardInput = null, CancellationToken cancellationToken = default)
    {
        var list = arguments as IReadOnlyList<string> ?? arguments.ToList();
        var result = await RunAsync(file, list, timeout, standardInput, cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
        {
            throw new PrivateEngineException($"{Describe(file, list)} exited with {result.ExitCode}: {result.Stderr.Trim()}");
        }
        return result.Stdout;
    }

    /// <summary>The synchronous form for process-exit cleanup, where no async continuation may be relied on.</summary>
    public static int RunSync(string file, IEnumerable<string> arguments, TimeSpan timeout)
    {
        using var process = new Process { StartInfo = CreateStartInfo(file, arguments) };
        process.Start();
        process.StandardInput.Close();
        // Drain both pipes so a chatty command cannot block on a full pipe.
        _ = process.StandardOutput.ReadToEndAsync();
        _ = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            TryKill(process);
            return -1;
        }
        return process.ExitCode;
    }

    /// <summary>
    /// Every command gets its own pipes for all three standard streams, never the test host's: a process that
    /// outlives the test run must not hold the runner's output open (a CI pipe would then never reach EOF).
    /// </summary>
    public static ProcessStartInfo CreateStartInfo(string file, IEnumerable<string> arguments)
    {
        var info = new ProcessStartInfo(file)
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }
        return info;
    }

    public static string Describe(string file, IEnumerable<string> arguments) =>
        string.Join(' ', new[] { file }.Concat(arguments).Select(a => a.Contains(' ', StringComparison.Ordinal) ? $"'{a}'" : a));

    private static void TryKill(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
    }
}
