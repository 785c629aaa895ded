using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.AI;

namespace SandboxKit.Samples;

/// <summary>
/// A stand-in for a model, so the samples and tests run offline: a real <see cref="IChatClient"/> whose replies come from a
/// script. A reply is either tool calls (<see cref="FunctionCallContent"/>, for the function-invocation pipeline to execute)
/// or a final text. The script sees the results of the calls made so far in the current turn
/// (<see cref="FunctionResultContent"/> that the pipeline sent back), so it can use them, as a model would.
/// </summary>
/// <remarks>Tools are looked up among those offered in <see cref="ChatOptions.Tools"/>, so the script names tools as they are
/// named there, or by their plain name when a framework prefixes them (Semantic Kernel's <c>plugin_function</c>).</remarks>
public sealed class ScriptedChatClient(Func<ScriptedTurn, ScriptedReply> script) : IChatClient
{
    private int _callIds;

    /// <summary>Every tool call the script issued, in order (name as offered).</summary>
    public List<FunctionCallContent> IssuedCalls { get; } = [];

    /// <inheritdoc />
    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var history = messages.ToList();
        var lastUser = history.FindLastIndex(m => m.Role == ChatRole.User);
        var turnMessages = history.Skip(lastUser + 1).ToList();
        var calls = turnMessages.SelectMany(m => m.Contents.OfType<FunctionCallContent>()).ToDictionary(c => c.CallId, c => c.Name);
        var results = turnMessages
            .SelectMany(m => m.Contents.OfType<FunctionResultContent>())
            .Select(r => new ScriptedToolResult(calls.GetValueOrDefault(r.CallId, "?"), ScriptedToolResult.ToJson(r.Result))
            {
                Attachments = ScriptedToolResult.AttachmentsOf(r.Result),
            })
            .ToList();
        var turn = new ScriptedTurn(lastUser >= 0 ? history[lastUser].Text : "", results, options?.Tools ?? []);

        var reply = script(turn);
        var message = new ChatMessage { Role = ChatRole.Assistant };
        if (reply.Text is { } text)
        {
            message.Contents.Add(new TextContent(text));
        }
        foreach (var (name, arguments) in reply.Calls)
        {
            var offered = FindTool(turn.Tools, name);
            var call = new FunctionCallContent($"call_{Interlocked.Increment(ref _callIds)}", offered, arguments);
            IssuedCalls.Add(call);
            message.Contents.Add(call);
        }
        return Task.FromResult(new ChatResponse(message) { ModelId = "scripted", FinishReason = reply.Calls.Count > 0 ? ChatFinishReason.ToolCalls : ChatFinishReason.Stop });
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var response = await GetResponseAsync(messages, options, cancellationToken).ConfigureAwait(false);
        foreach (var update in response.ToChatResponseUpdates())
        {
            yield return update;
        }
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is null && serviceType.IsInstanceOfType(this) ? this
        : serviceKey is null && serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("scripted", defaultModelId: "scripted")
        : null;

    /// <inheritdoc />
    public void Dispose()
    {
    }

    private static string FindTool(IList<AITool> tools, string name)
    {
        var match = tools.FirstOrDefault(t => t.Name == name)
            ?? tools.FirstOrDefault(t => t.Name.EndsWith("-" + name, StringComparison.Ordinal) || t.Name.EndsWith("_" + name, StringComparison.Ordinal) || t.Name.EndsWith("." + name, StringComparison.Ordinal));
        return match?.Name
            ?? throw new InvalidOperationException($"The script calls '{name}', but the tools offered are: {string.Join(", ", tools.Select(t => t.Name))}.");
    }
}

/// <summary>What the script sees of the current turn.</summary>
/// <param name="UserText">The last user message.</param>
/// <param name="Results">Results of the tool calls made since, in order.</param>
/// <param name="Tools">The tools offered.</param>
public sealed record ScriptedTurn(string UserText, IReadOnlyList<ScriptedToolResult> Results, IList<AITool> Tools)
{
    /// <summary>How many tool results came back in this turn: the index of the script's next step.</summary>
    public int Step => Results.Count;

