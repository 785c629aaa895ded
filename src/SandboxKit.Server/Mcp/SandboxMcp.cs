using Microsoft.Extensions.DependencyInjection.Extensions;
using ModelContextProtocol.Protocol;
using SandboxKit.Agents;
using SandboxKit.Server.Auth;

namespace SandboxKit.Server.Mcp;

/// <summary>
/// The server's MCP endpoint (Streamable HTTP, stateless): the sandbox tools for MCP clients such as IDE agents and
/// the official MCP SDKs, under the same API keys and tenants as the REST API.
/// </summary>
internal static class SandboxMcp
{
    /// <summary>Where <see cref="MapSandboxMcp"/> mounts the endpoint by default.</summary>
    public const string DefaultPath = "/mcp";

    private const string Instructions =
        "SandboxKit runs untrusted code in isolated Linux containers without network access. Call create_session to get a sandbox, " +
        "pass its sessionId to run_command, run_code, write_file, read_file and list_files, and call delete_session when done. " +
        "Every result is JSON with a status of ok, error or timeout.";

    /// <summary>Registers the MCP server and the sandbox tools.</summary>
    /// <param name="services">The server's services.</param>
    /// <returns>The services, for chaining.</returns>
    public static IServiceCollection AddSandboxMcp(this IServiceCollection services)
    {
        services.AddHttpContextAccessor();
        services.TryAddSingleton(_ => new SandboxTools());
        services.AddMcpServer(o =>
            {
                o.ServerInfo = new Implementation { Name = "SandboxKit", Version = ServerInfo.Version };
                o.ServerInstructions = Instructions;
            })
            // Stateless: every call is an independent HTTP request, authenticated on its own; no MCP session state to pin.
            .WithHttpTransport(o => o.Stateless = true)
            .WithTools<SandboxMcpTools>();
        return services;
    }

    /// <summary>
    /// Mounts the MCP endpoint at <paramref name="pattern"/>. Every request to it must carry a valid API key when keys are
    /// configured (else 401 problem details, as for <c>/v1</c>); its tools act on the key's tenant.
    /// </summary>
    /// <param name="app">The application.</param>
    /// <param name="pattern">The route, <c>/mcp</c> by default.</param>
    /// <returns>The endpoint's convention builder.</returns>
    public static IEndpointConventionBuilder MapSandboxMcp(this WebApplication app, string pattern = DefaultPath)
    {
        // The tenant middleware checks the key of every endpoint carrying this metadata, the MCP SDK's included.
        return app.MapMcp(pattern).WithTags("MCP").RequireTenant();
    }
}
