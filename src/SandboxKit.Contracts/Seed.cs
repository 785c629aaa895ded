using System.Text.Json.Serialization;

namespace SandboxKit.Contracts;

/// <summary>Response of the seed-compatible <c>POST /create_session</c>.</summary>
public sealed record SeedCreateSessionResponse(
    [property: JsonPropertyName("session_id")] string SessionId,
    [property: JsonPropertyName("status")] string Status);

/// <summary>Body of the seed-compatible <c>POST /execute</c>.</summary>
public sealed record SeedExecuteRequest(
    [property: JsonPropertyName("session_id")] string? SessionId,
    [property: JsonPropertyName("command")] string? Command);

/// <summary>Response of the seed-compatible <c>POST /execute</c>: stdout and stderr together, in order.</summary>
public sealed record SeedExecuteResponse(
    [property: JsonPropertyName("exit_code")] int ExitCode,
    [property: JsonPropertyName("output")] string Output);

/// <summary>Body of the seed-compatible <c>POST /cleanup</c>.</summary>
public sealed record SeedCleanupRequest(
    [property: JsonPropertyName("session_id")] string? SessionId);

/// <summary>Response of the seed-compatible <c>POST /cleanup</c>.</summary>
public sealed record SeedCleanupResponse(
    [property: JsonPropertyName("status")] string Status);
