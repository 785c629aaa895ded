using System.Reflection;

namespace SandboxKit.Server;

/// <summary>Facts about this build of the server.</summary>
public static class ServerInfo
{
    /// <summary>The server version (from the repository's VERSION file).</summary>
    public static string Version { get; } =
        typeof(ServerInfo).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
        ?? "0.0.0";

    /// <summary>The sandbox image this build expects, built by <c>scripts/build-sandbox-image.sh</c>.</summary>
    public static string DefaultImage => $"sandboxkit/sandbox:{Version}";
}
