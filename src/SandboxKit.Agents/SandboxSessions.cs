using System.Collections.Concurrent;
using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Agents;

/// <summary>
/// Gives each of an application's end users their own sandbox session, so tools never deal with session ids.
/// <see cref="UserSandboxSessionProvider"/> is the default; implement this to keep sessions elsewhere.
/// </summary>
public interface ISandboxSessionProvider
{
    /// <summary>Gets the user's session, creating one when the user has none.</summary>
    /// <param name="userId">The application's own id for the end user (never a value a model chose).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The session. Callers must not dispose it: the provider owns it.</returns>
    /// <exception cref="SandboxException">No session could be found or created.</exception>
    ValueTask<SandboxSession> GetSessionAsync(string userId, CancellationToken cancellationToken = default);

    /// <summary>Forgets a session that turned out to be gone (expired or deleted), so the next call makes a new one.</summary>
    /// <param name="userId">The user.</param>
    /// <param name="session">The session that is gone.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the session is forgotten.</returns>
    ValueTask InvalidateAsync(string userId, SandboxSession session, CancellationToken cancellationToken = default);
}

/// <summary>Options of <see cref="UserSandboxSessionProvider"/>.</summary>
public sealed class UserSandboxSessionProviderOptions
{
    /// <summary>Settings for sessions the provider creates (image, limits, timeouts, metadata); the user id is filled in.</summary>
    public CreateSessionRequest? SessionTemplate { get; set; }

    /// <summary>
    /// Delete the cached sessions when the provider is disposed. Off by default: a user's session then outlives the application
    /// and is found again by the next one, until the server's idle timeout removes it.
    /// </summary>
    public bool DeleteSessionsOnDispose { get; set; }
}

/// <summary>
/// One sandbox per end user, backed by <see cref="SandboxClient.GetOrCreateSessionForUserAsync"/>: the user's live session is
/// reused (also across application restarts), cached in memory, and replaced by a new one when the server reports it gone.
/// Sessions of a user id get that user's persistent storage on the server.
/// </summary>
/// <remarks>
/// Thread-safe; concurrent first calls for one user create one session. The provider keeps a small entry per user id it has
/// seen, for its lifetime; the sessions themselves end with the server's idle timeout, or on <see cref="DeleteSessionAsync"/>.
/// </remarks>
public sealed class UserSandboxSessionProvider : ISandboxSessionProvider, IAsyncDisposable
{
    private readonly SandboxClient _client;
    private readonly CreateSessionRequest? _template;
    private readonly bool _deleteOnDispose;
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private int _disposed;

    /// <summary>Creates the provider.</summary>
    /// <param name="client">The client; not disposed by the provider.</param>
    /// <param name="options">Options; <see langword="null"/> for the defaults.</param>
    public UserSandboxSessionProvider(SandboxClient client, UserSandboxSessionProviderOptions? options = null)
    {
        _client = client ?? throw new ArgumentNullException(nameof(client));
        _template = options?.SessionTemplate;
        _deleteOnDispose = options?.DeleteSessionsOnDispose ?? false;
    }

    /// <inheritdoc />
    /// <exception cref="ObjectDisposedException">The provider was disposed.</exception>
    public async ValueTask<SandboxSession> GetSessionAsync(string userId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var entry = _entries.GetOrAdd(userId, _ => new Entry());
        await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (entry.Session is { } cached)
            {
                return cached;
            }
            var template = _template is null ? null : _template with { UserId = userId };
            var session = await _client.GetOrCreateSessionForUserAsync(userId, template, cancellationToken).ConfigureAwait(false);
            entry.Session = session;
            return session;
        }
        finally
        {
            entry.Lock.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask InvalidateAsync(string userId, SandboxSession session, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        ArgumentNullException.ThrowIfNull(session);
        if (!_entries.TryGetValue(userId, out var entry))
        {
            return;
        }
        await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (entry.Session is { } cached && cached.Id == session.Id)
            {
                entry.Session = null;
            }
        }
        finally
        {
            entry.Lock.Release();
        }
        // It is gone on the server: disposing must not try to delete it again.
        session.Detach();
    }

    /// <summary>Deletes the user's cached session on the server (e.g. "reset my sandbox"); the next call creates a new one.</summary>
    /// <param name="userId">The user.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>True when a session was deleted.</returns>
    /// <exception cref="SandboxException">The server could not delete it.</exception>
    public async Task<bool> DeleteSessionAsync(string userId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        if (!_entries.TryGetValue(userId, out var entry))
        {
            return false;
        }
        await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (entry.Session is not { } session)
            {
                return false;
            }
            entry.Session = null;
            return await session.DeleteAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            entry.Lock.Release();
        }
    }

    /// <summary>
    /// Forgets every cached session; deletes them on the server when <see cref="UserSandboxSessionProviderOptions.DeleteSessionsOnDispose"/>
    /// is set (failures are swallowed: the server's idle timeout removes what is left). Safe to call twice.
    /// </summary>
    /// <returns>A task that completes when done.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        foreach (var entry in _entries.Values)
        {
            var session = entry.Session;
            entry.Session = null;
            if (session is null)
            {
                continue;
            }
            if (!_deleteOnDispose)
            {
                session.Detach();
            }
            await session.DisposeAsync().ConfigureAwait(false);
        }
        _entries.Clear();
    }

    private sealed class Entry
    {
        public SemaphoreSlim Lock { get; } = new(1, 1);

        public SandboxSession? Session { get; set; }
    }
}

/// <summary>
/// The end user the sandbox tools act for, carried with the async flow. Set it around a chat call with
/// <see cref="BeginScope"/> when one set of tools serves many users.
/// </summary>
/// <remarks>
/// The user id is never taken from tool arguments: those come from the model, and a prompt could otherwise reach another user's sandbox.
/// </remarks>
public static class SandboxUserContext
{
    private static readonly AsyncLocal<string?> Current = new();

    /// <summary>The user of the current async flow, or <see langword="null"/>.</summary>
    public static string? CurrentUserId => Current.Value;

    /// <summary>Sets the user for the current async flow until the returned scope is disposed.</summary>
    /// <param name="userId">The application's id for the end user.</param>
    /// <returns>Disposing it restores the previous user.</returns>
    public static IDisposable BeginScope(string userId)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        var previous = Current.Value;
        Current.Value = userId;
        return new Scope(previous);
    }

    private sealed class Scope(string? previous) : IDisposable
    {
        private bool _disposed;

        public void Dispose()
        {
            if (!_disposed)
            {
                _disposed = true;
                Current.Value = previous;
            }
        }
    }
}
