using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// A live Python or JavaScript interpreter in a session: its variables, imports and functions persist from cell to cell.
/// Get one from <see cref="SandboxSession.CreateCodeContextAsync"/> or <see cref="SandboxSession.GetCodeContextAsync"/>.
/// </summary>
/// <remarks>
/// <para>One cell runs at a time in a context; a second concurrent cell is refused (409 <see cref="SandboxErrorCodes.Conflict"/>).
/// Use several contexts to run cells in parallel.</para>
/// <para><b>Disposal deletes the context</b> (its interpreter is stopped). <see cref="DisposeAsync"/> is safe to call more than
/// once and never throws: a context that is already gone is fine, and other failures are swallowed, since the session's end
/// removes its contexts anyway. Call <see cref="DeleteAsync"/> to see failures.</para>
/// </remarks>
public class SandboxCodeContext : IAsyncDisposable
{
    private readonly SandboxConnection? _connection;
    private readonly string _sessionId = string.Empty;
    private CodeContext _info = null!;
    private int _disposed;

    /// <summary>For mocking frameworks only; members of an instance made this way do nothing useful until overridden.</summary>
    protected SandboxCodeContext()
    {
    }

    internal SandboxCodeContext(SandboxConnection connection, string sessionId, CodeContext info)
    {
        _connection = connection;
        _sessionId = sessionId;
        _info = info;
    }

    /// <summary>The context id, e.g. <c>ctx-…</c>, or <c>default-python</c> for the language's default context.</summary>
    public virtual string Id => Info.Id;

    /// <summary><c>python</c> or <c>javascript</c>.</summary>
    public virtual string Language => Info.Language;

    /// <summary>The session it belongs to.</summary>
    public virtual string SessionId => _sessionId;

    /// <summary>The context as last reported by the server (updated by <see cref="RefreshAsync"/>, <see cref="RestartAsync"/>
    /// and <see cref="InterruptAsync"/>).</summary>
    public virtual CodeContext Info => Volatile.Read(ref _info);

    private SandboxConnection Connection =>
        _connection ?? throw new InvalidOperationException("This SandboxCodeContext was created for mocking and has no connection.");

    /// <summary>Runs a cell in this context and waits for it to finish.</summary>
    /// <param name="code">Source text; the value of its last expression comes back as <see cref="CodeResult.MainResult"/>.</param>
    /// <param name="timeout">Time after which the cell is interrupted (the variables are kept); the server's default when null.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The result; an exception in the cell is <see cref="CodeResult.Error"/>, not a .NET exception.</returns>
    /// <exception cref="SandboxException">The context is gone (404), busy with another cell (409), or the call failed.</exception>
    public virtual Task<CodeResult> RunAsync(string code, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return SandboxSession.RunCodeCoreAsync(Connection, SessionId, code, Language, new RunCodeOptions { ContextId = Id, Timeout = timeout }, cancellationToken);
    }

    /// <summary>Runs a cell in this context and yields its events as they happen, ending with <c>exited</c>.</summary>
    /// <param name="code">Source text.</param>
    /// <param name="timeout">Time after which the cell is interrupted; the server's default when null.</param>
    /// <param name="cancellationToken">Stops reading.</param>
    /// <returns>The events.</returns>
    /// <exception cref="SandboxException">The call failed or the stream broke (<see cref="SandboxErrorCodes.StreamError"/>).</exception>
    public virtual IAsyncEnumerable<CodeEvent> RunStreamAsync(string code, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return SandboxSession.StreamCodeCoreAsync(Connection, SessionId, code, Language, new RunCodeOptions { ContextId = Id, Timeout = timeout }, cancellationToken);
    }

    /// <summary>Replaces the interpreter with a fresh one: every variable is gone, the context id stays.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The context's new state (also stored in <see cref="Info"/>).</returns>
    /// <exception cref="SandboxException">The context is gone (404) or the call failed.</exception>
    public virtual async Task<CodeContext> RestartAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var info = await Connection.CallAsync((api, ct) => api.RestartContextAsync(SessionId, Id, ct), cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Interrupts the running cell (Python: <c>KeyboardInterrupt</c>); its result then has <see cref="CodeResult.Interrupted"/>.
    /// The variables are kept unless the cell does not stop within 3 s, when the interpreter is killed. Nothing happens when
    /// no cell is running.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The context's state after the interrupt (also stored in <see cref="Info"/>).</returns>
    /// <exception cref="SandboxException">The context is gone (404) or the call failed.</exception>
    public virtual async Task<CodeContext> InterruptAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var info = await Connection.CallAsync((api, ct) => api.InterruptContextAsync(SessionId, Id, ct), cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Reloads the context's state: <c>idle</c>, <c>busy</c>, <c>starting</c> or <c>dead</c>, and its execution count.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The state (also stored in <see cref="Info"/>).</returns>
    /// <exception cref="SandboxException">The context is gone (404) or the call failed.</exception>
    public virtual async Task<CodeContext> RefreshAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var info = await Connection.CallAsync((api, ct) => api.GetContextAsync(SessionId, Id, ct), cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Stops the interpreter and deletes the context now. Unlike <see cref="DisposeAsync"/>, failures are thrown.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when deleted; <see langword="false"/> when it was already gone.</returns>
    /// <exception cref="SandboxException">The server refused or could not be reached.</exception>
    public virtual async Task<bool> DeleteAsync(CancellationToken cancellationToken = default)
    {
        bool deleted;
        try
        {
            await Connection.CallAsync((api, ct) => api.DeleteContextAsync(SessionId, Id, ct), cancellationToken).ConfigureAwait(false);
            deleted = true;
        }
        catch (SandboxException e) when (IsGone(e))
        {
            deleted = false;
        }

        Interlocked.Exchange(ref _disposed, 1);
        return deleted;
    }

    /// <summary>Deletes the context once; never throws (see the remarks on <see cref="SandboxCodeContext"/>).</summary>
    /// <returns>A task that completes when the context is deleted or the attempt has failed.</returns>
    public async ValueTask DisposeAsync()
    {
        await DisposeAsyncCore().ConfigureAwait(false);
        GC.SuppressFinalize(this);
    }

    /// <summary>Deletes the context once; override to add cleanup, and call the base implementation.</summary>
    /// <returns>A task that completes when cleanup is done.</returns>
    protected virtual async ValueTask DisposeAsyncCore()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0 || _connection is null)
        {
            return;
        }

        try
        {
            await _connection.CallAsync((api, ct) => api.DeleteContextAsync(SessionId, Id, ct), CancellationToken.None).ConfigureAwait(false);
        }
        catch (SandboxException e) when (IsGone(e))
        {
            // Already gone, or its session is: nothing to delete.
        }
        catch (Exception ex)
        {
            // Disposal must not throw: it would hide the exception that ended an `await using` block.
            Log.CodeContextDeleteFailed(_connection.Logger, ex, Id, SessionId);
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"SandboxCodeContext {Id} ({Language}, {Info.Status}) in session {SessionId}";

    private static bool IsGone(SandboxException e) =>
        e is SessionNotFoundException || e.Code == SandboxErrorCodes.NotFound;

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
}
