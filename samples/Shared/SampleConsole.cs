using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Extensions.AI;
using SandboxKit.Client;

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

    /// <summary>
    /// The exit code of a failure a sample reports instead of crashing: 2 when the SandboxKit server refused a call or
    /// could not be reached, 3 when a configured model could not be called; null for anything else.
    /// </summary>
    public static int? FailureExitCode(Exception exception, bool modelConfigured) => exception switch
    {
        SandboxException => 2,
        System.ClientModel.ClientResultException or HttpRequestException or AggregateException when modelConfigured => 3,
        _ => null,
    };

    /// <summary>Prints a failure classified by <see cref="FailureExitCode"/> and returns its exit code.</summary>
    public static int ReportFailure(Exception exception, int exitCode)
    {
        Console.Error.WriteLine(exception is SandboxException e
            ? $"SandboxKit call failed ({e.Code ?? e.Status?.ToString() ?? "no answer"}): {e.Message}"
            : $"model call failed: {exception.Message}");
        return exitCode;
    }

    /// <summary>Deletes a sample user's persistent storage; nothing to delete (or no server) is not an error at clean-up.</summary>
    public static async Task DeleteUserStorageQuietlyAsync(SandboxClient client, string userId)
    {
        try
        {
            await client.DeleteUserStorageAsync(userId);
        }
        catch (SandboxException)
        {
            // Nothing was created (the server was unreachable) or it is already gone.
        }
    }
}
