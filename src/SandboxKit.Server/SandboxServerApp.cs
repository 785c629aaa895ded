using System.Net;
using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Api;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Engine;
using SandboxKit.Server.Exec;
using SandboxKit.Server.Mcp;
using SandboxKit.Server.Sessions;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server;

/// <summary>Builds the SandboxKit server; used by <c>Program</c> and by tests that host the real server in-process.</summary>
public static class SandboxServerApp
{
    /// <summary>Creates the application with all services and endpoints.</summary>
    /// <param name="args">Command-line arguments (<c>--urls</c>, <c>--Sandbox:Image=...</c>, ...).</param>
    /// <param name="configure">Extra configuration applied after the defaults (tests use it for settings).</param>
    /// <exception cref="StartupException">The configuration is unsafe (e.g. a non-loopback address without API keys).</exception>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        // Content root at the binary, so appsettings.json is found whatever the working directory.
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        if (string.IsNullOrEmpty(builder.Configuration[WebHostDefaults.ServerUrlsKey]))
        {
            builder.WebHost.UseUrls("http://127.0.0.1:5000");
        }

        // Run Kestrel's continuations on the socket thread instead of queueing them to the
        // thread pool: every handler here awaits I/O and never blocks, and on a 2-core VM each
        // cross-thread hand-off is a costly wake-up (docs/benchmarks.md, "Where the CPU goes").
        builder.WebHost.UseSockets(o => o.UnsafePreferInlineScheduling = true);

