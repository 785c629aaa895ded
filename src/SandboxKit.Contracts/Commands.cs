namespace SandboxKit.Contracts;

/// <summary>Body of <c>POST /v1/sessions/{id}/commands</c>: a bash command run in the session's shell state.</summary>
public sealed record ExecuteRequest
{
    /// <summary>Bash script text. The working directory and exported variables it leaves persist.</summary>
    public required string Command { get; init; }

    /// <summary>Seconds before the whole process tree is killed. Defaults to the server's default; capped by its maximum.</summary>
    public double? TimeoutSeconds { get; init; }

    /// <summary>Text written to the command's standard input, which is then closed. Without it stdin is closed.</summary>
    public string? Stdin { get; init; }

    /// <summary>Extra environment variables for this command only.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }

    /// <summary>Working directory for this command only.</summary>
    public string? WorkingDirectory { get; init; }

    /// <summary>Send stderr into stdout, in order, as <c>2&gt;&amp;1</c> would.</summary>
    public bool MergeStderr { get; init; }
}

/// <summary>Body of <c>POST /v1/sessions/{id}/code</c>: source text run as a file with its interpreter.</summary>
public sealed record RunCodeRequest
{
    /// <summary><c>python</c>, <c>node</c> or <c>bash</c>.</summary>
    public required string Language { get; init; }

    /// <summary>Source text.</summary>
    public required string Code { get; init; }

    /// <summary>Seconds before the whole process tree is killed.</summary>
    public double? TimeoutSeconds { get; init; }

    /// <summary>Text written to standard input, which is then closed.</summary>
    public string? Stdin { get; init; }

    /// <summary>Extra environment variables for this run only.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }
}

/// <summary>What a finished command produced.</summary>
public sealed record ExecuteResult
{
    /// <summary>Exit status; 128 + signal number when a signal ended it.</summary>
    public required int ExitCode { get; init; }

    /// <summary>Standard output (UTF-8; invalid bytes become U+FFFD). When truncated: head, a marker line, tail.</summary>
    public required string Stdout { get; init; }

    /// <summary>Standard error, as <see cref="Stdout"/>.</summary>
    public required string Stderr { get; init; }

    /// <summary>True when the command ran out of time and its process tree was killed.</summary>
    public required bool TimedOut { get; init; }

    /// <summary>True when the kernel's out-of-memory killer ended the command.</summary>
    public required bool OomKilled { get; init; }

    /// <summary>True when either stream exceeded the output cap and its middle was dropped.</summary>
    public required bool Truncated { get; init; }

    /// <summary>Total bytes the command wrote to stdout.</summary>
    public required long StdoutBytes { get; init; }

    /// <summary>Total bytes the command wrote to stderr.</summary>
    public required long StderrBytes { get; init; }

    /// <summary>Wall-clock duration of the command in milliseconds, measured by the server.</summary>
    public required double DurationMs { get; init; }

    /// <summary>User CPU time of the command's process tree (the shell and every child it waited for), in milliseconds.</summary>
    public double CpuUserMs { get; init; }

    /// <summary>System CPU time of the command's process tree, in milliseconds.</summary>
    public double CpuSystemMs { get; init; }

    /// <summary>Peak memory of the command's process tree in bytes: the larger of its biggest process's peak resident set and the
    /// sum of the tree's resident sets, sampled every 100 ms.</summary>
    public long PeakMemoryBytes { get; init; }

    /// <summary>Working directory after the command.</summary>
    public string? WorkingDirectory { get; init; }
}

/// <summary>One event of a streamed command.</summary>
public sealed record CommandEvent
{
    /// <summary><c>started</c>, <c>stdout</c>, <c>stderr</c>, <c>exited</c>, <c>keepalive</c> or <c>error</c>.</summary>
    public required string Type { get; init; }

    /// <summary>Process id, on <c>started</c>.</summary>
    public int? Pid { get; init; }

    /// <summary>Output text, on <c>stdout</c> and <c>stderr</c>.</summary>
    public string? Data { get; init; }

    /// <summary>The result, on <c>exited</c>.</summary>
    public ExecuteResult? Result { get; init; }

    /// <summary>What went wrong, on <c>error</c>.</summary>
    public string? Error { get; init; }
}

/// <summary>Event type names used in <see cref="CommandEvent.Type"/>.</summary>
public static class CommandEventTypes
{
    /// <summary>The command's process started.</summary>
    public const string Started = "started";
    /// <summary>Standard output text.</summary>
    public const string Stdout = "stdout";
    /// <summary>Standard error text.</summary>
    public const string Stderr = "stderr";
    /// <summary>The command ended; carries the result.</summary>
    public const string Exited = "exited";
    /// <summary>Sent on long silences so proxies keep the stream open.</summary>
    public const string KeepAlive = "keepalive";
    /// <summary>The stream failed (session gone, engine lost).</summary>
    public const string Error = "error";
}
