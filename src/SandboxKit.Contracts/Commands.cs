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

/// <summary>
/// Body of <c>POST /v1/sessions/{id}/code</c>: a cell run in a live interpreter context (<c>python</c>,
/// <c>javascript</c>), whose variables persist to the next cell; or <c>bash</c>, run in the session's shell.
/// </summary>
public sealed record RunCodeRequest
{
    /// <summary><c>python</c> (also <c>python3</c>, <c>py</c>), <c>javascript</c> (also <c>js</c>, <c>node</c>) or <c>bash</c>.</summary>
    public required string Language { get; init; }

    /// <summary>The context to run in; absent: the language's default context (made on first use).</summary>
    public string? ContextId { get; init; }

    /// <summary>Source text.</summary>
    public required string Code { get; init; }

    /// <summary>Seconds before the cell is interrupted (its context keeps its state; killed only if it does not stop within a few seconds).
    /// For <c>bash</c>: before the process tree is killed.</summary>
    public double? TimeoutSeconds { get; init; }

    /// <summary><c>bash</c> only: text written to standard input, which is then closed.</summary>
    public string? Stdin { get; init; }

    /// <summary><c>bash</c> only: extra environment variables for this run.</summary>
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

    /// <summary>Code cells: the rich results (Jupyter mime bundles) in the order they came; the last expression's value has <c>isMainResult</c>.</summary>
    public IReadOnlyList<CodeOutput>? Results { get; init; }

    /// <summary>Code cells: the exception the cell raised (also for an interrupt: <c>KeyboardInterrupt</c> / <c>Interrupted</c>), or null.</summary>
    public CodeError? Error { get; init; }

    /// <summary>Code cells: the interpreter's execution count after the cell.</summary>
    public int? ExecutionCount { get; init; }

    /// <summary>Code cells: the context the cell ran in.</summary>
    public string? ContextId { get; init; }

    /// <summary>Code cells: true when the cell was interrupted (by its timeout or a call); the context's state is kept unless <see cref="StateLost"/>.</summary>
    public bool? Interrupted { get; init; }

    /// <summary>Code cells: true when the interpreter died or had to be killed (its variables are gone; the next cell gets a fresh one).</summary>
    public bool? StateLost { get; init; }
}

/// <summary>
/// One rich result of a code cell: a Jupyter mime bundle. Each mime type is a property whose value is a string
/// (<c>text/plain</c>, <c>text/html</c>, <c>text/markdown</c>, <c>image/svg+xml</c>: text; <c>image/png</c>,
/// <c>image/jpeg</c>: base64; <c>application/json</c>: JSON text), beside <c>isMainResult</c>.
/// </summary>
public sealed record CodeOutput
{
    /// <summary>True for the value of the cell's last expression; false for <c>display()</c> output and figures.</summary>
    public bool IsMainResult { get; init; }

    /// <summary>Mime type to value.</summary>
    [System.Text.Json.Serialization.JsonExtensionData]
    public Dictionary<string, System.Text.Json.JsonElement> Data { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The value of <paramref name="mimeType"/>, or null when the bundle does not have it.</summary>
    public string? Get(string mimeType) =>
        Data.TryGetValue(mimeType, out var value) && value.ValueKind == System.Text.Json.JsonValueKind.String ? value.GetString() : null;
}

/// <summary>An exception raised by a code cell.</summary>
public sealed record CodeError
{
    /// <summary>The exception's class, e.g. <c>ZeroDivisionError</c>.</summary>
    public required string Name { get; init; }

    /// <summary>Its message, e.g. <c>division by zero</c>.</summary>
    public required string Value { get; init; }

    /// <summary>The traceback as plain text.</summary>
    public required string Traceback { get; init; }
}

/// <summary>One event of a streamed command.</summary>
public sealed record CommandEvent
{
    /// <summary><c>started</c>, <c>stdout</c>, <c>stderr</c>, <c>result</c> (code cells), <c>exited</c>, <c>keepalive</c> or <c>error</c>.</summary>
    public required string Type { get; init; }

    /// <summary>Process id, on <c>started</c>.</summary>
    public int? Pid { get; init; }

    /// <summary>Output text, on <c>stdout</c> and <c>stderr</c>.</summary>
    public string? Data { get; init; }

    /// <summary>The result, on <c>exited</c>.</summary>
    public ExecuteResult? Result { get; init; }

    /// <summary>What went wrong, on <c>error</c> (for a code cell's exception: <c>name: value</c>).</summary>
    public string? Error { get; init; }

    /// <summary>A code cell's rich result, on <c>result</c>.</summary>
    public CodeOutput? Output { get; init; }

    /// <summary>A code cell's exception, on <c>error</c>: the cell failed, the stream did not (it ends with <c>exited</c>).</summary>
    public CodeError? Exception { get; init; }
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

    /// <summary>A code cell's rich result (<see cref="CommandEvent.Output"/>).</summary>
    public const string Result = "result";
    /// <summary>Sent on long silences so proxies keep the stream open.</summary>
    public const string KeepAlive = "keepalive";
    /// <summary>The stream failed (session gone, engine lost).</summary>
    public const string Error = "error";
}

/// <summary>Body of <c>POST /v1/sessions/{id}/contexts</c>: a new live interpreter.</summary>
public sealed record CreateContextRequest
{
    /// <summary><c>python</c> or <c>javascript</c> (aliases as in <see cref="RunCodeRequest.Language"/>).</summary>
    public required string Language { get; init; }

    /// <summary>Working directory (relative to the session's); default the session's.</summary>
    public string? Cwd { get; init; }
}

/// <summary>A live interpreter in a session: its variables persist from cell to cell.</summary>
public sealed record CodeContext
{
    /// <summary>Context id (<c>default-python</c> and <c>default-javascript</c> are the languages' default contexts).</summary>
    public required string Id { get; init; }

    /// <summary><c>python</c> or <c>javascript</c>.</summary>
    public required string Language { get; init; }

    /// <summary><c>starting</c>, <c>idle</c>, <c>busy</c> or <c>dead</c> (its interpreter exited; the next cell starts a fresh one).</summary>
    public required string Status { get; init; }

    /// <summary>Cells run in its current interpreter.</summary>
    public required int ExecutionCount { get; init; }

    /// <summary>When it was created.</summary>
    public required DateTimeOffset CreatedAt { get; init; }

    /// <summary>Its working directory.</summary>
    public string? Cwd { get; init; }

    /// <summary>The interpreter's version.</summary>
    public string? Version { get; init; }

    /// <summary>True when the Python context runs IPython (magics, rich display).</summary>
    public bool IPython { get; init; }

    /// <summary>How many interpreters it has had (1 + restarts, explicit or after a death).</summary>
    public int Generation { get; init; }
}

/// <summary>Result of listing contexts.</summary>
public sealed record CodeContextList
{
    /// <summary>The contexts.</summary>
    public required IReadOnlyList<CodeContext> Contexts { get; init; }
}
