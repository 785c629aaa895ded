namespace SandboxKit.Client;

/// <summary>Optional settings of <see cref="SandboxSession.ExecuteAsync"/> and <see cref="SandboxSession.StreamAsync"/>.</summary>
public sealed class ExecuteOptions
{
    /// <summary>Time after which the command's whole process tree is killed (<see cref="CommandResult.TimedOut"/>).
    /// Defaults to the server's default; the server caps it at its maximum. The HTTP call waits this long plus
    /// <see cref="SandboxClientOptions.CommandTimeoutMargin"/>.</summary>
    public TimeSpan? Timeout { get; set; }

    /// <summary>Text written to the command's standard input, which is then closed.</summary>
    public string? Stdin { get; set; }

    /// <summary>Extra environment variables for this command only.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; set; }

    /// <summary>Working directory for this command only (the session's own directory is unchanged).</summary>
    public string? WorkingDirectory { get; set; }

    /// <summary>Send stderr into stdout, in order, as <c>2&gt;&amp;1</c> would.</summary>
    public bool MergeStderr { get; set; }

    /// <summary>Your own idempotency key. By default the client generates one per call (and reuses it on retries);
    /// set one to make a call safe to repeat across process restarts.</summary>
    public string? IdempotencyKey { get; set; }
}

/// <summary>Optional settings of <see cref="SandboxSession.RunCodeAsync"/>, <see cref="SandboxSession.RunCodeStreamAsync"/>
/// and <see cref="SandboxCodeContext.RunAsync"/>.</summary>
public sealed class RunCodeOptions
{
    /// <summary>Time after which the cell is interrupted (Python: <c>KeyboardInterrupt</c>); its context keeps its variables
    /// unless it does not stop within a few seconds and is killed (<see cref="CodeResult.StateLost"/>). For bash: the process
    /// tree is killed. Defaults to the server's default; the HTTP call waits this long plus
    /// <see cref="SandboxClientOptions.CommandTimeoutMargin"/>.</summary>
    public TimeSpan? Timeout { get; set; }

    /// <summary>The code context to run in (<see cref="SandboxCodeContext.Id"/>); <see langword="null"/> for the language's
    /// default context, made on first use. Ignored for bash, which runs in the session's shell.</summary>
    public string? ContextId { get; set; }

    /// <summary>Bash only: text written to standard input, which is then closed.</summary>
    public string? Stdin { get; set; }

    /// <summary>Bash only: extra environment variables for this run.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; set; }

    /// <summary>Your own idempotency key (see <see cref="ExecuteOptions.IdempotencyKey"/>).</summary>
    public string? IdempotencyKey { get; set; }
}

/// <summary>Optional settings of <see cref="SandboxSession.StartProcessAsync"/>.</summary>
public sealed class StartProcessOptions
{
    /// <summary>Time after which the process tree is killed; by default only the session's lifetime bounds it.</summary>
    public TimeSpan? Timeout { get; set; }

    /// <summary>Keep stdin open so text can be sent with <see cref="SandboxProcess.SendStdinAsync"/>.</summary>
    public bool KeepStdinOpen { get; set; }

    /// <summary>Extra environment variables for this process only.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; set; }

    /// <summary>Your own idempotency key (see <see cref="ExecuteOptions.IdempotencyKey"/>).</summary>
    public string? IdempotencyKey { get; set; }
}

/// <summary>Language names accepted by <see cref="SandboxSession.RunCodeAsync"/> (the server also takes the aliases
/// <c>python3</c>, <c>py</c>, <c>js</c>, <c>nodejs</c>, <c>sh</c> and <c>shell</c>).</summary>
public static class CodeLanguages
{
    /// <summary>Python 3 (IPython when the image has it): a live interpreter whose variables persist from cell to cell.</summary>
    public const string Python = "python";

    /// <summary>JavaScript on Node.js: a live interpreter whose globals persist from cell to cell.</summary>
    public const string JavaScript = "javascript";

    /// <summary>Node.js: the same as <see cref="JavaScript"/>.</summary>
    public const string Node = "node";

    /// <summary>Bash, run in the session's shell state (as <see cref="SandboxSession.ExecuteAsync"/>).</summary>
    public const string Bash = "bash";
}