        builder.Services.ConfigureHttpJsonOptions(o =>
        {
            o.SerializerOptions.TypeInfoResolverChain.Insert(0, SandboxJsonContext.Default);
            o.SerializerOptions.DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull;
        });
        builder.Services.AddProblemDetails(o => o.CustomizeProblemDetails = ctx =>
        {
            ctx.ProblemDetails.Extensions["requestId"] = ctx.HttpContext.TraceIdentifier;
            if (!ctx.ProblemDetails.Extensions.ContainsKey("code"))
            {
                ctx.ProblemDetails.Extensions["code"] = ctx.ProblemDetails.Status switch
                {
                    StatusCodes.Status404NotFound => ProblemCodes.NotFound,
                    StatusCodes.Status405MethodNotAllowed => ProblemCodes.InvalidRequest,
                    StatusCodes.Status415UnsupportedMediaType => ProblemCodes.InvalidRequest,
                    StatusCodes.Status413PayloadTooLarge => ProblemCodes.PayloadTooLarge,
                    >= 400 and < 500 => ProblemCodes.InvalidRequest,
                    _ => ProblemCodes.Internal,
                };
            }
        });
        builder.Services.AddExceptionHandler<ProblemExceptionHandler>();
        builder.Services.AddOpenApi();
        builder.Services.AddOptions<SandboxOptions>()
            .Bind(builder.Configuration.GetSection(SandboxOptions.Section))
            .ValidateDataAnnotations()
            .ValidateOnStart();
        builder.Services.AddSingleton<Microsoft.Extensions.Options.IValidateOptions<SandboxOptions>, SandboxOptionsValidator>();
        builder.Services.AddOptions<AuthOptions>().Bind(builder.Configuration.GetSection(AuthOptions.Section));
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton<SandboxImage>();
        builder.Services.AddSingleton<TenantResolver>();
        builder.Services.AddTenantRateLimits();
        builder.Services.AddSingleton<IContainerEngine>(sp => new DockerEngine(
            sp.GetRequiredService<IOptions<SandboxOptions>>().Value.DockerEndpoint is { Length: > 0 } endpoint ? endpoint : DockerEngine.DefaultEndpoint,
            sp.GetRequiredService<ILogger<DockerEngine>>()));
        builder.Services.AddSingleton<SupervisorBundle>();
        builder.Services.AddSingleton<SupervisorDialer>();
        builder.Services.AddSingleton<ContainerSpecFactory>();
        builder.Services.AddSingleton<UsageMeter>();
        builder.Services.AddSingleton<SessionRegistry>();
        builder.Services.AddSingleton<SessionLifecycle>();
        builder.Services.AddSingleton<SessionCreator>();
        builder.Services.AddSingleton<CommandRunner>();
        builder.Services.AddSingleton<FileService>();
        builder.Services.AddSingleton<JobService>();
        builder.Services.AddSingleton<TerminalService>();
        builder.Services.AddSingleton<CodeInterpreter>();
        builder.Services.AddSingleton<SandboxKit.Server.Network.EgressService>();
        builder.Services.AddSingleton<SandboxKit.Server.Network.PreviewService>();
        builder.Services.AddHttpForwarder();
        builder.Services.AddSingleton<WebSocketTickets>();
        builder.Services.AddSingleton<DiskStore>();
        builder.Services.AddSingleton<BlockIo>();
        builder.Services.AddSingleton<CapacityGuard>();
        builder.Services.AddSingleton<HealthProbe>();
        builder.Services.AddSingleton<IdempotencyStore>();
        builder.Services.AddSingleton<WarmPool>();
        // Order matters: the reaper adopts existing sessions in its StartAsync, before the pool starts containers.
        builder.Services.AddHostedService<SessionReaper>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<WarmPool>());
        builder.Services.AddSandboxMcp();

        configure?.Invoke(builder);

        var app = builder.Build();
        RefuseOpenBindWithoutKeys(app);
        // A server without its supervisor bundle cannot run a single command: say so at start, not at the first create.
        app.Services.GetRequiredService<SupervisorBundle>().Validate();

        app.UseExceptionHandler();
        app.UseStatusCodePages();
        // Order matters: keyless-mode host/origin checks, then rate limits (per tenant, or per address without a key),
        // then the key check (401 before any body is read), and only then anything that does work.
        app.UseMiddleware<LoopbackGuardMiddleware>();
        app.UseRateLimiter();
        app.UseMiddleware<TenantMiddleware>();
        app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromSeconds(15) });
        app.UseMiddleware<IdempotencyMiddleware>();
        app.MapOpenApi("/openapi/{documentName}.json");
        app.MapHealthApi();
        app.MapSessionsApi();
        app.MapCommandsApi();
        app.MapFilesApi();
        app.MapProcessesApi();
        app.MapTerminalApi();
        app.MapTerminalsApi();
        app.MapContextsApi();
        app.MapNetworkApi();
        app.MapSeedApi();
        app.MapSandboxMcp();
        return app;
    }

    /// <summary>
    /// Starts the application and then checks the addresses it actually bound (see <see cref="LoopbackGuard"/>): URLs and
    /// <c>Kestrel:Endpoints</c> can name addresses the configured URL check never saw.
    /// </summary>
    /// <param name="app">The application from <see cref="Build"/>.</param>
    /// <returns>A task that completes once the server listens.</returns>
    /// <exception cref="StartupException">Without API keys, a non-loopback address was bound (the application is stopped).</exception>
    public static async Task StartCheckedAsync(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        await app.StartAsync().ConfigureAwait(false);
        try
        {
            LoopbackGuard.CheckBoundAddresses(app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>(), app.Services.GetRequiredService<TenantResolver>());
        }
        catch (StartupException)
        {
            await app.StopAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Without API keys anyone who reaches the port can run code: allow that only on loopback.</summary>
    private static void RefuseOpenBindWithoutKeys(WebApplication app)
    {
        var tenants = app.Services.GetRequiredService<TenantResolver>();
        var urls = (app.Configuration[WebHostDefaults.ServerUrlsKey] ?? "http://127.0.0.1:5000")
            .Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (tenants.KeysConfigured)
        {
            app.Logger.LogInformation("API keys configured: every /v1 and seed call needs a key");
            return;
        }
        var open = urls.Where(u => !IsLoopback(u)).ToList();
        if (open.Count > 0)
        {
            throw new StartupException(
                $"refusing to listen on {string.Join(", ", open)} without API keys: configure Auth:ApiKeys, or bind a loopback address such as http://127.0.0.1:5000.");
        }
        app.Logger.LogWarning("No API keys configured: listening on loopback only ({Urls}), every caller is tenant 'default'", string.Join(", ", urls));
    }

    /// <summary>
    /// Fails with one clear line when an address is taken, before anything (adoption, the pool) touches the engine:
    /// a second server that cannot listen must not sweep the first one's containers.
    /// </summary>
    /// <exception cref="StartupException">An address is in use.</exception>
    public static void EnsureAddressesAreFree(WebApplication app)
    {
        var urls = (app.Configuration[WebHostDefaults.ServerUrlsKey] ?? "http://127.0.0.1:5000")
            .Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var url in urls)
        {
            if (!Uri.TryCreate(url.Replace("://*", "://0.0.0.0", StringComparison.Ordinal).Replace("://+", "://0.0.0.0", StringComparison.Ordinal), UriKind.Absolute, out var uri) || uri.Port == 0)
            {
                continue;
            }
            var address = uri.IsLoopback && !IPAddress.TryParse(uri.Host.Trim('[', ']'), out _) ? IPAddress.Loopback
                : IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) ? ip : IPAddress.Any;
            try
            {
                var probe = new System.Net.Sockets.TcpListener(address, uri.Port);
                probe.Start();
                probe.Stop();
            }
            catch (System.Net.Sockets.SocketException e) when (e.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse)
            {
                throw new StartupException($"cannot listen on {url}: the address is already in use. Stop the other process or pass --urls http://127.0.0.1:<port>.");
            }
        }
    }

    private static bool IsLoopback(string url) => LoopbackGuard.IsLoopbackUrl(url);
}
