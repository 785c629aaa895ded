using System.Text.Json.Serialization;

namespace SandboxKit.Server.Agent;

/// <summary>Payload of a run request (<c>R</c>).</summary>
internal sealed record AgentRunRequest
{
    [JsonPropertyName("command")] public string? Command { get; init; }
    [JsonPropertyName("code")] public string? Code { get; init; }
    [JsonPropertyName("language")] public string? Language { get; init; }
    [JsonPropertyName("timeoutMs")] public long TimeoutMs { get; init; }
    [JsonPropertyName("stdin")] public string? Stdin { get; init; }
    [JsonPropertyName("stdinText")] public string? StdinText { get; init; }
    [JsonPropertyName("mergeStderr")] public bool MergeStderr { get; init; }
    [JsonPropertyName("env")] public IReadOnlyDictionary<string, string>? Environment { get; init; }
    [JsonPropertyName("cwd")] public string? WorkingDirectory { get; init; }
}

/// <summary>Payload of <c>x</c>.</summary>
internal sealed record AgentExit
{
    [JsonPropertyName("exitCode")] public int ExitCode { get; init; }
    [JsonPropertyName("signal")] public int? Signal { get; init; }
    [JsonPropertyName("timedOut")] public bool TimedOut { get; init; }
    [JsonPropertyName("oomKilled")] public bool OomKilled { get; init; }
    [JsonPropertyName("durationMs")] public double DurationMs { get; init; }
    [JsonPropertyName("cwd")] public string? WorkingDirectory { get; init; }
}

/// <summary>Payload of <c>s</c>.</summary>
internal sealed record AgentStarted
{
    [JsonPropertyName("pid")] public int Pid { get; init; }
}

/// <summary>Payload of <c>r</c>.</summary>
internal sealed record AgentError
{
    [JsonPropertyName("code")] public string Code { get; init; } = "internal";
    [JsonPropertyName("message")] public string Message { get; init; } = "";
}

/// <summary>Payload of <c>K</c>.</summary>
internal sealed record AgentKill
{
    [JsonPropertyName("signal")] public int Signal { get; init; } = 9;
}

/// <summary>Payload of the file requests (<c>W G L D M T</c>).</summary>
internal sealed record AgentFileRequest
{
    [JsonPropertyName("path")] public required string Path { get; init; }
    [JsonPropertyName("mode")] public int? Mode { get; init; }
    [JsonPropertyName("append")] public bool? Append { get; init; }
    [JsonPropertyName("parents")] public bool? Parents { get; init; }
    [JsonPropertyName("recursive")] public bool? Recursive { get; init; }
}

/// <summary>Payload of <c>f</c>.</summary>
internal sealed record AgentFileResult
{
    [JsonPropertyName("size")] public long? Size { get; init; }
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("mode")] public int? Mode { get; init; }
    [JsonPropertyName("mtime")] public double? ModifiedAt { get; init; }
    [JsonPropertyName("path")] public string? Path { get; init; }
    [JsonPropertyName("entries")] public IReadOnlyList<AgentFileEntry>? Entries { get; init; }
}

internal sealed record AgentFileEntry
{
    [JsonPropertyName("name")] public required string Name { get; init; }
    [JsonPropertyName("type")] public required string Type { get; init; }
    [JsonPropertyName("size")] public long Size { get; init; }
    [JsonPropertyName("mode")] public int Mode { get; init; }
    [JsonPropertyName("mtime")] public double ModifiedAt { get; init; }
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(AgentRunRequest))]
[JsonSerializable(typeof(AgentExit))]
[JsonSerializable(typeof(AgentStarted))]
[JsonSerializable(typeof(AgentError))]
[JsonSerializable(typeof(AgentKill))]
[JsonSerializable(typeof(AgentFileRequest))]
[JsonSerializable(typeof(AgentFileResult))]
internal sealed partial class AgentJsonContext : JsonSerializerContext;
