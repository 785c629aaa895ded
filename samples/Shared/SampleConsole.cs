using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Extensions.AI;

namespace SandboxKit.Samples;

/// <summary>Console output shared by the samples.</summary>
public static class SampleConsole
{
    /// <summary>JSON as a person reads it (no \u escapes for &lt; or non-ASCII).</summary>
    public static JsonSerializerOptions Json { get; } = new(AIJsonUtilities.DefaultOptions) { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, WriteIndented = false };

    /// <summary>Prints the tool calls and results of a chat response, one line each.</summary>
    public static void PrintToolActivity(IEnumerable<ChatMessage> messages)
    {
        foreach (var content in messages.SelectMany(m => m.Contents))
        {
            switch (content)
            {
                case FunctionCallContent call:
                    PrintCall(call.Name, JsonSerializer.Serialize(call.Arguments, Json));
                    break;
                case FunctionResultContent result:
                    PrintResult(JsonSerializer.Serialize(ScriptedToolResult.ToJson(result.Result), Json));
                    break;
            }
        }
    }

    /// <summary>Prints one tool call.</summary>
    public static void PrintCall(string name, string arguments) => Console.WriteLine($"  -> {name} {Shorten(arguments, 160)}");

    /// <summary>Prints one tool result.</summary>
    public static void PrintResult(string json) => Console.WriteLine($"  <- {Shorten(json, 200)}");

    /// <summary>One line, at most <paramref name="max"/> characters.</summary>
    public static string Shorten(string text, int max)
    {
        var line = text.ReplaceLineEndings("\\n");
        return line.Length <= max ? line : line[..(max - 3)] + "...";
    }

    /// <summary>A user id unique to this run, so runs never share a sandbox.</summary>
    public static string RunUser(string name) => $"{name}-{Guid.NewGuid().ToString("N")[..8]}";
}
