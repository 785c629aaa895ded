using System.Net;
using Microsoft.Extensions.Logging;
using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// Entry point to a SandboxKit server: creates, finds and deletes sandbox sessions.
/// </summary>
/// <remarks>
/// <para>Create one client per server and reuse it; it is thread-safe. Either construct it directly
/// (<c>new SandboxClient(new Uri("http://127.0.0.1:5000"))</c>; dispose it when done) or register it with
/// <c>services.AddSandboxClient(...)</c> and inject it.</para>
/// <para>Every call retries transient failures (connection refused/reset, 408, 429 within
/// <see cref="SandboxClientOptions.MaxRetryAfter"/>, 502, 503, 504, attempt timeouts), POSTs included: each call carries
/// one <c>Idempotency-Key</c> for all its attempts, so the server never runs a command twice. Other 4xx answers are
/// not retried. Failures surface as <see cref="SandboxException"/> (transport failures and timeouts too, with the
/// original exception inside); cancellation through your token surfaces as <see cref="OperationCanceledException"/>.</para>
/// <para>Methods are virtual and a protected constructor exists, so the client can be mocked.</para>
/// </remarks>
public class SandboxClient : IDisposable
{
    /// <summary>Status of a running session (<see cref="SessionInfo.Status"/>).</summary>
    public const string SessionStatusRunning = "running";

    private readonly SandboxConnection? _connection;

    /// <summary>Creates a client for a server address, with default options.</summary>
    /// <param name="baseAddress">Absolute address of the server, e.g. <c>http://127.0.0.1:5000</c>.</param>
    /// <param name="apiKey">API key, or <see langword="null"/> when the server has none.</param>
    /// <exception cref="ArgumentException">The address is not an absolute http(s) URI.</exception>
    public SandboxClient(Uri baseAddress, string? apiKey = null)
        : this(new SandboxClientOptions { BaseAddress = baseAddress, ApiKey = apiKey })
    {
    }

    /// <summary>Creates a client from options. The options are copied; later changes to them have no effect.</summary>
    /// <param name="options">The settings; <see cref="SandboxClientOptions.BaseAddress"/> is required.</param>
    /// <param name="loggerFactory">Where to log (only warnings such as a failed delete on dispose); optional.</param>
    /// <exception cref="ArgumentException">The options are invalid; the message lists every problem.</exception>
    public SandboxClient(SandboxClientOptions options, ILoggerFactory? loggerFactory = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var copy = options.Clone();
        SandboxClientOptionsValidator.ThrowIfInvalid(copy);
        _connection = new SandboxConnection(copy, loggerFactory);
    }

    /// <summary>For mocking frameworks only; members of an instance made this way do nothing useful until overridden.</summary>
    protected SandboxClient()
    {
    }

    internal SandboxClient(SandboxConnection connection)
    {
        _connection = connection;
    }

    /// <summary>The server address this client talks to.</summary>
    public virtual Uri BaseAddress => Connection.BaseAddress;

    private SandboxConnection Connection =>
        _connection ?? throw new InvalidOperationException("This SandboxClient was created for mocking and has no connection.");

