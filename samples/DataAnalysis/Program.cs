// Data analysis with the code interpreter: the app uploads a CSV into the user's sandbox, and an agent (Microsoft.Extensions.AI,
// with the sandbox tools as AIFunctions) loads it with pandas and plots it with matplotlib. The cells run in one live Python
// interpreter, so the second cell uses the DataFrame the first one made; the chart comes back from run_code as an image
// (DataContent image/png), which the app saves to disk. Then it prints the summary.
//
//   dotnet run --project samples/DataAnalysis [server-url]
//
// Server: first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000; key from SANDBOXKIT_API_KEY.
// Model: OPENAI_API_KEY (+ OPENAI_BASE_URL, OPENAI_MODEL), AZURE_OPENAI_ENDPOINT/_API_KEY/_DEPLOYMENT, or OLLAMA_MODEL
// (+ OLLAMA_ENDPOINT); with none, a scripted chat client issues the tool calls, so the sample runs offline.
// The chart goes to DATA_ANALYSIS_OUTPUT, else <temp>/sandboxkit-samples/revenue-by-region.png.
// Exits 0 when a PNG chart came back and was saved (offline: and the summary has the right totals), 1 when not, 2 when the
// server cannot be used, 3 when the configured model cannot be reached.
using System.Globalization;
using System.Text;
using Microsoft.Extensions.AI;
using SandboxKit.Agents;
using SandboxKit.Client;
using SandboxKit.Samples;

var sales = new (string Region, string Month, int Revenue)[]
{
    ("North", "Jan", 1200), ("North", "Feb", 1500), ("North", "Mar", 1900),
    ("South", "Jan", 800), ("South", "Feb", 950), ("South", "Mar", 700),
    ("East", "Jan", 1300), ("East", "Feb", 1250), ("East", "Mar", 1600),
    ("West", "Jan", 400), ("West", "Feb", 650), ("West", "Mar", 900),
};
var csv = new StringBuilder("region,month,revenue\n");
foreach (var (region, month, revenue) in sales)
{
    csv.Append(CultureInfo.InvariantCulture, $"{region},{month},{revenue}\n");
}
var total = sales.Sum(s => s.Revenue);
var top = sales.GroupBy(s => s.Region).OrderByDescending(g => g.Sum(s => s.Revenue)).First();

const string Task = "/workspace/sales.csv has monthly revenue per region (columns region, month, revenue). Load it with pandas, " +
    "compute the total revenue per region, plot it as a bar chart with matplotlib (show it with plt.show()), and summarise.";

var url = SampleEnvironment.ServerUrl(args);
var model = SampleEnvironment.CreateModelClient(out var mode);
var output = Environment.GetEnvironmentVariable("DATA_ANALYSIS_OUTPUT") is { Length: > 0 } configured
    ? configured
    : Path.Combine(Path.GetTempPath(), "sandboxkit-samples", "revenue-by-region.png");
Console.WriteLine($"mode: {mode}");
Console.WriteLine($"server: {url}");

// Offline, the "model" is a script that makes the calls a model would: load and aggregate, plot, summarise.
IChatClient inner = model ?? new ScriptedChatClient(turn => turn.Step switch
{
    0 => ScriptedReply.Call(SandboxToolNames.RunCode, new
    {
        language = "python",
        code = """
            import pandas as pd
            sales = pd.read_csv("/workspace/sales.csv")
            totals = sales.groupby("region")["revenue"].sum().sort_values(ascending=False)
            print(f"{len(sales)} rows, {sales['region'].nunique()} regions, total revenue {sales['revenue'].sum()}")
            totals
            """,
    }),
    // A second cell: `totals` is still defined, the interpreter is the same.
    1 => ScriptedReply.Call(SandboxToolNames.RunCode, new
    {
        language = "python",
        code = """
            import matplotlib.pyplot as plt
            ax = totals.plot(kind="bar", title="Revenue by region", color="#4c72b0")
            ax.set_ylabel("revenue")
            plt.tight_layout()
            plt.show()
            """,
    }),
    _ => ScriptedReply.Answer(
        turn.Json(0).GetProperty("stdout").GetString()!.Trim() + ". Top region: " +
        turn.Json(0).GetProperty("results")[0].GetProperty("text").GetString()!.Split('\n')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[0] +
        $". The chart has {turn.Results[1].Attachments.Count} image(s)."),
});
using var chat = new ChatClientBuilder(inner).UseFunctionInvocation().Build();

using var client = new SandboxClient(url, SampleEnvironment.ApiKey);
var sessions = new UserSandboxSessionProvider(client, new UserSandboxSessionProviderOptions { DeleteSessionsOnDispose = true });
var user = SampleConsole.RunUser("data-analysis");
try
{
    // The app uploads the data with the client SDK; the agent never sees the host's files.
    var session = await sessions.GetSessionAsync(user);
    var uploaded = await session.WriteFileAsync("/workspace/sales.csv", csv.ToString());
    Console.WriteLine($"uploaded: {uploaded.Path} ({uploaded.Size} bytes, {sales.Length} rows) to sandbox {session.Id}");

    var tools = new SandboxAgentTools(sessions).CreateAIFunctions(user);
    Console.WriteLine($"user: {Task}");
    List<ChatMessage> messages =
    [
        new(ChatRole.System, "You are a data analyst with a Linux sandbox. run_code runs Python cells in one live interpreter " +
            "(variables persist between calls); pandas and matplotlib are installed. Charts shown with plt.show() come back to you as images."),
        new(ChatRole.User, Task),
    ];
    var response = await chat.GetResponseAsync(messages, new ChatOptions { Tools = [.. tools] });
    SampleConsole.PrintToolActivity(response.Messages);

    // The chart: the image content of a run_code result.
    var charts = response.Messages
        .SelectMany(m => m.Contents.OfType<FunctionResultContent>())
        .SelectMany(r => ScriptedToolResult.AttachmentsOf(r.Result))
        .Where(d => d.MediaType == "image/png")
        .ToList();
    if (charts.Count == 0)
    {
        Console.Error.WriteLine("FAILED: no chart came back from run_code");
        return 1;
    }
    var png = charts[^1].Data.ToArray();
    if (!png.AsSpan().StartsWith((ReadOnlySpan<byte>)[0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]))
    {
        Console.Error.WriteLine("FAILED: the chart is not a PNG");
        return 1;
    }
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
    await File.WriteAllBytesAsync(output, png);
    Console.WriteLine($"chart: {Path.GetFullPath(output)} ({png.Length} bytes)");
    Console.WriteLine($"summary: {response.Text}");

    if (model is null && !(response.Text.Contains($"total revenue {total}", StringComparison.Ordinal) && response.Text.Contains($"Top region: {top.Key}", StringComparison.Ordinal)))
    {
        Console.Error.WriteLine($"FAILED: the summary does not say total revenue {total} and top region {top.Key}");
        return 1;
    }
    Console.WriteLine($"verified: the chart is a PNG{(model is null ? $" and the sandbox's totals match (total {total}, top region {top.Key})" : "")}");
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
