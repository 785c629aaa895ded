using System.Text.Json.Serialization;

namespace SandboxKit.Agents;

/// <summary>Values of the <c>status</c> field of every tool result.</summary>
public static class SandboxToolStatus
{
    /// <summary>The call succeeded (for a command: it exited with code 0).</summary>
    public const string Ok = "ok";

    /// <summary>The call failed: a command exited non-zero, or the call could not be carried out (<c>error</c> says why).</summary>
    public const string Error = "error";

    /// <summary>A command ran out of time; its process tree was killed.</summary>
    public const string Timeout = "timeout";
}

/// <summary>Result of <c>run_command</c>: what a model sees, as JSON (<c>run_code</c> answers with <see cref="SandboxCodeResult"/>).</summary>
public sealed record SandboxCommandResult
{
    /// <summary><c>ok</c> (exit code 0), <c>error</c> (non-zero exit, or the call failed) or <c>timeout</c>.</summary>
    [JsonPropertyName("status")]
    public required string Status { get; init; }

    /// <summary>The exit code; null when the command did not run or did not finish.</summary>
    [JsonPropertyName("exitCode")]
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)] // present as null too: the same shape whatever the serializer settings
    public int? ExitCode { get; init; }

    /// <summary>Standard output (long output keeps its head and tail, see <see cref="Truncated"/>).</summary>
    [JsonPropertyName("stdout")]
    public string Stdout { get; init; } = "";

    /// <summary>Standard error, as <see cref="Stdout"/>.</summary>
    [JsonPropertyName("stderr")]
    public string Stderr { get; init; } = "";

    /// <summary>True when the middle of stdout or stderr was dropped because it was too long.</summary>
    [JsonPropertyName("truncated")]
    public bool Truncated { get; init; }

    /// <summary>Why the status is not <c>ok</c>, in one short sentence; null when it is.</summary>
    [JsonPropertyName("error")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Error { get; init; }

    /// <summary>Something the model should know besides the result (e.g. its sandbox was replaced by a new, empty one).</summary>
    [JsonPropertyName("notice")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Notice { get; init; }

    /// <summary>Creates a result for a call that could not be carried out.</summary>
    /// <param name="error">Why, in one short sentence.</param>
    /// <returns>The result, with status <c>error</c>.</returns>
    public static SandboxCommandResult Failed(string error) => new() { Status = SandboxToolStatus.Error, Error = error };
}

/// <summary>Result of <c>read_file</c>, <c>write_file</c> and <c>upload_file_from_host</c>.</summary>
public sealed record SandboxFileResult
{
    /// <summary><c>ok</c> or <c>error</c>.</summary>
    [JsonPropertyName("status")]
    public required string Status { get; init; }

    /// <summary>Absolute path of the file inside the sandbox (as given when the call failed before reaching the sandbox).</summary>
    [JsonPropertyName("path")]
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)] // present as null too: the same shape whatever the serializer settings
    public string? Path { get; init; }

    /// <summary>The text read (<c>read_file</c> only).</summary>
    [JsonPropertyName("content")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Content { get; init; }

    /// <summary>Size in bytes: written, or read; null when unknown (a truncated read).</summary>
    [JsonPropertyName("size")]
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)] // present as null too: the same shape whatever the serializer settings
    public long? Size { get; init; }

    /// <summary>True when only the beginning of the file is in <see cref="Content"/>.</summary>
    [JsonPropertyName("truncated")]
    public bool Truncated { get; init; }

    /// <summary>Why the status is not <c>ok</c>; null when it is.</summary>
    [JsonPropertyName("error")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Error { get; init; }

    /// <summary>Something the model should know besides the result.</summary>
    [JsonPropertyName("notice")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Notice { get; init; }

    /// <summary>Creates a result for a call that could not be carried out.</summary>
    /// <param name="path">The path the call was about, if any.</param>
    /// <param name="error">Why, in one short sentence.</param>
    /// <returns>The result, with status <c>error</c>.</returns>
    public static SandboxFileResult Failed(string? path, string error) => new() { Status = SandboxToolStatus.Error, Path = path, Error = error };
}

/// <summary>One entry of a <see cref="SandboxFileListResult"/>.</summary>
public sealed record SandboxFileListEntry
{
    /// <summary>Name within the directory.</summary>
    [JsonPropertyName("name")]
    public required string Name { get; init; }

    /// <summary><c>file</c>, <c>dir</c>, <c>symlink</c> or <c>other</c>.</summary>
    [JsonPropertyName("type")]
    public required string Type { get; init; }

    /// <summary>Size in bytes.</summary>
    [JsonPropertyName("size")]
    public long Size { get; init; }
}

/// <summary>Result of <c>list_files</c>.</summary>
public sealed record SandboxFileListResult
{
    /// <summary><c>ok</c> or <c>error</c>.</summary>
    [JsonPropertyName("status")]
    public required string Status { get; init; }

    /// <summary>Absolute path of the directory.</summary>
    [JsonPropertyName("path")]
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)] // present as null too: the same shape whatever the serializer settings
    public string? Path { get; init; }

    /// <summary>The entries, sorted by name (empty when the call failed).</summary>
    [JsonPropertyName("entries")]
    public IReadOnlyList<SandboxFileListEntry> Entries { get; init; } = [];

    /// <summary>True when the directory has more entries than were returned.</summary>
    [JsonPropertyName("truncated")]
    public bool Truncated { get; init; }

    /// <summary>Why the status is not <c>ok</c>; null when it is.</summary>
    [JsonPropertyName("error")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Error { get; init; }

    /// <summary>Something the model should know besides the result.</summary>
    [JsonPropertyName("notice")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Notice { get; init; }

    /// <summary>Creates a result for a call that could not be carried out.</summary>
    /// <param name="path">The path the call was about, if any.</param>
    /// <param name="error">Why, in one short sentence.</param>
    /// <returns>The result, with status <c>error</c>.</returns>
    public static SandboxFileListResult Failed(string? path, string error) => new() { Status = SandboxToolStatus.Error, Path = path, Error = error };
}
