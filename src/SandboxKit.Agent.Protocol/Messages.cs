using System.Text.Json.Serialization;

namespace SandboxKit.Agent.Protocol;

// Payload shapes of docs/supervisor-protocol.md. JSON is camelCase; absent optional fields are omitted.
// Both sides parse with ProtocolJsonContext; unknown fields are ignored, wrong types are errors.
// Properties with a default other than the type's default use `set`, not `init`: source-generated deserialization
// assigns every init-only property, so an absent field would lose its initializer.

/// <summary><c>H</c>: the server opens a connection.</summary>
public sealed record ServerHello
{
    /// <summary>Must equal <see cref="FrameLimits.ProtocolVersion"/>.</summary>
    public int Protocol { get; set; } = FrameLimits.ProtocolVersion;

    /// <summary>The server's version, for the supervisor's log.</summary>
    public string? ServerVersion { get; init; }

    /// <summary>Initial flow-control window per channel and direction, in bytes (4 KiB to 16 MiB).</summary>
    public int Window { get; set; } = FrameLimits.DefaultWindow;

    /// <summary>How long results of keyed commands are kept, in milliseconds.</summary>
    public long KeyTtlMs { get; set; } = 600_000;
}

/// <summary><c>h</c>: the supervisor's answer; nothing else is sent before it.</summary>
public sealed record SupervisorHello
{
    /// <summary>The supervisor's protocol number.</summary>
    public required int Protocol { get; init; }

    /// <summary>The supervisor's version (the repository's VERSION).</summary>
    public required string Version { get; init; }

    /// <summary>Content hash of the supervisor build; the server refuses a build it did not bring.</summary>
    public required string Build { get; init; }

    /// <summary>The supervisor's pid inside the container (1 when it is the init).</summary>
    public required int Pid { get; init; }

    /// <summary>Random id of this supervisor process: it changes only when the supervisor restarts (i.e. never within a container's life).</summary>
    public required string BootId { get; init; }

    /// <summary>How many connections this supervisor has accepted, this one included.</summary>
    public required long Connection { get; init; }

    /// <summary>The lowest channel id the server may use on this connection: one above every id used before, on any connection.</summary>
    public required uint NextChannel { get; init; }

    /// <summary>The uid commands run as.</summary>
    public required int Uid { get; init; }

    /// <summary>The gid commands run as.</summary>
    public required int Gid { get; init; }

    /// <summary>What the image offers; <see cref="ImageCapabilities.Probed"/> is false until the slow probes are done (a <c>c</c> frame follows then).</summary>
    public required ImageCapabilities Capabilities { get; init; }
}

/// <summary>What the image offers, as the supervisor found it.</summary>
public sealed record ImageCapabilities
{
    /// <summary>True once versions have been probed (running the interpreters); false in an early hello.</summary>
    public bool Probed { get; init; }

    /// <summary>The shell commands run with (always present: the supervisor brings a static bash).</summary>
    public required ToolInfo Bash { get; init; }

    /// <summary>The image's <c>python3</c> on the session PATH, if any.</summary>
    public ToolInfo? Python3 { get; init; }

    /// <summary>True when <c>python3</c> can import IPython.</summary>
    public bool IPython { get; init; }

    /// <summary>The image's <c>node</c> on the session PATH, if any.</summary>
    public ToolInfo? Node { get; init; }

    /// <summary>The image's own bash, if it has one (commands still run with <see cref="Bash"/>).</summary>
    public ToolInfo? ImageBash { get; init; }
}

/// <summary>A program found in the sandbox.</summary>
public sealed record ToolInfo
{
    /// <summary>Absolute path.</summary>
    public required string Path { get; init; }

    /// <summary>Version string, when probed (e.g. <c>3.11.2</c>).</summary>
    public string? Version { get; init; }
}

/// <summary><c>l</c>: a supervisor log line.</summary>
public sealed record SupervisorLog
{
    /// <summary><c>debug</c>, <c>info</c>, <c>warn</c> or <c>error</c>.</summary>
    public required string Level { get; init; }

    /// <summary>The message (at most 512 characters; the server escapes control characters before logging it).</summary>
    public required string Message { get; init; }

    /// <summary>Lines dropped by the supervisor's rate limit since the last one sent.</summary>
    public int Suppressed { get; init; }
}

/// <summary><c>R</c>: run a command.</summary>
public sealed record RunRequest
{
    /// <summary>Bash script text. Exactly one of <see cref="Command"/> and <see cref="Code"/>.</summary>
    public string? Command { get; init; }

