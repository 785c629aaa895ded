using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SandboxKit.Client;
using SandboxKit.Client.Internal;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers <see cref="SandboxClient"/> with dependency injection.</summary>
public static class SandboxClientServiceCollectionExtensions
{
    /// <summary>Name of the <see cref="HttpClient"/> the client uses (see <see cref="IHttpClientFactory"/>).</summary>
    public const string HttpClientName = SandboxConnection.HttpClientName;

    /// <summary>
    /// Registers a singleton <see cref="SandboxClient"/> configured in code. Options are validated when the host starts
    /// (and at the latest when the client is first resolved).
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Sets <see cref="SandboxClientOptions"/>; <see cref="SandboxClientOptions.BaseAddress"/> is required.</param>
    /// <returns>
    /// The builder of the named <see cref="HttpClient"/> behind the client. Handlers you add with it run inside the retry
    /// loop, once per attempt (after the idempotency key is set and before the request leaves).
    /// </returns>
    public static IHttpClientBuilder AddSandboxClient(this IServiceCollection services, Action<SandboxClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<SandboxClientOptions>().Configure(configure);
        return AddCore(services);
    }

    /// <summary>
    /// Registers a singleton <see cref="SandboxClient"/> bound to a configuration section, e.g.
    /// <c>builder.Configuration.GetSection("SandboxKit")</c> holding <c>BaseAddress</c>, <c>ApiKey</c>, <c>AttemptTimeout</c>
    /// (as <c>00:00:30</c>) and so on.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configuration">The section with <see cref="SandboxClientOptions"/> values.</param>
    /// <returns>The builder of the named <see cref="HttpClient"/> behind the client (see the other overload).</returns>
    [RequiresUnreferencedCode("Binds SandboxClientOptions from configuration by reflection. Use the Action<SandboxClientOptions> overload for trimmed apps.")]
    [RequiresDynamicCode("Binds SandboxClientOptions from configuration by reflection. Use the Action<SandboxClientOptions> overload for Native AOT apps.")]
    public static IHttpClientBuilder AddSandboxClient(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        services.AddOptions<SandboxClientOptions>().Bind(configuration);
        return AddCore(services);
    }

    private static IHttpClientBuilder AddCore(IServiceCollection services)
    {
        if (services.Any(d => d.ServiceType == typeof(SandboxClientMarker)))
        {
            // Called again (e.g. to add configuration): the options above were added; the handlers are there already.
            return services.AddHttpClient(HttpClientName);
        }

        services.AddSingleton<SandboxClientMarker>();
        services.AddOptions<SandboxClientOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SandboxClientOptions>, SandboxClientOptionsValidator>());

        var builder = services
            .AddHttpClient(HttpClientName)
            .ConfigureHttpClient((sp, http) =>
                SandboxConnection.ConfigureHttpClient(http, sp.GetRequiredService<IOptions<SandboxClientOptions>>().Value))
            // Outermost: one idempotency key per logical call, shared by all its retries.
            .AddHttpMessageHandler(static () => new IdempotencyKeyHandler());

        // Then the resilience pipeline (total timeout → retry → attempt timeout), the same one the direct constructors build.
        builder.AddResilienceHandler("SandboxKit", static (pipeline, context) =>
            SandboxResilience.Configure(pipeline, context.ServiceProvider.GetRequiredService<IOptions<SandboxClientOptions>>().Value));

        // A singleton that asks the factory for a client per call; it never holds a transient typed client.
        services.TryAddSingleton(static sp => new SandboxClient(new SandboxConnection(
            sp.GetRequiredService<IOptions<SandboxClientOptions>>().Value,
            sp.GetRequiredService<IHttpClientFactory>(),
            HttpClientName,
            sp.GetService<ILoggerFactory>())));

        return builder;
    }

    /// <summary>Marks that the handler chain is registered, so a second call does not add it twice.</summary>
    private sealed class SandboxClientMarker;
}
