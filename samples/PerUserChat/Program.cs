// A chat service with several end users, each with their own sandbox: one set of tools serves everybody, and the
// user of each turn is set around the chat call (SandboxUserContext), never by the model. Alice writes a note; Bob
// cannot see it.
//
//   dotnet run --project samples/PerUserChat [server-url] [--interactive]
//
// Without --interactive a fixed conversation runs (alice, bob, alice, bob). With it, type "<user>: <message>" lines
// (best with a real model). Server: first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000; key from
// SANDBOXKIT_API_KEY. Model: as the other samples (OPENAI_*, AZURE_OPENAI_*, OLLAMA_*), else scripted.
// Exits 0 when alice's note is in her sandbox and not in bob's, 1 when not, 2 when the server cannot be used,
// 3 when the configured model cannot be reached.
using Microsoft.Extensions.AI;
using SandboxKit.Agents;
using SandboxKit.Client;
using SandboxKit.Samples;

var url = SampleEnvironment.ServerUrl(args);
var interactive = args.Contains("--interactive");
var model = SampleEnvironment.CreateModelClient(out var mode);
Console.WriteLine($"mode: {mode}");
Console.WriteLine($"server: {url}");

// Offline, the script answers the fixed conversation the way a model would, through the tools.
IChatClient inner = model ?? new ScriptedChatClient(turn =>
{
    var text = turn.UserText.ToLowerInvariant();
    if (text.Contains("save", StringComparison.Ordinal))
    {
        return turn.Step == 0
            ? ScriptedReply.Call(SandboxToolNames.WriteFile, new { path = "/workspace/note.txt", content = "buy milk\n" })
            : ScriptedReply.Answer($"Saved your note ({turn.Json(0).GetProperty("status").GetString()}).");
    }
    if (text.Contains("list", StringComparison.Ordinal))
    {
        return turn.Step == 0
            ? ScriptedReply.Call(SandboxToolNames.ListFiles, new { path = "/workspace" })
            : ScriptedReply.Answer("Your files: [" + string.Join(", ", turn.Json(0).GetProperty("entries").EnumerateArray().Select(e => e.GetProperty("name").GetString())) + "]");
    }
    if (text.Contains("note", StringComparison.Ordinal))
    {
        if (turn.Step == 0)
        {
            return ScriptedReply.Call(SandboxToolNames.ReadFile, new { path = "/workspace/note.txt" });
        }
        var read = turn.Json(0);
        return ScriptedReply.Answer(read.GetProperty("status").GetString() == SandboxToolStatus.Ok
            ? "Your note says: " + read.GetProperty("content").GetString()!.Trim()
            : "You have no note: " + read.GetProperty("error").GetString());
    }
    return ScriptedReply.Answer("(scripted mode knows only: save a note, list my files, read my note)");
});
using var chat = new ChatClientBuilder(inner).UseFunctionInvocation().Build();

using var client = new SandboxClient(url, SampleEnvironment.ApiKey);
var sessions = new UserSandboxSessionProvider(client, new UserSandboxSessionProviderOptions { DeleteSessionsOnDispose = true });
// One set of functions for all users: each call acts for the user of the current turn.
var tools = new SandboxAgentTools(sessions).CreateAIFunctions();
var alice = SampleConsole.RunUser("alice");
var bob = SampleConsole.RunUser("bob");
var names = new Dictionary<string, string> { ["alice"] = alice, ["bob"] = bob };
var histories = new Dictionary<string, List<ChatMessage>>();

async Task<string> TurnAsync(string name, string message)
{
    var userId = names.TryGetValue(name, out var known) ? known : names[name] = SampleConsole.RunUser(name);
    if (!histories.TryGetValue(userId, out var history))
    {
        history = [new(ChatRole.System, "You are a helpful assistant with a private Linux sandbox for this user. Use the tools to keep and find the user's files.")];
        histories[userId] = history;
    }
    history.Add(new ChatMessage(ChatRole.User, message));
    Console.WriteLine($"{name}: {message}");
    using (SandboxUserContext.BeginScope(userId))
    {
        var response = await chat.GetResponseAsync(history, new ChatOptions { Tools = [.. tools] });
        SampleConsole.PrintToolActivity(response.Messages);
        history.AddRange(response.Messages);
        Console.WriteLine($"assistant to {name}: {response.Text}");
        return response.Text;
    }
}

try
{
    if (interactive)
    {
        Console.WriteLine("Type '<user>: <message>' (e.g. 'alice: save a note saying hello'); an empty line ends.");
        while (Console.ReadLine() is { Length: > 0 } line)
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0)
            {
                Console.WriteLine("format: <user>: <message>");
                continue;
            }
            await TurnAsync(line[..colon].Trim().ToLowerInvariant(), line[(colon + 1)..].Trim());
        }
    }
    else
    {
        await TurnAsync("alice", "Please save a note saying 'buy milk' in /workspace/note.txt.");
        await TurnAsync("bob", "Please list my files in /workspace.");
        await TurnAsync("alice", "What does my note in /workspace/note.txt say?");
        await TurnAsync("bob", "What does my note in /workspace/note.txt say?");
    }

    // Check isolation on the sandboxes themselves.
    var aliceSession = await sessions.GetSessionAsync(alice);
    var bobSession = await sessions.GetSessionAsync(bob);
    var aliceNote = await aliceSession.ExecuteAsync("cat /workspace/note.txt");
    var bobNote = await bobSession.ExecuteAsync("cat /workspace/note.txt");
    Console.WriteLine($"sandboxes: alice={aliceSession.Id} bob={bobSession.Id}");
    if (interactive)
    {
        return 0;
    }
    if (aliceSession.Id == bobSession.Id || aliceNote.ExitCode != 0 || !aliceNote.Stdout.Contains("buy milk", StringComparison.OrdinalIgnoreCase) || bobNote.ExitCode == 0)
    {
        Console.Error.WriteLine($"FAILED: alice's note: exit {aliceNote.ExitCode} '{aliceNote.Stdout.Trim()}'; bob's: exit {bobNote.ExitCode} '{bobNote.Stdout.Trim()}'");
        return 1;
    }
    Console.WriteLine("verified: alice's note.txt is in her sandbox and not visible to bob");
    return 0;
}
catch (Exception e) when (SampleConsole.FailureExitCode(e, model is not null) is { } exitCode)
{
    return SampleConsole.ReportFailure(e, exitCode);
}
finally
{
    await sessions.DisposeAsync();
    foreach (var userId in names.Values)
    {
        await SampleConsole.DeleteUserStorageQuietlyAsync(client, userId);
    }
}
