namespace SandboxKit.Contracts;

/// <summary>Body of <c>POST /v1/sessions/{id}/processes</c>: a command started in the background.</summary>
public sealed record StartProcessRequest
{
    /// <summary>Bash script text, run in the session's shell state.</summary>
    public required string Command { get; init; }

    /// <summary>Seconds before the process tree is killed; none by default (the session's lifetime bounds it).</summary>
    public double? TimeoutSeconds { get; init; }

    /// <summary>Keep stdin open so text can be sent later; otherwise stdin is closed.</summary>
    public bool KeepStdinOpen { get; init; }

    /// <summary>Extra environment variables for this process only.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }
}

/// <summary>A background process and its state.</summary>
public sealed record ProcessInfo
{
    /// <summary>Process id within SandboxKit (not the Linux pid).</summary>
    public required string Id { get; init; }

    /// <summary>The command.</summary>
    public required string Command { get; init; }

    /// <summary><c>running</c> or <c>exited</c>.</summary>
    public required string Status { get; init; }

    /// <summary>Linux pid inside the sandbox, once started.</summary>
    public int? Pid { get; init; }

    /// <summary>Start time.</summary>
    public required DateTimeOffset StartedAt { get; init; }

    /// <summary>The result, once exited.</summary>
    public ExecuteResult? Result { get; init; }
}

/// <summary>Result of listing background processes.</summary>
public sealed record ProcessList
{
    /// <summary>The processes.</summary>
    public required IReadOnlyList<ProcessInfo> Processes { get; init; }
}

/// <summary>Output of a background process since a cursor.</summary>
public sealed record ProcessOutput
{
    /// <summary>Output events (<c>stdout</c>/<c>stderr</c>) after the cursor, oldest first.</summary>
    public required IReadOnlyList<CommandEvent> Events { get; init; }

    /// <summary>Pass this as <c>cursor</c> to get what follows.</summary>
    public required long NextCursor { get; init; }

    /// <summary>True when older output was dropped from the server's buffer before it was read.</summary>
    public required bool Dropped { get; init; }

    /// <summary>The process state now.</summary>
    public required ProcessInfo Process { get; init; }
}

/// <summary>Body of <c>POST /v1/sessions/{id}/processes/{processId}/stdin</c>.</summary>
public sealed record SendStdinRequest
{
    /// <summary>Text to write.</summary>
    public string? Text { get; init; }

    /// <summary>Close stdin after writing.</summary>
    public bool Close { get; init; }
}
