using System.Collections.ObjectModel;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.AI;

namespace SandboxKit.Agents;

/// <summary>
/// Result of <c>run_code</c>: what a model sees, as JSON, plus the images the code displayed (<see cref="Images"/>), which are
/// never part of the JSON. Each integration attaches the images in its own way (MCP image blocks, Microsoft.Extensions.AI
/// <see cref="DataContent"/>, Semantic Kernel image content); the JSON alone is the text fallback for models that take no images:
/// the <c>text/plain</c> form of every result, stdout, stderr and the error.
/// </summary>
public sealed record SandboxCodeResult
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        TypeInfoResolver = SandboxAgentsJsonContext.Default,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary><c>ok</c> (ran to its end), <c>error</c> (the code raised, or the call failed) or <c>timeout</c> (interrupted).</summary>
    [JsonPropertyName("status")]
    public required string Status { get; init; }

    /// <summary>0 when the code ran to its end, 1 when it raised (for bash: the exit code); null when it did not run or finish.</summary>
    [JsonPropertyName("exitCode")]
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)] // present as null too: the same shape whatever the serializer settings
    public int? ExitCode { get; init; }

    /// <summary>Standard output (long output keeps its head and tail, see <see cref="Truncated"/>).</summary>
    [JsonPropertyName("stdout")]
    public string Stdout { get; init; } = "";

    /// <summary>Standard error, as <see cref="Stdout"/>.</summary>
    [JsonPropertyName("stderr")]
    public string Stderr { get; init; } = "";

    /// <summary>The rich results in the order they came: figures and <c>display()</c> output, and the last expression's value.</summary>
    [JsonPropertyName("results")]
    public IReadOnlyList<SandboxCodeOutput> Results { get; init; } = [];

    /// <summary>Why the status is not <c>ok</c>: for an exception in the code, <c>Name: message</c>; null when it is ok.</summary>
    [JsonPropertyName("error")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Error { get; init; }

    /// <summary>The exception's traceback, as plain text (its tail when long); null without an exception.</summary>
    [JsonPropertyName("traceback")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Traceback { get; init; }

    /// <summary>The interpreter's execution count after the code; null for bash or when the code did not run.</summary>
    [JsonPropertyName("executionCount")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? ExecutionCount { get; init; }

    /// <summary>True when the interpreter died or was restarted: the variables defined before are gone. Absent when false.</summary>
    [JsonPropertyName("stateLost")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool StateLost { get; init; }

    /// <summary>True when output or results were cut because they were too long.</summary>
    [JsonPropertyName("truncated")]
    public bool Truncated { get; init; }

    /// <summary>Something the model should know besides the result (e.g. its sandbox was replaced by a new, empty one).</summary>
    [JsonPropertyName("notice")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Notice { get; init; }

    /// <summary>The images to attach after the JSON, in order; <see cref="SandboxCodeOutput.Image"/> numbers them from 1. Not in the JSON.</summary>
    [JsonIgnore]
    public IReadOnlyList<SandboxImage> Images { get; init; } = [];

    /// <summary>Creates a result for a call that could not be carried out.</summary>
    /// <param name="error">Why, in one short sentence.</param>
    /// <returns>The result, with status <c>error</c>.</returns>
    public static SandboxCodeResult Failed(string error) => new() { Status = SandboxToolStatus.Error, Error = error };

    /// <summary>The JSON a model sees (without the images).</summary>
    /// <returns>The JSON text.</returns>
    public string ToJson() => JsonSerializer.Serialize(this, (System.Text.Json.Serialization.Metadata.JsonTypeInfo<SandboxCodeResult>)JsonOptions.GetTypeInfo(typeof(SandboxCodeResult)));

    /// <summary>The result as Microsoft.Extensions.AI content: the JSON as <see cref="TextContent"/>, then each image as
    /// <see cref="DataContent"/>. What the <c>run_code</c> AI function returns (see <see cref="SandboxCodeContents"/>).</summary>
    /// <returns>A new list.</returns>
    public SandboxCodeContents ToAIContents() => new(this);
}

/// <summary>
/// A <c>run_code</c> result as Microsoft.Extensions.AI content: the JSON result as <see cref="TextContent"/>, then each image as
/// <see cref="DataContent"/>. Chat clients that pass content lists on (e.g. the OpenAI Responses client) send the images
/// natively; serialized with <see cref="System.Text.Json"/> (what clients that take tool results as text do, e.g. the OpenAI
/// chat-completions client), it is the JSON result alone, never base64.
/// </summary>
[JsonConverter(typeof(SandboxCodeContentsJsonConverter))]
public class SandboxCodeContents : Collection<AIContent>
{
    /// <summary>Creates the contents of a result.</summary>
    /// <param name="result">The result.</param>
    public SandboxCodeContents(SandboxCodeResult result)
    {
        Result = result ?? throw new ArgumentNullException(nameof(result));
        Add(new TextContent(result.ToJson()));
        foreach (var image in result.Images)
        {
            Add(new DataContent(image.Data, image.MimeType));
        }
    }

    /// <summary>The structured result.</summary>
    public SandboxCodeResult Result { get; }

    /// <summary>The JSON result (<see cref="SandboxCodeResult.ToJson"/>), without the images.</summary>
    /// <returns>The JSON text.</returns>
    public override string ToString() => Result.ToJson();

    /// <summary>Writes <see cref="SandboxCodeContents"/> (and derived types that name it) as the JSON result alone.</summary>
    internal sealed class SandboxCodeContentsJsonConverter : JsonConverter<SandboxCodeContents>
    {
        public override bool CanConvert(Type typeToConvert) => typeof(SandboxCodeContents).IsAssignableFrom(typeToConvert);

        public override SandboxCodeContents Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            throw new NotSupportedException("Sandbox code contents are written as their JSON result and cannot be read back.");

        public override void Write(Utf8JsonWriter writer, SandboxCodeContents value, JsonSerializerOptions options) =>
            writer.WriteRawValue(value.Result.ToJson());
    }
}

/// <summary>One rich result of <c>run_code</c>, as the model sees it.</summary>
public sealed record SandboxCodeOutput
{
    /// <summary>True for the value of the code's last expression; false for figures and <c>display()</c> output.</summary>
    [JsonPropertyName("isMainResult")]
    public bool IsMainResult { get; init; }

    /// <summary>The mime types the result has, e.g. <c>text/plain</c>, <c>text/html</c>, <c>image/png</c>.</summary>
    [JsonPropertyName("formats")]
    public IReadOnlyList<string> Formats { get; init; } = [];

    /// <summary>Its text: <c>text/plain</c> (or markdown, JSON, LaTeX or HTML when it has no plain text); null for an image alone.</summary>
    [JsonPropertyName("text")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Text { get; init; }

    /// <summary>The number (from 1) of the attached image that shows this result; null when it has none or it was not attached.</summary>
    [JsonPropertyName("image")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? Image { get; init; }

    /// <summary>Why an image of this result was not attached, or that its text was cut; null otherwise.</summary>
    [JsonPropertyName("note")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Note { get; init; }
}

/// <summary>An image a <c>run_code</c> call displayed (e.g. a matplotlib figure).</summary>
public sealed record SandboxImage
{
    /// <summary><c>image/png</c> or <c>image/jpeg</c>.</summary>
    public required string MimeType { get; init; }

    /// <summary>The encoded image.</summary>
    public required ReadOnlyMemory<byte> Data { get; init; }
}

[JsonSerializable(typeof(SandboxCodeResult))]
internal sealed partial class SandboxAgentsJsonContext : JsonSerializerContext;
