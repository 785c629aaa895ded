using System.Text.Json;
using System.Text.Json.Serialization;

namespace SandboxKit.Contracts;

/// <summary>Source-generated JSON metadata for every contract type, shared by server and client (camelCase, nulls omitted).</summary>
[JsonSourceGenerationOptions(
    JsonSerializerDefaults.Web,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(HealthReport))]
[JsonSerializable(typeof(CapacityReport))]
[JsonSerializable(typeof(CreateSessionRequest))]
[JsonSerializable(typeof(SessionInfo))]
[JsonSerializable(typeof(SessionList))]
[JsonSerializable(typeof(SessionStats))]
[JsonSerializable(typeof(ImageOffers))]
[JsonSerializable(typeof(UsageReport))]
[JsonSerializable(typeof(ExecuteRequest))]
[JsonSerializable(typeof(RunCodeRequest))]
[JsonSerializable(typeof(ExecuteResult))]
[JsonSerializable(typeof(CommandEvent))]
[JsonSerializable(typeof(FileEntry))]
[JsonSerializable(typeof(FileList))]
[JsonSerializable(typeof(StartProcessRequest))]
[JsonSerializable(typeof(ProcessInfo))]
[JsonSerializable(typeof(ProcessList))]
[JsonSerializable(typeof(ProcessOutput))]
[JsonSerializable(typeof(SendStdinRequest))]
[JsonSerializable(typeof(SeedCreateSessionResponse))]
[JsonSerializable(typeof(SeedExecuteRequest))]
[JsonSerializable(typeof(SeedExecuteResponse))]
[JsonSerializable(typeof(SeedCleanupRequest))]
[JsonSerializable(typeof(SeedCleanupResponse))]
public sealed partial class SandboxJsonContext : JsonSerializerContext;
