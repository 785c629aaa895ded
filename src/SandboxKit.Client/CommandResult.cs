using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// What a finished command produced. A non-zero exit code is a normal result, not an exception;
/// call <see cref="EnsureSuccess"/> to turn failure into a <see cref="CommandFailedException"/>.
/// </summary>
public sealed class CommandResult
{
    /// <summary>Creates a result from the server's contract type (also handy for fakes in tests).</summary>
    /// <param name="result">The server's result.</param>
    public CommandResult(ExecuteResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        ExitCode = result.ExitCode;
        Stdout = result.Stdout ?? string.Empty;
        Stderr = result.Stderr ?? string.Empty;
        TimedOut = result.TimedOut;
        OomKilled = result.OomKilled;
        Truncated = result.Truncated;
        StdoutBytes = result.StdoutBytes;
        StderrBytes = result.StderrBytes;
        Duration = TimeSpan.FromMilliseconds(result.DurationMs);
        WorkingDirectory = result.WorkingDirectory;
        UserCpuTime = TimeSpan.FromMilliseconds(result.CpuUserMs);
        SystemCpuTime = TimeSpan.FromMilliseconds(result.CpuSystemMs);
        PeakMemoryBytes = result.PeakMemoryBytes;
    }

    /// <summary>Exit status; 128 + signal number when a signal ended the command.</summary>
    public int ExitCode { get; }

    /// <summary>Standard output. When <see cref="Truncated"/>: head, a marker line, tail.</summary>
    public string Stdout { get; }

    /// <summary>Standard error, as <see cref="Stdout"/>.</summary>
    public string Stderr { get; }

    /// <summary>True when the command ran out of time and its process tree was killed.</summary>
    public bool TimedOut { get; }

    /// <summary>True when the out-of-memory killer ended the command.</summary>
    public bool OomKilled { get; }

    /// <summary>True when an output stream exceeded the server's cap and its middle was dropped.</summary>
    public bool Truncated { get; }

    /// <summary>Total bytes written to stdout (before truncation).</summary>
    public long StdoutBytes { get; }

    /// <summary>Total bytes written to stderr (before truncation).</summary>
    public long StderrBytes { get; }

    /// <summary>Wall-clock duration of the command inside the sandbox.</summary>
    public TimeSpan Duration { get; }

    /// <summary>Working directory after the command (the session keeps it for the next one).</summary>
    public string? WorkingDirectory { get; }

    /// <summary>User CPU time of the command's process tree (the shell and every child it waited for).</summary>
    public TimeSpan UserCpuTime { get; }

    /// <summary>System (kernel) CPU time of the command's process tree.</summary>
    public TimeSpan SystemCpuTime { get; }

    /// <summary>Total CPU time of the command's process tree: <see cref="UserCpuTime"/> + <see cref="SystemCpuTime"/>.</summary>
    public TimeSpan CpuTime => UserCpuTime + SystemCpuTime;

    /// <summary>Peak memory of the command's process tree, in bytes (0 when the server did not measure it).</summary>
    public long PeakMemoryBytes { get; }

    /// <summary>True when the command exited with 0 and was neither timed out nor killed for memory.</summary>
    public bool Succeeded => ExitCode == 0 && !TimedOut && !OomKilled;

    /// <summary>Throws <see cref="CommandFailedException"/> unless <see cref="Succeeded"/>; returns this result otherwise.</summary>
    /// <returns>This result, for chaining.</returns>
    /// <exception cref="CommandFailedException">The command exited non-zero, timed out or was killed for memory.</exception>
    public CommandResult EnsureSuccess() => Succeeded ? this : throw new CommandFailedException(this);

    /// <inheritdoc />
    public override string ToString() =>
        $"exit {ExitCode}{(TimedOut ? ", timed out" : "")}{(OomKilled ? ", OOM-killed" : "")}{(Truncated ? ", truncated" : "")}, " +
        $"{Duration.TotalMilliseconds:0} ms, CPU {CpuTime.TotalMilliseconds:0} ms, peak {PeakMemoryBytes / 1024} KiB, stdout {StdoutBytes} B, stderr {StderrBytes} B";
}
