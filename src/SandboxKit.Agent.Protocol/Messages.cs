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

    /// <summary>With <see cref="Detach"/>: run on a pseudo-terminal of this size (a terminal) instead of pipes.</summary>
    public TerminalSize? Pty { get; init; }

    /// <summary>With <see cref="Pty"/>: the <c>TERM</c> value (default <c>xterm-256color</c>).</summary>
    public string? Term { get; init; }

    /// <summary>With <see cref="Pty"/>: bytes of asciicast recording kept (default 4 MiB, at most 64 MiB; the oldest part is dropped).</summary>
    public int? RecordingBytes { get; init; }
}

/// <summary>A terminal's size in character cells.</summary>
public sealed record TerminalSize
{
    /// <summary>Columns, 1 to 1000.</summary>
    public required int Cols { get; init; }

    /// <summary>Rows, 1 to 1000.</summary>
    public required int Rows { get; init; }
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
    /// <summary>Nothing listens on the port (<c>N</c>).</summary>
    public const string Refused = "refused";
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

    /// <summary><c>resize</c>: the terminal's new size.</summary>
    public TerminalSize? Size { get; init; }
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

    /// <summary>The terminal's size, for a job on a pseudo-terminal.</summary>
    public TerminalSize? Pty { get; init; }
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

// ---- interpreter contexts (X) ---------------------------------------------------------------------------------

/// <summary><c>X</c>: an operation on interpreter contexts.</summary>
public sealed record ContextRequest
{
    /// <summary><c>create</c>, <c>list</c>, <c>get</c>, <c>restart</c>, <c>delete</c>, <c>run</c> or <c>interrupt</c>.</summary>
    public required string Op { get; init; }

    /// <summary>The context (all but <c>list</c>): 1-64 characters of <c>[A-Za-z0-9_-]</c>, chosen by the server at <c>create</c>.</summary>
    public string? Id { get; init; }

    /// <summary><c>create</c>: <c>python</c> or <c>javascript</c>.</summary>
    public string? Language { get; init; }

    /// <summary><c>create</c>: working directory (relative to the session cwd; default the session cwd).</summary>
    public string? Cwd { get; init; }

    /// <summary><c>run</c>: the cell's source.</summary>
    public string? Code { get; init; }

    /// <summary><c>run</c>: an id echoed in the outcome (default: the channel id).</summary>
    public string? CellId { get; init; }

    /// <summary><c>run</c>: interrupt the cell after this many milliseconds; 0: no limit.</summary>
    public long TimeoutMs { get; init; }

    /// <summary><c>run</c>, <c>interrupt</c>: how long after SIGINT the interpreter may take before it is killed (default 3000, at most 30000).</summary>
    public long? GraceMs { get; init; }
}

/// <summary>A context as the supervisor reports it.</summary>
public sealed record ContextInfo
{
    /// <summary>The id given at <c>create</c>.</summary>
    public required string Id { get; init; }

    /// <summary><c>python</c> or <c>javascript</c>.</summary>
    public required string Language { get; init; }

    /// <summary><c>starting</c>, <c>idle</c>, <c>busy</c> or <c>dead</c> (its interpreter exited; the next <c>run</c> starts a fresh one).</summary>
    public required string Status { get; init; }

    /// <summary>The interpreter's pid, while it runs.</summary>
    public int Pid { get; init; }

    /// <summary>The interpreter's version, from its <c>ready</c> event.</summary>
    public string? Version { get; init; }

    /// <summary>True when the Python context runs IPython.</summary>
    public bool IPython { get; init; }

    /// <summary>Cells run so far in the current interpreter.</summary>
    public int ExecutionCount { get; init; }

    /// <summary>Creation time, milliseconds since the epoch.</summary>
    public required long CreatedAtMs { get; init; }

    /// <summary>Its working directory.</summary>
    public string? Cwd { get; init; }