    /// <summary>Source text run with the interpreter of <see cref="Language"/>.</summary>
    public string? Code { get; init; }

    /// <summary><c>python</c>, <c>node</c> or <c>bash</c> (with <see cref="Code"/>).</summary>
    public string? Language { get; init; }

    /// <summary>Kill the tree after this many milliseconds; 0 means no limit.</summary>
    public long TimeoutMs { get; init; }

    /// <summary><c>closed</c> (default: <c>/dev/null</c>) or <c>pipe</c> (data from <c>I</c> frames until <c>C</c>).</summary>
    public string? Stdin { get; init; }

    /// <summary>Written to stdin first; stdin is then closed unless <see cref="Stdin"/> is <c>pipe</c>.</summary>
    public string? StdinText { get; init; }

    /// <summary>Stderr into the stdout pipe (ordered, no <c>e</c> frames).</summary>
    public bool MergeStderr { get; init; }

    /// <summary>Extra variables for this command only.</summary>
    public IReadOnlyDictionary<string, string>? Env { get; init; }

    /// <summary>Working directory for this command only (relative to the session cwd).</summary>
    public string? Cwd { get; init; }

    /// <summary>False: the command's cwd/env changes are not kept. Default true.</summary>
    public bool? PersistState { get; init; }

    /// <summary>Idempotency key: a command with a key is run at most once while its result is kept (<see cref="ServerHello.KeyTtlMs"/>), across connections.</summary>
    public string? Key { get; init; }

    /// <summary>Fingerprint of the request the key belongs to; the same key with another fingerprint is refused (<c>conflict</c>).</summary>
    public string? Fingerprint { get; init; }

    /// <summary>Head + tail bytes of each stream kept for a keyed command's replay (default 1 MiB, at most 16 MiB).</summary>
    public int? KeepBytes { get; init; }

    /// <summary>Start as a job (background process) owned by the supervisor: the answer is one <c>f</c> with the job.</summary>
    public bool Detach { get; init; }

    /// <summary>The job id chosen by the server (with <see cref="Detach"/>): 1-64 characters of <c>[A-Za-z0-9_-]</c>.</summary>
    public string? JobId { get; init; }

    /// <summary>Bytes of output a job keeps for readers (default 1 MiB, at most 16 MiB).</summary>
    public int? RingBytes { get; init; }
}

/// <summary><c>s</c>: a command started.</summary>
public sealed record StartedEvent
{
    /// <summary>The shell's pid (also its process group and session id).</summary>
    public required int Pid { get; init; }

    /// <summary>True when a pre-started shell ran it.</summary>
    public bool Warm { get; init; }

    /// <summary>True when this channel joined a keyed command that was already running or finished (no new process).</summary>
    public bool Joined { get; init; }
}

/// <summary><c>x</c>: a command ended.</summary>
public sealed record ExitEvent
{
    /// <summary>Exit status; 128 + signal when the shell died by a signal.</summary>
    public required int ExitCode { get; init; }

    /// <summary>The signal that killed the shell, if one did.</summary>
    public int? Signal { get; init; }

    /// <summary>The timeout killed the tree.</summary>
    public bool TimedOut { get; init; }

    /// <summary>The memory limit's OOM killer ended it.</summary>
    public bool OomKilled { get; init; }

    /// <summary>Spawn (or hand-over) to exit, as the supervisor measured it. Informational: usage uses the server's clock.</summary>
    public double DurationMs { get; init; }

    /// <summary>User CPU time of the shell and every child it waited for.</summary>
    public double CpuUserMs { get; init; }

    /// <summary>System CPU time of the shell and every child it waited for.</summary>
    public double CpuSystemMs { get; init; }

    /// <summary>Peak memory of the tree: the larger of the biggest single process's peak RSS and the sampled sum of the tree's RSS.</summary>
    public long PeakMemoryBytes { get; init; }

    /// <summary>The session's working directory after the command.</summary>
    public string? Cwd { get; init; }

    /// <summary>True when this is a keyed command's kept result sent to a joining channel.</summary>
    public bool Replayed { get; init; }

    /// <summary>True when the kept output of a replay lost its middle (head and tail kept).</summary>
    public bool Truncated { get; init; }

    /// <summary>Total stdout bytes the command wrote (also for replays).</summary>
    public long StdoutBytes { get; init; }

    /// <summary>Total stderr bytes the command wrote (also for replays).</summary>
    public long StderrBytes { get; init; }
}

/// <summary><c>r</c>: an error, the final frame of its channel.</summary>
public sealed record ErrorReply
{
    /// <summary>One of <see cref="ErrorCodes"/>.</summary>
    public required string Code { get; init; }

