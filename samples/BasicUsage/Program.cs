// SandboxKit basic client usage: create a session, run commands, see that shell state persists.
//
//   dotnet run --project samples/BasicUsage [server-url]
//
// The server URL comes from the first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000.
// The API key, if the server needs one, comes from SANDBOXKIT_API_KEY.
using SandboxKit.Client;

var url = args.Length > 0 ? args[0]
    : Environment.GetEnvironmentVariable("SANDBOXKIT_URL") is { Length: > 0 } fromEnv ? fromEnv
    : "http://127.0.0.1:5000";
var apiKey = Environment.GetEnvironmentVariable("SANDBOXKIT_API_KEY");

using var client = new SandboxClient(new Uri(url), string.IsNullOrEmpty(apiKey) ? null : apiKey);

try
{
    // Disposing the session deletes it (and its container) on the server.
    await using var session = await client.CreateSessionAsync();
    Console.WriteLine($"Session {session.Id} ({session.Info.Image})");

    var result = await session.ExecuteAsync("ls -la");
    Console.WriteLine(result.Stdout);

    // The working directory (and exported variables) persist between commands of a session.
    await session.ExecuteAsync("mkdir -p /tmp/demo && cd /tmp/demo");
    var pwd = await session.ExecuteAsync("pwd");
    Console.WriteLine($"pwd after cd: {pwd.Stdout.Trim()}");

    // A non-zero exit code is a result, not an exception; EnsureSuccess() turns it into one.
    var failed = await session.ExecuteAsync("ls /does-not-exist");
    Console.WriteLine($"exit code {failed.ExitCode}: {failed.Stderr.Trim()}");
    return 0;
}
catch (SandboxException ex)
{
    Console.Error.WriteLine($"SandboxKit call failed ({ex.Code ?? ex.Status?.ToString() ?? "no answer"}): {ex.Message}");
    return 1;
}