    /// <summary>How many times its interpreter was started (1 + restarts, explicit or after a death).</summary>
    public int Generation { get; init; }
}

/// <summary>How a cell ended: the final <c>f</c> of a <c>run</c>, after its output and events.</summary>
public sealed record CellOutcome
{
    /// <summary>The cell id.</summary>
    public required string CellId { get; init; }

    /// <summary><c>ok</c>, <c>error</c>, <c>interrupted</c> (by request or by its timeout; state kept), <c>died</c> (the interpreter exited or was killed: state lost).</summary>
    public required string Status { get; init; }

    /// <summary>True when the timeout ended the cell (with <c>interrupted</c>, or <c>died</c> if it had to be killed).</summary>
    public bool TimedOut { get; init; }

    /// <summary>True when the interpreter's state is gone (it died or was killed); the next cell gets a fresh one.</summary>
    public bool StateLost { get; init; }

    /// <summary>The interpreter's execution count after the cell.</summary>
    public int ExecutionCount { get; init; }

    /// <summary>With <c>died</c>: the interpreter's exit status (128 + signal when killed).</summary>
    public int? ExitCode { get; init; }

    /// <summary>With <c>died</c>: true when the memory limit's OOM killer ended it.</summary>
    public bool OomKilled { get; init; }

    /// <summary>Informational: the supervisor's measurement of the cell.</summary>
    public double DurationMs { get; init; }
}

/// <summary><c>f</c> of a context operation.</summary>
public sealed record ContextResult
{
    /// <summary><c>list</c>.</summary>
    public IReadOnlyList<ContextInfo>? Contexts { get; init; }

    /// <summary>The context (<c>create</c>, <c>get</c>, <c>restart</c>, <c>interrupt</c>, and after a <c>run</c>).</summary>
    public ContextInfo? Context { get; init; }

    /// <summary><c>run</c>: how the cell ended.</summary>
    public CellOutcome? Cell { get; init; }
}

// ---- session settings (S) and the egress relay -----------------------------------------------------------------

/// <summary><c>S</c>: session-level settings. Answered with <c>f</c> (<see cref="ConfigureResult"/>).</summary>
public sealed record ConfigureRequest
{
    /// <summary>Variables to set in the session's state (as an <c>export</c> would: the next commands see them).</summary>
    public IReadOnlyDictionary<string, string>? SetEnv { get; init; }

    /// <summary>Variables to remove from the session's state.</summary>
    public IReadOnlyList<string>? UnsetEnv { get; init; }

    /// <summary>Turn the egress relay on or change it; null leaves it as it is.</summary>
    public EgressRelayConfig? Egress { get; init; }
}

/// <summary>What the supervisor catches of the sandbox's outbound traffic and relays to the server.</summary>
public sealed record EgressRelayConfig
{
    /// <summary>False turns the relay off (listeners closed, open relayed connections reset).</summary>
    public required bool Enabled { get; init; }

    /// <summary>Answer DNS on 127.0.0.1:53 (UDP and TCP) by asking the server.</summary>
    public bool Dns { get; set; } = true;

    /// <summary>TCP ports to catch on every local address (default 80 and 443).</summary>
    public IReadOnlyList<int>? TcpPorts { get; init; }

    /// <summary>Make every IPv4/IPv6 destination local (<c>local default</c> route), so connections to IP literals are caught
    /// too (needs <c>CAP_NET_ADMIN</c>; not under gVisor). False: only names the relay's DNS answered (synthetic loopback addresses).</summary>
    public bool CatchAllDestinations { get; init; }

    /// <summary>A CA certificate (PEM) the sandbox must trust for TLS the gateway terminates; written with the system bundle
    /// to <c>/etc/sandboxkit/ca-bundle.pem</c>, and <c>SSL_CERT_FILE</c>, <c>REQUESTS_CA_BUNDLE</c>, <c>NODE_EXTRA_CA_CERTS</c>,
    /// <c>CURL_CA_BUNDLE</c>, <c>PIP_CERT</c> point at it.</summary>
    public string? CaPem { get; init; }