    /// <summary>Creates a new session (a new container). Dispose the session to delete it.</summary>
    /// <param name="request">Image, limits, environment, metadata, lifetimes, user id; all optional.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The session; use it with <c>await using</c>.</returns>
    /// <exception cref="SandboxQuotaExceededException">The caller has too many sessions.</exception>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<SandboxSession> CreateSessionAsync(
        CreateSessionRequest? request = null,
        CancellationToken cancellationToken = default)
    {
        var connection = Connection;
        var body = request ?? new CreateSessionRequest();
        var info = await connection.CallAsync((api, ct) => api.CreateSessionAsync(body, ct), cancellationToken).ConfigureAwait(false);
        Log.SessionCreated(connection.Logger, info.Id);
        return new SandboxSession(connection, info);
    }

    /// <summary>
    /// Returns a running session of <paramref name="userId"/> if there is one (the most recently active), or creates one
    /// for that user. Sessions with a user id get that user's persistent storage.
    /// </summary>
    /// <param name="userId">Your app's end user.</param>
    /// <param name="request">Settings used when a session has to be created; its <see cref="CreateSessionRequest.UserId"/>
    /// must be empty or equal to <paramref name="userId"/>.</param>
    /// <param name="cancellationToken">Cancels the calls.</param>
    /// <returns>The session. Disposing it deletes it: call <see cref="SandboxSession.Detach"/> to keep it for the user's next turn.</returns>
    /// <exception cref="SandboxException">A call failed.</exception>
    /// <remarks>Two concurrent calls for the same user may both create a session; serialize them per user if that matters.</remarks>
    public virtual async Task<SandboxSession> GetOrCreateSessionForUserAsync(
        string userId,
        CreateSessionRequest? request = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        if (request?.UserId is { } requested && requested != userId)
        {
            throw new ArgumentException($"request.UserId ('{requested}') differs from userId ('{userId}').", nameof(request));
        }

        var connection = Connection;
        var sessions = await ListSessionsAsync(userId, metadata: null, cancellationToken).ConfigureAwait(false);
        var existing = sessions
            .Where(s => s.Status == SessionStatusRunning && s.UserId == userId)
            .OrderByDescending(s => s.LastActivityAt)
            .FirstOrDefault();
        if (existing is not null)
        {
            Log.SessionReused(connection.Logger, existing.Id, userId);
            return new SandboxSession(connection, existing);
        }

        return await CreateSessionAsync((request ?? new CreateSessionRequest()) with { UserId = userId }, cancellationToken)
            .ConfigureAwait(false);
    }

    /// <summary>Gets a handle to an existing session by id (e.g. one a previous process <see cref="SandboxSession.Detach"/>ed).</summary>
    /// <param name="sessionId">The session id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The session. Disposing it deletes it, as for a created one.</returns>
    /// <exception cref="SessionNotFoundException">No such session for this caller (unknown, expired, deleted, another tenant's).</exception>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<SandboxSession> AttachSessionAsync(string sessionId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(sessionId);
        var connection = Connection;
        var info = await connection.CallAsync((api, ct) => api.GetSessionAsync(sessionId, ct), cancellationToken).ConfigureAwait(false);
        return new SandboxSession(connection, info);
    }

    /// <summary>Lists the caller's sessions, optionally filtered.</summary>
    /// <param name="userId">Only sessions of this end user.</param>
    /// <param name="metadata">Only sessions whose metadata has all these key/value pairs.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The sessions.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<IReadOnlyList<SessionInfo>> ListSessionsAsync(
        string? userId = null,
        IReadOnlyDictionary<string, string>? metadata = null,
        CancellationToken cancellationToken = default)
    {
        Dictionary<string, string>? filters = null;
        if (metadata is { Count: > 0 })
        {
            filters = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (key, value) in metadata)
            {
                ArgumentException.ThrowIfNullOrEmpty(key, nameof(metadata));
                filters[$"metadata[{key}]"] = value ?? string.Empty;
            }
        }

        var list = await Connection.CallAsync(
            (api, ct) => api.ListSessionsAsync(string.IsNullOrEmpty(userId) ? null : userId, filters, ct),
            cancellationToken).ConfigureAwait(false);
        return list.Sessions;
    }

    /// <summary>Deletes a session by id.</summary>
    /// <param name="sessionId">The session id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when deleted; <see langword="false"/> when it was already gone.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<bool> DeleteSessionAsync(string sessionId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(sessionId);
        try
        {
            await Connection.CallAsync((api, ct) => api.DeleteSessionAsync(sessionId, ct), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (SessionNotFoundException)
        {
            return false;
        }
    }

    /// <summary>Deletes a user's persistent storage (the files kept across that user's sessions).</summary>
    /// <param name="userId">The end user.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the storage is deleted.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual Task DeleteUserStorageAsync(string userId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        return Connection.CallAsync((api, ct) => api.DeleteUserStorageAsync(userId, ct), cancellationToken);
    }

    /// <summary>
    /// Asks the server whether it can run sandboxes (engine reachable, image present). An unhealthy server is a result
    /// (<see cref="HealthReport.Status"/> is <c>unhealthy</c>), not an exception. The probe is sent once, without retries.
    /// </summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The server's report.</returns>
    /// <exception cref="SandboxException">The server could not be reached or did not answer with a health report.</exception>
    public virtual async Task<HealthReport> GetHealthAsync(CancellationToken cancellationToken = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, "healthz");
        request.Options.Set(SandboxRequestOptions.NoRetry, true);
        using var response = await Connection.SendAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken, throwOnFailure: false)
            .ConfigureAwait(false);
        if (response.IsSuccessStatusCode || response.StatusCode == HttpStatusCode.ServiceUnavailable)
        {
            try
            {
                return await SandboxConnection.ReadJsonAsync(response, SandboxJsonContext.Default.HealthReport, cancellationToken)
                    .ConfigureAwait(false);
            }
            catch (SandboxException) when (!response.IsSuccessStatusCode)
            {
                // A 503 without a report (e.g. from a proxy): report the 503 itself below.
            }
        }

        throw await ProblemDetailsMapper.CreateExceptionAsync(response, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Releases the HTTP resources of a directly constructed client. A client from DI is owned by the container.
    /// Sessions of a disposed client can no longer be used.</summary>
    public void Dispose()
    {
        Dispose(disposing: true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases resources.</summary>
    /// <param name="disposing">True when called from <see cref="Dispose()"/>.</param>
    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            _connection?.Dispose();
        }
    }
}