    /// <summary>Human-readable detail.</summary>
    public required string Message { get; init; }
}

/// <summary>Error codes of <c>r</c>.</summary>
public static class ErrorCodes
{
    /// <summary>No such file, directory or job.</summary>
    public const string NotFound = "not_found";
    /// <summary>A directory where a file was expected.</summary>
    public const string IsDirectory = "is_directory";
    /// <summary>Not a directory where one was expected.</summary>
    public const string NotDirectory = "not_directory";
    /// <summary>The command user may not (also read-only file systems).</summary>
    public const string PermissionDenied = "permission_denied";
    /// <summary>The path exists.</summary>
    public const string Exists = "exists";
    /// <summary>The directory is not empty.</summary>
    public const string NotEmpty = "not_empty";
    /// <summary>A bad request (field, JSON, path), or a cancelled transfer.</summary>
    public const string Invalid = "invalid";
    /// <summary>Too many jobs or keyed results; try later.</summary>
    public const string Busy = "busy";
    /// <summary>The key was used for another request, or a job's stdin is closed.</summary>
    public const string Conflict = "conflict";
    /// <summary>A result would exceed the frame limit.</summary>
    public const string TooLarge = "too_large";
    /// <summary>The file system is full (ENOSPC, EDQUOT).</summary>
    public const string NoSpace = "no_space";
    /// <summary>The image lacks what the request needs (e.g. python3 for Python code).</summary>
    public const string NotInstalled = "not_installed";
    /// <summary>Anything else; the message says what.</summary>
    public const string Internal = "internal";
}

/// <summary><c>K</c>: signal a command's tree (also cancels a transfer or an attach).</summary>
public sealed record KillRequest
{
    /// <summary>Signal number 1..64; absent or invalid means SIGKILL.</summary>
    public int Signal { get; set; } = 9;
}

/// <summary><c>A</c>: flow-control credit.</summary>
public sealed record CreditGrant
{
    /// <summary>Additional data bytes the receiver of this frame may send on the channel (1 to 16 MiB).</summary>
    public required int Bytes { get; init; }
}

/// <summary>File requests <c>W G L D M T</c>.</summary>
public sealed record FileRequest
{
    /// <summary>Absolute, or relative to the session cwd.</summary>
    public required string Path { get; init; }

    /// <summary><c>W</c>: permission bits of the new file (default 0644; with append, the existing file's).</summary>
    public int? Mode { get; init; }

    /// <summary><c>W</c>: append to the existing content.</summary>
    public bool? Append { get; init; }

    /// <summary><c>W</c>, <c>M</c>: create missing parent directories (default true).</summary>
    public bool? Parents { get; init; }

    /// <summary><c>D</c>: delete a non-empty directory.</summary>
    public bool? Recursive { get; init; }

    /// <summary><c>W</c>: fail when the file would exceed this many bytes.</summary>
    public long? MaxBytes { get; init; }
}

/// <summary><c>f</c> of a file request.</summary>
public sealed record FileResult
{
    /// <summary>Size in bytes (<c>W</c>: after the write; <c>G</c>: bytes sent; <c>T</c>).</summary>
    public long? Size { get; init; }

    /// <summary><c>file</c>, <c>dir</c>, <c>symlink</c> or <c>other</c> (<c>T</c>).</summary>
    public string? Type { get; init; }

    /// <summary>Permission bits (<c>T</c>).</summary>
    public int? Mode { get; init; }

    /// <summary>Modification time, seconds since the epoch (<c>T</c>).</summary>
    public double? Mtime { get; init; }

    /// <summary>Symlink target (<c>T</c> of a symlink).</summary>
    public string? Target { get; init; }

    /// <summary>Entries sorted by name (<c>L</c>).</summary>
    public IReadOnlyList<FileEntryInfo>? Entries { get; init; }

    /// <summary>True when <c>L</c> stopped at its entry limit.</summary>
    public bool? Truncated { get; init; }
}

/// <summary>One directory entry of <c>L</c>.</summary>
public sealed record FileEntryInfo
{
    /// <summary>Name (invalid UTF-8 bytes appear as U+FFFD).</summary>
    public required string Name { get; init; }

    /// <summary><c>file</c>, <c>dir</c>, <c>symlink</c> or <c>other</c> (lstat).</summary>
    public required string Type { get; init; }

    /// <summary>Size in bytes.</summary>
    public long Size { get; init; }

    /// <summary>Permission bits.</summary>
    public int Mode { get; init; }

