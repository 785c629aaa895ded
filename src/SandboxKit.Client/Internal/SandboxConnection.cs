using System.Net.Http.Headers;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.Extensions.Http.Resilience;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Polly;
using Polly.Timeout;
using Refit;
using SandboxKit.Contracts;

namespace SandboxKit.Client.Internal;

/// <summary>
/// Everything a client, its sessions and processes share: options, logger, and how to get an
/// <see cref="HttpClient"/> (and the generated Refit client over it) with the right handler chain.
/// </summary>
/// <remarks>
/// Direct mode owns one <see cref="HttpClient"/> for the client's lifetime (a <see cref="SocketsHttpHandler"/> with
/// a pooled-connection lifetime, so DNS changes are seen). DI mode asks <see cref="IHttpClientFactory"/> for the named
/// client on every call and builds the generated Refit client over it; nothing transient is captured by the
/// singleton <see cref="SandboxClient"/>.
/// </remarks>
internal sealed class SandboxConnection : IDisposable
{
    public const string HttpClientName = "SandboxKit.Client";

    private static readonly string ClientVersion =
        typeof(SandboxConnection).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0]
        ?? "0.0.0";

    private readonly HttpClient? _ownedClient;
    private readonly ISandboxApi? _ownedApi;
    private readonly IHttpClientFactory? _factory;
    private readonly string _clientName = HttpClientName;

    /// <summary>Direct mode: builds the same handler chain DI builds.</summary>
    public SandboxConnection(SandboxClientOptions options, ILoggerFactory? loggerFactory, HttpMessageHandler? primaryHandler = null)
    {
        Options = options;
        Logger = CreateLogger(loggerFactory);

        var pipelineBuilder = new ResiliencePipelineBuilder<HttpResponseMessage>();
        SandboxResilience.Configure(pipelineBuilder, options);
        var primary = primaryHandler ?? new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(2) };
        var resilience = new ResilienceHandler(pipelineBuilder.Build()) { InnerHandler = primary };
        var handler = new IdempotencyKeyHandler(resilience);

        _ownedClient = new HttpClient(handler, disposeHandler: true);
        ConfigureHttpClient(_ownedClient, options);
        _ownedApi = RestService.ForGenerated<ISandboxApi>(_ownedClient, RefitSettings);
    }

    /// <summary>DI mode: the named client carries the handler chain registered by <c>AddSandboxClient</c>.</summary>
    public SandboxConnection(SandboxClientOptions options, IHttpClientFactory factory, string clientName, ILoggerFactory? loggerFactory)
    {
        Options = options;
        Logger = CreateLogger(loggerFactory);
        _factory = factory;
        _clientName = clientName;
    }

    public SandboxClientOptions Options { get; }

    public ILogger Logger { get; }

    /// <summary>Refit settings: JSON through <see cref="SandboxJsonContext"/> only, buffered bodies (replayable on retry),
    /// and errors mapped to <see cref="SandboxException"/> instead of Refit's own exceptions.</summary>
    internal static RefitSettings RefitSettings { get; } = CreateRefitSettings();

    public Uri BaseAddress => Options.BaseAddress!;

    public HttpClient GetHttpClient() => _ownedClient ?? _factory!.CreateClient(_clientName);

    public ISandboxApi GetApi() => _ownedApi ?? RestService.ForGenerated<ISandboxApi>(GetHttpClient(), RefitSettings);

    /// <summary>Applies base address, infinite HttpClient timeout (the pipeline owns timeouts), auth and user agent.</summary>
    public static void ConfigureHttpClient(HttpClient http, SandboxClientOptions options)
    {
        http.BaseAddress = NormalizeBaseAddress(options.BaseAddress!);
        http.Timeout = Timeout.InfiniteTimeSpan;
        if (!string.IsNullOrEmpty(options.ApiKey))
        {
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", options.ApiKey);
        }

        http.DefaultRequestHeaders.UserAgent.TryParseAdd($"SandboxKit.Client/{ClientVersion}");
    }

    /// <summary>A base address ending in '/', so relative paths keep any path prefix (e.g. behind a proxy).</summary>
    public static Uri NormalizeBaseAddress(Uri baseAddress) =>
        baseAddress.AbsoluteUri.EndsWith('/') ? baseAddress : new Uri(baseAddress.AbsoluteUri + "/");

    public async Task<T> CallAsync<T>(Func<ISandboxApi, CancellationToken, Task<T>> call, CancellationToken cancellationToken)
    {
        try
        {
            return await call(GetApi(), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (Translate(ex, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public async Task CallAsync(Func<ISandboxApi, CancellationToken, Task> call, CancellationToken cancellationToken)
    {
        try
        {
            await call(GetApi(), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (Translate(ex, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>Sends a raw request through the same handler chain; a failed answer becomes a <see cref="SandboxException"/>.
    /// The caller owns (and must dispose) the returned response.</summary>
    public async Task<HttpResponseMessage> SendAsync(
        HttpRequestMessage request,
        HttpCompletionOption completionOption,
        CancellationToken cancellationToken,
        bool throwOnFailure = true)
    {
        HttpResponseMessage response;
        try
        {
            response = await GetHttpClient().SendAsync(request, completionOption, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (Translate(ex, cancellationToken) is { } translated)
        {
            throw translated;
        }

        if (throwOnFailure && !response.IsSuccessStatusCode)
        {
            using (response)
            {
                throw await ProblemDetailsMapper.CreateExceptionAsync(response, cancellationToken).ConfigureAwait(false);
            }
        }

        return response;
    }

    /// <summary>Reads a JSON body with the source-generated metadata; a malformed body is an <c>invalid_response</c>.</summary>
    public static async Task<T> ReadJsonAsync<T>(HttpResponseMessage response, JsonTypeInfo<T> typeInfo, CancellationToken cancellationToken)
    {
        try
        {
            var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                return await JsonSerializer.DeserializeAsync(stream, typeInfo, cancellationToken).ConfigureAwait(false)
                    ?? throw new JsonException("The body was JSON null.");
            }
        }
        catch (Exception ex) when (Translate(ex, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public static ByteArrayContent JsonBody<T>(T value, JsonTypeInfo<T> typeInfo)
    {
        var content = new ByteArrayContent(JsonSerializer.SerializeToUtf8Bytes(value, typeInfo));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json") { CharSet = "utf-8" };
        return content;
    }

    /// <summary>
    /// Maps what escapes the handler chain to the client's exception model; null means "rethrow unchanged"
    /// (already a <see cref="SandboxException"/>, or the caller's own cancellation).
    /// </summary>
    internal static Exception? Translate(Exception exception, CancellationToken cancellationToken)
    {
        switch (exception)
        {
            case SandboxException:
                return null;
            case OperationCanceledException when cancellationToken.IsCancellationRequested:
                return null;
            case TimeoutRejectedException timeout:
                return new SandboxException(
                    $"The SandboxKit call did not complete within {timeout.Timeout}. For commands, raise the command's Timeout " +
                    $"(or {nameof(SandboxClientOptions)}.{nameof(SandboxClientOptions.DefaultCommandTimeout)}); otherwise raise " +
                    $"{nameof(SandboxClientOptions)}.{nameof(SandboxClientOptions.AttemptTimeout)} / {nameof(SandboxClientOptions.TotalTimeout)}.",
                    status: null,
                    SandboxErrorCodes.Timeout,
                    innerException: timeout);
            case OperationCanceledException canceled:
                // Not the caller's token: a timeout somewhere below (e.g. an HttpClient.Timeout a user configured).
                return new SandboxException(
                    "The SandboxKit call was canceled by a timeout: " + canceled.Message,
                    status: null,
                    SandboxErrorCodes.Timeout,
                    innerException: canceled);
            case HttpRequestException http:
                return new SandboxException(
                    "Could not get an answer from the SandboxKit server: " + http.Message,
                    status: null,
                    SandboxErrorCodes.TransportError,
                    innerException: http);
            case IOException io:
                return new SandboxException(
                    "The connection to the SandboxKit server failed while reading the answer: " + io.Message,
                    status: null,
                    SandboxErrorCodes.TransportError,
                    innerException: io);
            case JsonException json:
                return InvalidResponse(json);
            case ApiExceptionBase api:
                return new SandboxException("The SandboxKit call failed: " + api.Message, null, null, innerException: api);
            default:
                return null;
        }
    }

    public void Dispose() => _ownedClient?.Dispose();

    private static SandboxException InvalidResponse(Exception inner) =>
        new("The SandboxKit server's answer could not be read: " + inner.Message, null, SandboxErrorCodes.InvalidResponse, innerException: inner);

    private static ILogger CreateLogger(ILoggerFactory? loggerFactory) =>
        (ILogger?)loggerFactory?.CreateLogger<SandboxClient>() ?? NullLogger.Instance;

    private static RefitSettings CreateRefitSettings()
    {
        var settings = RefitSettings.ForJsonContext(SandboxJsonContext.Default);
        settings.RequestBodySerialization = RequestBodySerializationMode.Buffered;
        settings.ExceptionFactory = ProblemDetailsMapper.ExceptionFactory;
        settings.DeserializationExceptionFactory = (_, exception) => new ValueTask<Exception?>(InvalidResponse(exception));
        settings.TransportExceptionFactory = (_, exception, _) => exception;
        return settings;
    }
}
