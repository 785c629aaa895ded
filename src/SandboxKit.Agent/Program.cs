using System.Text;

namespace SandboxKit.Agent;

/// <summary>
/// <c>sandboxkit-agent</c>: <c>serve</c> (the supervisor, PID 1 of a session container), <c>relay</c> (copies
/// stdin/stdout to and from the supervisor's socket, for <c>docker exec</c> under gVisor or a remote engine) and
/// <c>--version</c>.
/// </summary>
internal static class Program
{
    private const string Usage =
        "usage: sandboxkit-agent serve --uid N --gid N --home PATH --workdir PATH --socket PATH [--warm 0|1|2]\n" +
        "       sandboxkit-agent relay [--socket PATH]\n" +
        "       sandboxkit-agent --version\n";

    private static int Main(string[] args)
    {
        if (args.Length == 1 && args[0] is "--version" or "-V")
        {
            var build = Native.ReadSmallFile(Path.Combine(AppContext.BaseDirectory, "BUILD"), 256) is { } b ? Encoding.UTF8.GetString(b).Trim() : "unknown";
            Write(1, $"sandboxkit-agent {BuildInfo.Version} (build {build})\n");
            return 0;
        }
        if (args.Length >= 1 && args[0] == "serve")
        {
            var options = ServeOptions.Parse(args.AsSpan(1), out var error);
            if (options is null)
            {
                Write(2, $"sandboxkit-agent: {error}\n{Usage}");
                return 2;
            }
            return Supervisor.Serve(options);
        }
        if (args.Length >= 1 && args[0] == "relay")
        {
            var socket = "/run/sandboxkit/agent.sock";
            if (args.Length == 3 && args[1] == "--socket")
            {
                socket = args[2];
            }
            else if (args.Length != 1)
            {
                Write(2, Usage);
                return 2;
            }
            return Relay.Run(socket);
        }
        Write(2, Usage);
        return 2;
    }

    private static void Write(int fd, string text) => _ = Native.WriteAll(fd, Encoding.UTF8.GetBytes(text));
}
