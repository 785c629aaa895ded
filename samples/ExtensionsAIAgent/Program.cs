// An agent on Microsoft.Extensions.AI: any IChatClient, with function invocation (UseFunctionInvocation) running the
// sandbox tools as AIFunctions. The same AIFunctions work with an agent of the Microsoft Agent Framework.
// Task: write a Fibonacci program, run it, save its output, and report.
//
//   dotnet run --project samples/ExtensionsAIAgent [server-url]
//
// Server: first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000; key from SANDBOXKIT_API_KEY.
// Model: OPENAI_API_KEY (+ OPENAI_BASE_URL, OPENAI_MODEL), AZURE_OPENAI_ENDPOINT/_API_KEY/_DEPLOYMENT, or OLLAMA_MODEL
// (+ OLLAMA_ENDPOINT); with none, a scripted chat client issues the tool calls, so the sample runs offline.
// Exits 0 when /workspace/fib.txt holds the first 15 Fibonacci numbers, 1 when not, 2 when the server cannot be used,
// 3 when the configured model cannot be reached.
using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using SandboxKit.Agents;
using SandboxKit.Client;
using SandboxKit.Samples;

long[] expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377];
const string Task = "Write a Python program /workspace/fib.py that prints the first 15 Fibonacci numbers (starting 0, 1), one per line. " +
    "Run it, save its output to /workspace/fib.txt, and tell me the last number.";

var url = SampleEnvironment.ServerUrl(args);
var model = SampleEnvironment.CreateModelClient(out var mode);
Console.WriteLine($"mode: {mode}");
Console.WriteLine($"server: {url}");

IChatClient inner = model ?? new ScriptedChatClient(turn => turn.Step switch
{
    0 => ScriptedReply.Call(SandboxToolNames.WriteFile, new
    {
        path = "/workspace/fib.py",
        content = "a, b = 0, 1\nfor _ in range(15):\n    print(a)\n    a, b = b, a + b\n",
    }),
    1 => ScriptedReply.Call(SandboxToolNames.RunCommand, new { command = "cd /workspace && python3 fib.py > fib.txt && tail -n 1 fib.txt" }),
    _ => ScriptedReply.Answer("The 15th Fibonacci number is " + turn.Json(1).GetProperty("stdout").GetString()!.Trim() + "."),
});
using var chat = new ChatClientBuilder(inner).UseFunctionInvocation().Build();

using var client = new SandboxClient(url, SampleEnvironment.ApiKey);
var sessions = new UserSandboxSessionProvider(client, new UserSandboxSessionProviderOptions { DeleteSessionsOnDispose = true });
var user = SampleConsole.RunUser("meai-agent");
try
{
    // Bound to one end user: every call of these functions acts on that user's sandbox.
    var tools = new SandboxAgentTools(sessions).CreateAIFunctions(user);
    Console.WriteLine($"tools: {string.Join(", ", tools.Select(t => t.Name))}");
    Console.WriteLine($"user: {Task}");
    List<ChatMessage> messages =
    [
        new(ChatRole.System, "You are an agent with a Linux sandbox. Solve tasks by writing and running code there; never guess results."),
        new(ChatRole.User, Task),
    ];
    var response = await chat.GetResponseAsync(messages, new ChatOptions { Tools = [.. tools] });
    SampleConsole.PrintToolActivity(response.Messages);
    Console.WriteLine($"agent: {response.Text}");

    var session = await sessions.GetSessionAsync(user);
    var check = await session.ExecuteAsync("cat /workspace/fib.txt");
    var numbers = Regex.Matches(check.Stdout, @"\d+").Select(m => long.Parse(m.Value, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
    if (check.ExitCode != 0 || !numbers.SequenceEqual(expected))
    {
        Console.Error.WriteLine($"FAILED: /workspace/fib.txt is not the first 15 Fibonacci numbers (exit {check.ExitCode}: {check.Stdout.Trim()} {check.Stderr.Trim()})");
        return 1;
    }
    Console.WriteLine($"verified: fib.txt in sandbox {session.Id} holds the first 15 Fibonacci numbers");
    return 0;
}
catch (Exception e) when (SampleConsole.FailureExitCode(e, model is not null) is { } exitCode)
{
    return SampleConsole.ReportFailure(e, exitCode);
}
finally
{
    await sessions.DisposeAsync();
    await SampleConsole.DeleteUserStorageQuietlyAsync(client, user);
}