    /// <summary>Names the server's DNS answered before (after a server restart the supervisor remembers them anyway).</summary>
    public IReadOnlyList<DnsMapping>? Mappings { get; init; }
}

/// <summary>A name and the synthetic address the egress gateway gave it.</summary>
public sealed record DnsMapping
{
    /// <summary>The host name.</summary>
    public required string Name { get; init; }

    /// <summary>Its synthetic address (in 127.0.0.0/8).</summary>
    public required string Address { get; init; }
}

/// <summary><c>f</c> of <c>S</c>.</summary>
public sealed record ConfigureResult
{
    /// <summary>Whether the relay is on now.</summary>
    public bool EgressEnabled { get; init; }

    /// <summary>True when <see cref="EgressRelayConfig.CatchAllDestinations"/> was asked for and is in effect.</summary>
    public bool CatchingAllDestinations { get; init; }

    /// <summary>What could not be done (e.g. the local route without <c>CAP_NET_ADMIN</c>), for the server's log.</summary>
    public IReadOnlyList<string>? Warnings { get; init; }
}

/// <summary><c>N</c>: connect to a port inside the sandbox.</summary>
public sealed record ConnectRequest
{
    /// <summary><c>127.0.0.1</c> (default) or <c>::1</c>.</summary>
    public string? Host { get; init; }

    /// <summary>The port, 1-65535.</summary>
    public required int Port { get; init; }
}

/// <summary>The final <c>f</c> of a byte stream (<c>N</c>, <c>n</c>).</summary>
public sealed record StreamResult
{
    /// <summary>Bytes that went into the sandbox.</summary>
    public long BytesIn { get; init; }

    /// <summary>Bytes that came out of the sandbox.</summary>
    public long BytesOut { get; init; }
}

/// <summary><c>n</c>: the sandbox opened a TCP connection the relay caught.</summary>
public sealed record OutboundConnection
{
    /// <summary>The address the sandbox dialed (as it arrived on the relay's listener).</summary>
    public required string Address { get; init; }

    /// <summary>The port it dialed.</summary>
    public required int Port { get; init; }

    /// <summary>The name the relay's DNS gave that address, if it was a synthetic one.</summary>
    public string? Name { get; init; }
}

/// <summary><c>q</c>: a DNS query from the sandbox.</summary>
public sealed record DnsQueryMessage
{
    /// <summary><c>udp</c> or <c>tcp</c>.</summary>
    public required string Transport { get; init; }

    /// <summary>The raw DNS message, base64.</summary>
    public required string Packet { get; init; }
}

/// <summary><c>Q</c>: the server's answer to <c>q</c>.</summary>
public sealed record DnsAnswerMessage
{
    /// <summary>The raw DNS response, base64; null sends nothing back.</summary>
    public string? Packet { get; init; }

    /// <summary>A name the answer gave a synthetic address (the supervisor keeps it for <see cref="OutboundConnection.Name"/>).</summary>
    public DnsMapping? Mapping { get; init; }
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
[JsonSerializable(typeof(TerminalSize))]
[JsonSerializable(typeof(ContextRequest))]
[JsonSerializable(typeof(ContextInfo))]
[JsonSerializable(typeof(CellOutcome))]
[JsonSerializable(typeof(ContextResult))]
[JsonSerializable(typeof(ConfigureRequest))]
[JsonSerializable(typeof(ConfigureResult))]
[JsonSerializable(typeof(EgressRelayConfig))]
[JsonSerializable(typeof(DnsMapping))]
[JsonSerializable(typeof(ConnectRequest))]
[JsonSerializable(typeof(StreamResult))]
[JsonSerializable(typeof(OutboundConnection))]
[JsonSerializable(typeof(DnsQueryMessage))]
[JsonSerializable(typeof(DnsAnswerMessage))]
public sealed partial class ProtocolJsonContext : JsonSerializerContext;
