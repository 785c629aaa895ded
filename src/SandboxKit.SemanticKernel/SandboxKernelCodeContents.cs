using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using SandboxKit.Agents;

namespace SandboxKit.SemanticKernel;

/// <summary>
/// What the plugin's <c>run_code</c> returns: the JSON result and the images the code displayed (e.g. a matplotlib figure as
/// <c>image/png</c>), as Semantic Kernel <see cref="ImageContent"/> (<see cref="Images"/>, <see cref="ToChatMessageContent"/>)
/// and, being <see cref="SandboxCodeContents"/>, as Microsoft.Extensions.AI content for <c>IChatClient</c>s that pass images on.
/// </summary>
/// <remarks>
/// Wherever it becomes text, it is the JSON result and nothing else: <see cref="SandboxCodeContents.ToString"/> and any <see cref="System.Text.Json"/>
/// serialization (what Semantic Kernel's connectors and text-only chat clients do with a function result) give
/// <see cref="SandboxCodeResult.ToJson"/>. Models that take no images get the text form of every result, stdout, stderr and
/// the error, never base64.
/// </remarks>
[JsonConverter(typeof(SandboxKernelCodeContentsJsonConverter))]
public sealed class SandboxKernelCodeContents : SandboxCodeContents
{
    /// <summary>Creates the content of a result.</summary>
    /// <param name="result">The tools' result.</param>
    public SandboxKernelCodeContents(SandboxCodeResult result)
        : base(result)
    {
        Images = result.Images.Select(image => new ImageContent(image.Data, image.MimeType)).ToList();
    }

    /// <summary>The images, as Semantic Kernel content, in the order the results number them.</summary>
    public IReadOnlyList<ImageContent> Images { get; }

    /// <summary>A tool message with the JSON result (<see cref="TextContent"/>) and the images (<see cref="ImageContent"/>), e.g. to
    /// add the figures to a chat history for a model that takes images in messages.</summary>
    /// <returns>A new message.</returns>
    public ChatMessageContent ToChatMessageContent()
    {
        var items = new ChatMessageContentItemCollection { new TextContent(Result.ToJson()) };
        foreach (var image in Images)
        {
            items.Add(image);
        }
        return new ChatMessageContent(AuthorRole.Tool, items);
    }
}

/// <summary>Writes <see cref="SandboxKernelCodeContents"/> as the JSON result alone (type-level converters are not inherited).</summary>
internal sealed class SandboxKernelCodeContentsJsonConverter : JsonConverter<SandboxKernelCodeContents>
{
    public override SandboxKernelCodeContents Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        throw new NotSupportedException("Sandbox code contents are written as their JSON result and cannot be read back.");

    public override void Write(Utf8JsonWriter writer, SandboxKernelCodeContents value, JsonSerializerOptions options) =>
        writer.WriteRawValue(value.Result.ToJson());
}
