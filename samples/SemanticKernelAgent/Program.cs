// A Semantic Kernel agent that solves a small task by writing and running code in its own sandbox:
// compute the first 20 primes, save them to a file, read the file back.
//
//   dotnet run --project samples/SemanticKernelAgent [server-url]
//
// Server: first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000; key from SANDBOXKIT_API_KEY.
// Model: OPENAI_API_KEY (+ OPENAI_BASE_URL, OPENAI_MODEL), AZURE_OPENAI_ENDPOINT/_API_KEY/_DEPLOYMENT, or OLLAMA_MODEL
// (+ OLLAMA_ENDPOINT); with none, a scripted chat client issues the tool calls, so the sample runs offline.
// Exits 0 when primes.txt in the sandbox holds the first 20 primes, 1 when it does not, 2 when the server cannot be used,
// 3 when the configured model cannot be reached.
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using SandboxKit.Agents;
using SandboxKit.Client;
using SandboxKit.Samples;
using SandboxKit.SemanticKernel;

int[] expected = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71];
const string Task = "Compute the first 20 prime numbers with a program, save them to /workspace/primes.txt (separated by spaces), " +
    "then read the file back and tell me what it contains.";

var url = SampleEnvironment.ServerUrl(args);
var model = SampleEnvironment.CreateModelClient(out var mode);
Console.WriteLine($"mode: {mode}");
Console.WriteLine($"server: {url}");

// Offline, the "model" is a script that makes the calls a model would: run code, read the file, answer.
IChatClient chatClient = model ?? new ScriptedChatClient(turn => turn.Step switch
{
    0 => ScriptedReply.Call(SandboxToolNames.RunCode, new
    {
        language = "python",
        code = """
            primes = []
            n = 2
            while len(primes) < 20:
                if all(n % p for p in primes if p * p <= n):
                    primes.append(n)
                n += 1
            with open("/workspace/primes.txt", "w") as f:
                f.write(" ".join(map(str, primes)) + "\n")
            print(primes)
            """,
    }),
    1 => ScriptedReply.Call(SandboxToolNames.ReadFile, new { path = "/workspace/primes.txt" }),
    _ => ScriptedReply.Answer("primes.txt contains: " + turn.Json(1).GetProperty("content").GetString()!.Trim()),
});

using var client = new SandboxClient(url, SampleEnvironment.ApiKey);
var sessions = new UserSandboxSessionProvider(client, new UserSandboxSessionProviderOptions { DeleteSessionsOnDispose = true });
var user = SampleConsole.RunUser("sk-agent");
try
{
    var builder = Kernel.CreateBuilder();
    // Semantic Kernel's own function invocation (with its filters) around the chat client.
    builder.Services.AddSingleton(chatClient.AsBuilder().UseKernelFunctionInvocation().Build());
    builder.Plugins.AddSandboxPlugin(new SandboxAgentTools(sessions));
    var kernel = builder.Build().ForSandboxUser(user);
    kernel.AutoFunctionInvocationFilters.Add(new PrintCalls());

    var history = new ChatHistory("You are an agent with a Linux sandbox. Solve tasks by writing and running code there; never guess results.");
    history.AddUserMessage(Task);
    Console.WriteLine($"user: {Task}");
    var chat = kernel.GetRequiredService<IChatClient>().AsChatCompletionService(kernel.Services);
    var reply = await chat.GetChatMessageContentAsync(
        history, new PromptExecutionSettings { FunctionChoiceBehavior = FunctionChoiceBehavior.Auto() }, kernel);
    Console.WriteLine($"agent: {reply.Content}");

    // Check the sandbox itself, not the model's word.
    var session = await sessions.GetSessionAsync(user);
    string content;
    try
    {
        content = await session.ReadTextAsync("/workspace/primes.txt");
    }
    catch (SandboxException e) when (e.Code == SandboxErrorCodes.NotFound)
    {
        Console.Error.WriteLine("FAILED: the agent did not create /workspace/primes.txt");
        return 1;
    }
    var numbers = Regex.Matches(content, @"\d+").Select(m => int.Parse(m.Value, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
    if (!numbers.SequenceEqual(expected))
    {
        Console.Error.WriteLine($"FAILED: primes.txt holds '{content.Trim()}', not the first 20 primes");
        return 1;
    }
    Console.WriteLine($"verified: primes.txt in sandbox {session.Id} holds the first 20 primes");
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

/// <summary>Prints each function call the kernel makes for the model, and its result.</summary>
internal sealed class PrintCalls : IAutoFunctionInvocationFilter
{
    public async Task OnAutoFunctionInvocationAsync(AutoFunctionInvocationContext context, Func<AutoFunctionInvocationContext, Task> next)
    {
        SampleConsole.PrintCall(context.Function.Name, JsonSerializer.Serialize(context.Arguments?.ToDictionary(a => a.Key, a => a.Value?.ToString()), SampleConsole.Json));
        await next(context);
        SampleConsole.PrintResult(JsonSerializer.Serialize(context.Result.GetValue<object>(), SampleConsole.Json));
    }
}
