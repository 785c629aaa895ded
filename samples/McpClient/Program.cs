// Connects to the SandboxKit server's MCP endpoint (/mcp) with the official C# MCP client, lists its tools, and lets
// a chat client call them through function invocation: create a session, run code, write and read a file, delete the session.
//
//   dotnet run --project samples/McpClient [server-url]
//
// Server: first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000; key from SANDBOXKIT_API_KEY (sent as a
// bearer token; the MCP endpoint takes the same keys as the REST API). Model: OPENAI_*, AZURE_OPENAI_* or OLLAMA_* as in
// the other samples, else a scripted chat client issues the calls. Exits 0 when result.txt read back through MCP holds
// the right sum and the session is gone afterwards, 1 when not, 2 when the server cannot be used, 3 when the configured
// model cannot be reached.
using System.Text.Json;
using Microsoft.Extensions.AI;
using ModelContextProtocol.Client;
using SandboxKit.Samples;

const string Expected = "338350";
const string Task = "Using the sandbox tools: create a session, compute the sum of the squares of 1..100 with Python, " +
    "write the number to result.txt, read result.txt back, delete the session, and tell me the number.";

var url = SampleEnvironment.ServerUrl(args);
var model = SampleEnvironment.CreateModelClient(out var mode);
Console.WriteLine($"mode: {mode}");
Console.WriteLine($"server: {url}");

var transport = new HttpClientTransportOptions
{
    Endpoint = new Uri(url, "/mcp"),
    TransportMode = HttpTransportMode.StreamableHttp,
};
if (SampleEnvironment.ApiKey is { } key)
{
    transport.AdditionalHeaders = new Dictionary<string, string> { ["Authorization"] = "Bearer " + key };
}

McpClient mcp;
try
{
    mcp = await McpClient.CreateAsync(new HttpClientTransport(transport));
}
catch (Exception e) when (e is HttpRequestException or ModelContextProtocol.McpException)
{
    Console.Error.WriteLine($"cannot connect to {transport.Endpoint}: {e.Message}");
    return 2;
}

await using (mcp)
{
    Console.WriteLine($"connected to {mcp.ServerInfo?.Name} {mcp.ServerInfo?.Version}");
    var tools = await mcp.ListToolsAsync();
    foreach (var tool in tools)
    {
        var a = tool.ProtocolTool.Annotations;
        Console.WriteLine($"  tool {tool.Name,-15} readOnly={a?.ReadOnlyHint} destructive={a?.DestructiveHint} idempotent={a?.IdempotentHint} openWorld={a?.OpenWorldHint}");
    }

    static string SessionOf(ScriptedTurn turn) => turn.Json(0).GetProperty("sessionId").GetString()!;
    IChatClient inner = model ?? new ScriptedChatClient(turn => turn.Step switch
    {
        0 => ScriptedReply.Call("create_session"),
        1 => ScriptedReply.Call("run_code", new { sessionId = SessionOf(turn), language = "python", code = "print(sum(i * i for i in range(1, 101)))" }),
        2 => ScriptedReply.Call("write_file", new { sessionId = SessionOf(turn), path = "result.txt", content = turn.Json(1).GetProperty("stdout").GetString()! }),
        3 => ScriptedReply.Call("read_file", new { sessionId = SessionOf(turn), path = "result.txt" }),
        4 => ScriptedReply.Call("delete_session", new { sessionId = SessionOf(turn) }),
        _ => ScriptedReply.Answer("The sum of the squares of 1..100 is " + turn.Json(3).GetProperty("content").GetString()!.Trim() + "."),
    });
    using var chat = new ChatClientBuilder(inner).UseFunctionInvocation().Build();

    Console.WriteLine($"user: {Task}");
    ChatResponse response;
    try
    {
        response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, Task)], new ChatOptions { Tools = [.. tools] });
    }
    catch (Exception e) when (model is not null && e is System.ClientModel.ClientResultException or HttpRequestException or AggregateException)
    {
        Console.Error.WriteLine($"model call failed: {e.Message}");
        return 3;
    }
    SampleConsole.PrintToolActivity(response.Messages);
    Console.WriteLine($"agent: {response.Text}");

    // Check through MCP what the agent did: the file's content as read back, and that its sessions are gone.
    var calls = response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToDictionary(c => c.CallId, c => c.Name);
    var results = response.Messages.SelectMany(m => m.Contents).OfType<FunctionResultContent>()
        .Select(r => (Tool: calls.GetValueOrDefault(r.CallId, "?"), Json: ScriptedToolResult.ToJson(r.Result)))
        .ToList();
    var sessionIds = results.Where(r => r.Tool == "create_session" && r.Json.TryGetProperty("sessionId", out _))
        .Select(r => r.Json.GetProperty("sessionId").GetString()!).ToList();
    var readBack = results.LastOrDefault(r => r.Tool == "read_file" && r.Json.GetProperty("status").GetString() == "ok").Json;
    var leftOver = new List<string>();
    foreach (var id in sessionIds)
    {
        var probe = await mcp.CallToolAsync("list_files", new Dictionary<string, object?> { ["sessionId"] = id });
        if (probe.IsError != true)
        {
            leftOver.Add(id);
            // The agent forgot: clean up so no container is left behind.
            await mcp.CallToolAsync("delete_session", new Dictionary<string, object?> { ["sessionId"] = id });
        }
    }

    if (sessionIds.Count == 0 || readBack.ValueKind != JsonValueKind.Object || readBack.GetProperty("content").GetString()?.Trim() != Expected)
    {
        Console.Error.WriteLine($"FAILED: expected result.txt to be read back as {Expected} (sessions: {sessionIds.Count})");
        return 1;
    }
    if (leftOver.Count > 0)
    {
        Console.Error.WriteLine($"FAILED: the agent did not delete session(s) {string.Join(", ", leftOver)} (deleted now)");
        return 1;
    }
    Console.WriteLine($"verified: result.txt read back through MCP as {Expected}; session {sessionIds[0]} is deleted");
    return 0;
}
