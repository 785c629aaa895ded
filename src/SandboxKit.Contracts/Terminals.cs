namespace SandboxKit.Contracts;

/// <summary>Body of <c>POST /v1/sessions/{id}/terminals</c>: a shell (or a command) on a pseudo-terminal.</summary>
public sealed record CreateTerminalRequest
{
    /// <summary>Columns, 1-1000 (default 80).</summary>
    public int? Cols { get; init; }

    /// <summary>Rows, 1-1000 (default 24).</summary>
    public int? Rows { get; init; }

    /// <summary>Bash script text to run on the terminal; absent: an interactive login shell.</summary>
    public string? Command { get; init; }

    /// <summary>Extra environment variables for the terminal's process.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }
}

/// <summary>A terminal of a session.</summary>
public sealed record TerminalInfo
{
    /// <summary>Terminal id within the session.</summary>
    public required string Id { get; init; }

    /// <summary>What runs on it (the login shell when none was given).</summary>
    public required string Command { get; init; }

    /// <summary><c>running</c> or <c>exited</c>.</summary>
    public required string Status { get; init; }

    /// <summary>Current columns.</summary>
    public required int Cols { get; init; }

    /// <summary>Current rows.</summary>
    public required int Rows { get; init; }

    /// <summary>Linux pid of its process inside the sandbox.</summary>
    public required int Pid { get; init; }

    /// <summary>When it started.</summary>
    public required DateTimeOffset StartedAt { get; init; }

    /// <summary>Byte offset of the oldest output still kept for replay (<c>since</c> below this misses output).</summary>
    public required long FirstOffset { get; init; }

    /// <summary>Byte offset the next output byte will have (all output so far).</summary>
    public required long NextOffset { get; init; }

    /// <summary>Exit code, once exited.</summary>
    public int? ExitCode { get; init; }
}

/// <summary>Result of listing terminals.</summary>
public sealed record TerminalList
{
    /// <summary>The terminals, oldest first.</summary>
    public required IReadOnlyList<TerminalInfo> Terminals { get; init; }
}

/// <summary>Body of <c>POST /v1/sessions/{id}/terminals/{tid}/resize</c>.</summary>
public sealed record ResizeTerminalRequest
{
    /// <summary>Columns, 1-1000.</summary>
    public required int Cols { get; init; }

    /// <summary>Rows, 1-1000.</summary>
    public required int Rows { get; init; }
}

/// <summary>
/// A short-lived, single-use ticket that authenticates one WebSocket upgrade (<c>?ticket=</c>), so that a browser, which
/// cannot set headers on a WebSocket, never puts a long-lived API key in a URL.
/// </summary>
public sealed record WebSocketTicket
{
    /// <summary>The ticket (pass as the <c>ticket</c> query parameter).</summary>
    public required string Ticket { get; init; }

    /// <summary>When it stops being accepted.</summary>
    public required DateTimeOffset ExpiresAt { get; init; }
}

/// <summary>
/// Text messages of a terminal WebSocket (<c>/v1/sessions/{id}/terminals/{tid}/ws</c>); output and input bytes travel
/// as binary messages.
/// </summary>
public sealed record TerminalMessage
{
    /// <summary>
    /// Server to client: <c>attached</c> (the next binary messages start at byte <see cref="Offset"/>; <see cref="Dropped"/>
    /// when output before it that was asked for is no longer kept), <c>exit</c> (the terminal's process ended:
    /// <see cref="ExitCode"/>), <c>error</c> (<see cref="Message"/>). Client to server: <c>resize</c> (<see cref="Cols"/>,
    /// <see cref="Rows"/>).
    /// </summary>
    public required string Type { get; init; }

    /// <summary><c>attached</c>: output offset of the first byte that follows.</summary>
    public long? Offset { get; init; }

    /// <summary><c>attached</c>: true when older output than <c>since</c> asked for was dropped from the replay buffer.</summary>
    public bool? Dropped { get; init; }

    /// <summary><c>exit</c>: the exit code.</summary>
    public int? ExitCode { get; init; }

    /// <summary><c>error</c>: what went wrong.</summary>
    public string? Message { get; init; }

    /// <summary><c>resize</c>: columns.</summary>
    public int? Cols { get; init; }

    /// <summary><c>resize</c>: rows.</summary>
    public int? Rows { get; init; }
}

/// <summary>The message types of <see cref="TerminalMessage"/>.</summary>
public static class TerminalMessageTypes
{
    /// <summary>Server: the replay starts here.</summary>
    public const string Attached = "attached";
    /// <summary>Server: the process ended.</summary>
    public const string Exit = "exit";
    /// <summary>Server: a failure; the socket closes.</summary>
    public const string Error = "error";
    /// <summary>Client: new window size.</summary>
    public const string Resize = "resize";
}