    /// <summary>The JSON of result <paramref name="index"/>.</summary>
    public JsonElement Json(int index) => Results[index].Json;
}

/// <summary>One tool result, as JSON (unwrapped from MCP's CallToolResult where needed).</summary>
/// <param name="Tool">The tool's name as offered.</param>
/// <param name="Json">The result.</param>
public sealed record ScriptedToolResult(string Tool, JsonElement Json)
{
    /// <summary>Binary content that came with the result (e.g. the images of run_code, as <see cref="DataContent"/>).</summary>
    public IReadOnlyList<DataContent> Attachments { get; init; } = [];

    /// <summary>The <see cref="DataContent"/> items of a result that is a list of <see cref="AIContent"/>; empty otherwise.</summary>
    public static IReadOnlyList<DataContent> AttachmentsOf(object? result) =>
        result is IEnumerable<AIContent> contents ? contents.OfType<DataContent>().ToList() : [];

    /// <summary>Normalises what function-invocation pipelines put in <see cref="FunctionResultContent.Result"/> to JSON.</summary>
    public static JsonElement ToJson(object? result)
    {
        var json = result switch
        {
            JsonElement e => e,
            string s => TryParse(s) ?? JsonSerializer.SerializeToElement(s),
            // A list of contents (run_code's JSON as text, then its images): the JSON is the first text.
            IEnumerable<AIContent> contents when contents.OfType<TextContent>().FirstOrDefault() is { } first =>
                TryParse(first.Text) ?? JsonSerializer.SerializeToElement(first.Text),
            null => JsonSerializer.SerializeToElement<object?>(null),
            _ => JsonSerializer.SerializeToElement(result, result.GetType(), AIJsonUtilities.DefaultOptions),
        };
        if (json.ValueKind == JsonValueKind.String && TryParse(json.GetString()!) is { } inner)
        {
            json = inner;
        }
        // An MCP CallToolResult: the tool's own JSON is its structured content, or the text of its first content block.
        if (json.ValueKind == JsonValueKind.Object && json.TryGetProperty("structuredContent", out var structured) && structured.ValueKind == JsonValueKind.Object)
        {
            return structured;
        }
        if (json.ValueKind == JsonValueKind.Object && json.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.Array
            && content.GetArrayLength() > 0 && content[0].TryGetProperty("text", out var text) && TryParse(text.GetString() ?? "") is { } parsed)
        {
            return parsed;
        }
        return json;
    }

    private static JsonElement? TryParse(string text)
    {
        var trimmed = text.TrimStart();
        if (!(trimmed.StartsWith('{') || trimmed.StartsWith('[')))
        {
            return null;
        }
        try
        {
            return JsonDocument.Parse(text).RootElement.Clone();
        }
        catch (JsonException)
        {
            return null;
        }
    }
}

/// <summary>A scripted reply: tool calls, or a final text.</summary>
public sealed class ScriptedReply
{
    private ScriptedReply(string? text, IReadOnlyList<(string Name, IDictionary<string, object?> Arguments)> calls)
    {
        Text = text;
        Calls = calls;
    }

    /// <summary>The text of a final answer.</summary>
    public string? Text { get; }

    /// <summary>The tool calls.</summary>
    public IReadOnlyList<(string Name, IDictionary<string, object?> Arguments)> Calls { get; }

    /// <summary>A final answer: the turn ends.</summary>
    public static ScriptedReply Answer(string text) => new(text, []);

    /// <summary>One tool call; <paramref name="arguments"/> is an anonymous object whose properties are the arguments.</summary>
    public static ScriptedReply Call(string tool, object? arguments = null) => new(null, [(tool, ToDictionary(arguments))]);

    /// <summary>Arguments as a model's client library delivers them: parsed JSON values.</summary>
    private static Dictionary<string, object?> ToDictionary(object? arguments) =>
        arguments is null ? []
        : arguments.GetType().GetProperties().ToDictionary(p => p.Name, p => (object?)JsonSerializer.SerializeToElement(p.GetValue(arguments), AIJsonUtilities.DefaultOptions));
}