    /// <summary>Modification time, seconds since the epoch.</summary>
    public double Mtime { get; init; }
}

/// <summary><c>J</c>: an operation on jobs.</summary>
public sealed record JobRequest
{
    /// <summary><c>list</c>, <c>get</c>, <c>read</c>, <c>attach</c>, <c>stdin</c>, <c>signal</c> or <c>forget</c>.</summary>
    public required string Op { get; init; }

    /// <summary>The job (all but <c>list</c>).</summary>
    public string? Id { get; init; }

    /// <summary><c>read</c>, <c>attach</c>: first output offset wanted (0 = oldest kept).</summary>
    public long? Since { get; init; }

    /// <summary><c>read</c>: most bytes to send (default and maximum: the channel window).</summary>
    public int? Max { get; init; }

    /// <summary><c>stdin</c>: bytes, base64.</summary>
    public string? Data { get; init; }

    /// <summary><c>stdin</c>: close stdin after the data.</summary>
    public bool? Close { get; init; }

    /// <summary><c>signal</c>: the signal (default SIGKILL), sent to the job's tree.</summary>
    public int? Signal { get; init; }
}

/// <summary>A job as the supervisor reports it.</summary>
public sealed record JobInfo
{
    /// <summary>The id given at start.</summary>
    public required string Id { get; init; }

    /// <summary>The command.</summary>
    public required string Command { get; init; }

    /// <summary>Its shell's pid.</summary>
    public required int Pid { get; init; }

    /// <summary><c>running</c> or <c>exited</c>.</summary>
    public required string Status { get; init; }

    /// <summary>Start time, milliseconds since the epoch.</summary>
    public required long StartedAtMs { get; init; }

    /// <summary>True while stdin is open for <c>stdin</c> ops.</summary>
    public bool StdinOpen { get; init; }

    /// <summary>Output offsets kept: <c>[firstKept, next)</c>.</summary>
    public required long FirstOffset { get; init; }

    /// <summary>Offset the next output byte will get (total bytes written so far).</summary>
    public required long NextOffset { get; init; }

    /// <summary>The exit, once exited.</summary>
    public ExitEvent? Exit { get; init; }
}

/// <summary><c>f</c> of a job operation.</summary>
public sealed record JobResult
{
    /// <summary><c>list</c>.</summary>
    public IReadOnlyList<JobInfo>? Jobs { get; init; }

    /// <summary>The job (<c>get</c>, <c>read</c>, <c>stdin</c>, <c>signal</c>, and the start of a detached run).</summary>
    public JobInfo? Job { get; init; }

    /// <summary><c>read</c>: offset of the first byte sent (greater than <c>since</c> when older output was dropped).</summary>
    public long? From { get; init; }

    /// <summary><c>read</c>: pass as <c>since</c> for what follows.</summary>
    public long? Next { get; init; }

    /// <summary><c>read</c>: true when output between <c>since</c> and <see cref="From"/> was dropped.</summary>
    public bool? Dropped { get; init; }
}

/// <summary><c>d</c>: output of an attached job was dropped before it could be sent.</summary>
public sealed record DroppedEvent
{
    /// <summary>The offset the stream continues at.</summary>
    public required long Offset { get; init; }

    /// <summary>Bytes lost.</summary>
    public required long Bytes { get; init; }
}

/// <summary>Source-generated JSON for every payload (camelCase, nulls omitted); AOT-safe.</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    NumberHandling = JsonNumberHandling.Strict,
    AllowTrailingCommas = false,
    ReadCommentHandling = System.Text.Json.JsonCommentHandling.Disallow,
    MaxDepth = 16)]
[JsonSerializable(typeof(ServerHello))]
[JsonSerializable(typeof(SupervisorHello))]
[JsonSerializable(typeof(ImageCapabilities))]
[JsonSerializable(typeof(SupervisorLog))]
[JsonSerializable(typeof(RunRequest))]
[JsonSerializable(typeof(StartedEvent))]
[JsonSerializable(typeof(ExitEvent))]
[JsonSerializable(typeof(ErrorReply))]
[JsonSerializable(typeof(KillRequest))]
[JsonSerializable(typeof(CreditGrant))]
[JsonSerializable(typeof(FileRequest))]
[JsonSerializable(typeof(FileResult))]
[JsonSerializable(typeof(JobRequest))]
[JsonSerializable(typeof(JobResult))]
[JsonSerializable(typeof(DroppedEvent))]
public sealed partial class ProtocolJsonContext : JsonSerializerContext;
