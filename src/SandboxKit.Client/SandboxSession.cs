using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// One sandbox (one container) on the server, with its shell state: the working directory and exported variables
/// a command leaves are there for the next one. Get one from <see cref="SandboxClient.CreateSessionAsync"/>,
/// <see cref="SandboxClient.GetOrCreateSessionForUserAsync"/> or <see cref="SandboxClient.AttachSessionAsync"/>.
/// </summary>
/// <remarks>
/// <para>All members are safe to call concurrently. Commands of one session share its shell state, so concurrent
/// commands that change directory or variables race as they would in one shell.</para>
/// <para><b>Disposal deletes the session.</b> <see cref="DisposeAsync"/> sends one <c>DELETE</c>; it is safe to call
/// more than once and never throws: a session that is already gone (expired, deleted) is fine, and any other failure
/// (server unreachable, timeout) is logged as a warning and swallowed, since the server removes idle sessions by itself
/// and an exception from <c>await using</c> would hide the one that ended the block. Call <see cref="DeleteAsync"/>
/// to see failures, or <see cref="Detach"/> to keep the session alive after disposal (e.g. to reuse it per user).</para>
/// </remarks>
public partial class SandboxSession : IAsyncDisposable
{
    private readonly SandboxConnection? _connection;
    private readonly string _id = string.Empty;
    private SessionInfo _info = null!;
    private int _disposed;
    private volatile bool _detached;

    /// <summary>For mocking frameworks only; members of an instance made this way do nothing useful until overridden.</summary>
    protected SandboxSession()
    {
    }

    internal SandboxSession(SandboxConnection connection, SessionInfo info)
    {
        _connection = connection;
        _id = info.Id;
        _info = info;
    }

    /// <summary>The session id.</summary>
    public virtual string Id => _id;

    /// <summary>The session as last reported by the server (updated by <see cref="RefreshAsync"/> and <see cref="KeepAliveAsync"/>).</summary>
    public virtual SessionInfo Info => Volatile.Read(ref _info);

    /// <summary>True once <see cref="Detach"/> was called: disposal will not delete the session.</summary>
    public virtual bool IsDetached => _detached;

    private SandboxConnection Connection =>
        _connection ?? throw new InvalidOperationException("This SandboxSession was created for mocking and has no connection.");

    // ---------------------------------------------------------------- commands

    /// <summary>Runs a bash command in the session's shell state and waits for it to finish.</summary>
    /// <param name="command">Bash script text, e.g. <c>ls -la</c> or <c>cd src &amp;&amp; make</c>.</param>
    /// <param name="options">Timeout, stdin, environment, working directory, stderr merging.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The result; a non-zero exit code is a normal result (see <see cref="CommandResult.EnsureSuccess"/>).</returns>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    /// <exception cref="SandboxException">The server refused the call or could not be reached after retries.</exception>
    /// <remarks>The HTTP call may take the command's timeout plus <see cref="SandboxClientOptions.CommandTimeoutMargin"/>.
    /// Retries carry the same idempotency key, so the command never runs twice.</remarks>
    public virtual async Task<CommandResult> ExecuteAsync(
        string command,
        ExecuteOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var request = BuildExecuteRequest(command, options);
        var connection = Connection;
        var attemptTimeout = connection.Options.CommandAttemptTimeout(options?.Timeout);
        var result = await connection.CallAsync(
            (api, ct) => api.ExecuteAsync(Id, request, options?.IdempotencyKey, attemptTimeout, ct),
            cancellationToken).ConfigureAwait(false);
        return new CommandResult(result);
    }

    /// <summary>
    /// Runs a bash command and yields its events as they happen: <c>started</c>, then <c>stdout</c>/<c>stderr</c>
    /// chunks, then one <c>exited</c> whose <see cref="CommandEvent.Result"/> holds the result (wrap it in
    /// <see cref="CommandResult(ExecuteResult)"/> if you like). Keep-alive events are consumed, not yielded.
    /// </summary>
    /// <param name="command">Bash script text.</param>
    /// <param name="options">Timeout, stdin, environment, working directory, stderr merging.</param>
    /// <param name="cancellationToken">Stops reading; disconnecting kills the command on the server.</param>
    /// <returns>The events, ending with <c>exited</c>.</returns>
    /// <exception cref="SandboxException">The call failed, the stream reported an <c>error</c> event or ended before
    /// <c>exited</c> (<see cref="SandboxErrorCodes.StreamError"/>).</exception>
    /// <remarks>Failures before the stream starts are retried like any call; once events flow, a broken connection is not
    /// retried (the command is killed when the connection drops).</remarks>
    public virtual async IAsyncEnumerable<CommandEvent> StreamAsync(
        string command,
        ExecuteOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var body = BuildExecuteRequest(command, options);
        var events = PostEventStreamAsync(Connection, SessionPath("commands/stream"),
            SandboxConnection.JsonBody(body, SandboxJsonContext.Default.ExecuteRequest), options?.IdempotencyKey, cancellationToken);
        await foreach (var commandEvent in events.ConfigureAwait(false))
        {
            if (commandEvent.Type == CommandEventTypes.Error)
            {
                throw new SandboxException(
                    $"The command stream of session {Id} failed: {commandEvent.Error ?? "(no detail)"}",
                    status: null,
                    SandboxErrorCodes.StreamError,
                    detail: commandEvent.Error);
            }

            yield return commandEvent;

            if (commandEvent.Type == CommandEventTypes.Exited)
            {
                yield break;
            }
        }

        throw new SandboxException(
            $"The command stream of session {Id} ended before the command exited.",
            status: null,
            SandboxErrorCodes.StreamError);
    }

    /// <summary>
    /// POSTs a request answered with Server-Sent Events and yields its events, keepalives left out; transport and parse
    /// failures become <see cref="SandboxException"/>s. What an error or exited event means is the caller's.
    /// </summary>
    internal static async IAsyncEnumerable<CommandEvent> PostEventStreamAsync(
        SandboxConnection connection, string path, HttpContent content, string? idempotencyKey,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        if (idempotencyKey is not null)
        {
            request.Headers.TryAddWithoutValidation(SandboxRequestOptions.IdempotencyKeyHeader, idempotencyKey);
        }

        using var response = await connection.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken)
            .ConfigureAwait(false);
        var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        await using var streamScope = stream.ConfigureAwait(false);
        var events = ServerSentEventReader.ReadAsync(stream, cancellationToken).GetAsyncEnumerator(cancellationToken);
        await using var eventsScope = events.ConfigureAwait(false);

        while (true)
        {
            CommandEvent? commandEvent;
            try
            {
                if (!await events.MoveNextAsync().ConfigureAwait(false))
                {
                    yield break;
                }

                commandEvent = ParseEvent(events.Current);
            }
            catch (Exception ex) when (SandboxConnection.Translate(ex, cancellationToken) is { } translated)
            {
                throw translated;
            }

            if (commandEvent is not null && commandEvent.Type != CommandEventTypes.KeepAlive)
            {
                yield return commandEvent;
            }
        }
    }

    // ---------------------------------------------------------------- background processes

    /// <summary>Starts a command in the background and returns at once.</summary>
    /// <param name="command">Bash script text.</param>
    /// <param name="options">Timeout, stdin, environment.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A handle to read output, send input, wait for or kill the process.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<SandboxProcess> StartProcessAsync(
        string command,
        StartProcessOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(command);
        ThrowIfDisposed();
        var request = new StartProcessRequest
        {
            Command = command,
            TimeoutSeconds = ToSeconds(options?.Timeout, "options.Timeout"),
            KeepStdinOpen = options?.KeepStdinOpen ?? false,
            Environment = options?.Environment,
        };
        var connection = Connection;
        var info = await connection.CallAsync(
            (api, ct) => api.StartProcessAsync(Id, request, options?.IdempotencyKey, ct),
            cancellationToken).ConfigureAwait(false);
        return new SandboxProcess(connection, Id, info);
    }

    /// <summary>Lists the session's background processes, running and exited.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Handles to the processes.</returns>
    public virtual async Task<IReadOnlyList<SandboxProcess>> ListProcessesAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var connection = Connection;
        var list = await connection.CallAsync((api, ct) => api.ListProcessesAsync(Id, ct), cancellationToken).ConfigureAwait(false);
        return list.Processes.Select(p => new SandboxProcess(connection, Id, p)).ToArray();
    }

    /// <summary>Gets a handle to a background process by its id.</summary>
    /// <param name="processId">The process id (<see cref="ProcessInfo.Id"/>).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A handle with the process's current state.</returns>
    /// <exception cref="SandboxException">The process does not exist (404 <see cref="SandboxErrorCodes.NotFound"/>) or the call failed.</exception>
    public virtual async Task<SandboxProcess> GetProcessAsync(string processId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(processId);
        ThrowIfDisposed();
        var connection = Connection;
        var info = await connection.CallAsync((api, ct) => api.GetProcessAsync(Id, processId, ct), cancellationToken).ConfigureAwait(false);
        return new SandboxProcess(connection, Id, info);
    }

    // ---------------------------------------------------------------- terminals

    /// <summary>Opens a terminal: an interactive login shell (or <paramref name="command"/>) on a pseudo-terminal, attached.</summary>
    /// <param name="cols">Columns (1-1000).</param>
    /// <param name="rows">Rows (1-1000).</param>
    /// <param name="command">Bash script text to run instead of the login shell.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The attached terminal; disposing it closes it.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<SandboxTerminal> OpenTerminalAsync(int cols = 80, int rows = 24, string? command = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var connection = Connection;
        var info = await connection.CallAsync(
            (api, ct) => api.CreateTerminalAsync(Id, new CreateTerminalRequest { Cols = cols, Rows = rows, Command = command }, ct), cancellationToken).ConfigureAwait(false);
        return await SandboxTerminal.AttachAsync(connection, Id, info, since: 0, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Attaches to a terminal that is already open (another client's, or one left with <see cref="SandboxTerminal.DetachAsync"/>).</summary>
    /// <param name="terminalId">The terminal id.</param>
    /// <param name="since">Output offset to replay from (0: everything the server still keeps).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The attached terminal. Clients attached to one terminal share it: each sees all output and may type.</returns>
    /// <exception cref="SandboxException">It does not exist (404) or the call failed.</exception>
    public virtual async Task<SandboxTerminal> AttachTerminalAsync(string terminalId, long since = 0, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(terminalId);
        ThrowIfDisposed();
        var connection = Connection;
        var info = await connection.CallAsync((api, ct) => api.GetTerminalAsync(Id, terminalId, ct), cancellationToken).ConfigureAwait(false);
        return await SandboxTerminal.AttachAsync(connection, Id, info, since, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Lists the session's terminals.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Their descriptions, oldest first.</returns>
    public virtual async Task<IReadOnlyList<TerminalInfo>> ListTerminalsAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return (await Connection.CallAsync((api, ct) => api.ListTerminalsAsync(Id, ct), cancellationToken).ConfigureAwait(false)).Terminals;
    }

    // ---------------------------------------------------------------- files

    /// <summary>Writes text (UTF-8, no BOM) to a file in the sandbox, creating or replacing it.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="content">The text.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The written file.</returns>
    /// <exception cref="SandboxException">The call failed (e.g. <see cref="SandboxErrorCodes.PayloadTooLarge"/>).</exception>
    public virtual Task<FileEntry> WriteFileAsync(string path, string content, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(content);
        return WriteFileAsync(path, new ReadOnlyMemory<byte>(Encoding.UTF8.GetBytes(content)), cancellationToken);
    }

    /// <summary>Writes bytes to a file in the sandbox, creating or replacing it.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="content">The bytes (a <c>byte[]</c> converts implicitly).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The written file.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual Task<FileEntry> WriteFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken = default) =>
        UploadAsync(path, new ReadOnlyMemoryContent(content), replayable: true, cancellationToken);

    /// <summary>Writes a stream's remaining bytes to a file in the sandbox, creating or replacing it. The stream is not disposed.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="content">The data. A seekable stream is rewound for a retry; a non-seekable one is sent once, without retries.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The written file.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual Task<FileEntry> WriteFileAsync(string path, Stream content, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(content);
        return UploadAsync(path, new NonDisposingStreamContent(content), replayable: content.CanSeek, cancellationToken);
    }

    /// <summary>Reads a whole file from the sandbox into memory. Use <see cref="DownloadAsync"/> for large files.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The file's bytes.</returns>
    /// <exception cref="SandboxException">The file does not exist (404 <see cref="SandboxErrorCodes.NotFound"/>) or the call failed.</exception>
    public virtual async Task<byte[]> ReadFileAsync(string path, CancellationToken cancellationToken = default)
    {
        using var request = CreateFileRequest(HttpMethod.Get, "files", path);
        using var response = await Connection.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken)
            .ConfigureAwait(false);
        try
        {
            return await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (SandboxConnection.Translate(ex, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>Reads a whole file from the sandbox as UTF-8 text.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The text (invalid UTF-8 becomes U+FFFD; a leading BOM is dropped).</returns>
    /// <exception cref="SandboxException">The file does not exist or the call failed.</exception>
    public virtual async Task<string> ReadTextAsync(string path, CancellationToken cancellationToken = default)
    {
        var bytes = await ReadFileAsync(path, cancellationToken).ConfigureAwait(false);
        var span = bytes.AsSpan();
        if (span.StartsWith(Encoding.UTF8.Preamble))
        {
            span = span[Encoding.UTF8.Preamble.Length..];
        }

        return Encoding.UTF8.GetString(span);
    }

    /// <summary>Copies a file from the sandbox into <paramref name="destination"/> without holding it in memory.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="destination">Where to write; not disposed.</param>
    /// <param name="cancellationToken">Cancels the copy.</param>
    /// <returns>The number of bytes copied.</returns>
    /// <exception cref="SandboxException">The file does not exist or the call failed.</exception>
    public virtual async Task<long> DownloadAsync(string path, Stream destination, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        using var request = CreateFileRequest(HttpMethod.Get, "files", path);
        using var response = await Connection.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken)
            .ConfigureAwait(false);
        Stream source;
        try
        {
            source = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (SandboxConnection.Translate(ex, cancellationToken) is { } translated)
        {
            throw translated;
        }

        await using (source.ConfigureAwait(false))
        {
            var buffer = new byte[81920];
            long total = 0;
            while (true)
            {
                int read;
                try
                {
                    read = await source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (SandboxConnection.Translate(ex, cancellationToken) is { } translated)
                {
                    // A broken download is the server's or the network's failure...
                    throw translated;
                }

                if (read == 0)
                {
                    return total;
                }

                // ...while a failure to write the caller's destination surfaces as it is.
                await destination.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                total += read;
            }
        }
    }

    /// <summary>Lists a directory in the sandbox.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>. Defaults to <c>/workspace</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The entries, sorted by name.</returns>
    /// <exception cref="SandboxException">The directory does not exist or the call failed.</exception>
    public virtual async Task<IReadOnlyList<FileEntry>> ListFilesAsync(string path = "/workspace", CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ThrowIfDisposed();
        var list = await Connection.CallAsync((api, ct) => api.ListFilesAsync(Id, path, ct), cancellationToken).ConfigureAwait(false);
        return list.Entries;
    }

    /// <summary>Deletes a file or directory in the sandbox.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="recursive">Delete a non-empty directory with its contents.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the entry is gone.</returns>
    /// <exception cref="SandboxException">The entry does not exist (404 <see cref="SandboxErrorCodes.NotFound"/>) or the call failed.</exception>
    public virtual Task DeleteFileAsync(string path, bool recursive = false, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ThrowIfDisposed();
        var recursiveText = recursive ? "true" : "false";
        return Connection.CallAsync((api, ct) => api.DeleteFileAsync(Id, path, recursiveText, ct), cancellationToken);
    }

    /// <summary>Creates a directory (and its parents) in the sandbox.</summary>
    /// <param name="path">Absolute path, or relative to <c>/workspace</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The directory.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual Task<FileEntry> CreateDirectoryAsync(string path, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ThrowIfDisposed();
        return Connection.CallAsync((api, ct) => api.CreateDirectoryAsync(Id, path, ct), cancellationToken);
    }

    // ---------------------------------------------------------------- lifecycle

    /// <summary>Extends the session's idle deadline.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The session's new state (also stored in <see cref="Info"/>).</returns>
    /// <exception cref="SessionNotFoundException">The session already expired or was deleted.</exception>
    public virtual async Task<SessionInfo> KeepAliveAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var info = await Connection.CallAsync((api, ct) => api.KeepAliveAsync(Id, ct), cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Reloads the session's state from the server.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The session's state (also stored in <see cref="Info"/>).</returns>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    public virtual async Task<SessionInfo> RefreshAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var info = await Connection.CallAsync((api, ct) => api.GetSessionAsync(Id, ct), cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Deletes the session and its container now. Unlike <see cref="DisposeAsync"/>, failures are thrown.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when deleted; <see langword="false"/> when it was already gone.</returns>
    /// <exception cref="SandboxException">The server refused or could not be reached.</exception>
    public virtual async Task<bool> DeleteAsync(CancellationToken cancellationToken = default)
    {
        var connection = Connection;
        bool deleted;
        try
        {
            await connection.CallAsync((api, ct) => api.DeleteSessionAsync(Id, ct), cancellationToken).ConfigureAwait(false);
            deleted = true;
        }
        catch (SessionNotFoundException)
        {
            deleted = false;
        }

        // The session is gone either way: nothing is left for DisposeAsync to delete. (After a failure it stays
        // undisposed, so DeleteAsync can be retried and DisposeAsync still tries once.)
        Interlocked.Exchange(ref _disposed, 1);
        return deleted;
    }

    /// <summary>Keeps the session on the server after this object is disposed (disposal then deletes nothing).
    /// Use it to hand the session id to a later <see cref="SandboxClient.AttachSessionAsync"/>.</summary>
    public virtual void Detach() => _detached = true;

    /// <summary>Deletes the session unless <see cref="Detach"/> was called. Safe to call more than once; sends at most one
    /// DELETE; never throws (see the remarks on <see cref="SandboxSession"/>).</summary>
    /// <returns>A task that completes when the session is deleted or the attempt has failed.</returns>
    public async ValueTask DisposeAsync()
    {
        await DisposeAsyncCore().ConfigureAwait(false);
        GC.SuppressFinalize(this);
    }

    /// <summary>Deletes the session once; override to add cleanup, and call the base implementation.</summary>
    /// <returns>A task that completes when cleanup is done.</returns>
    protected virtual async ValueTask DisposeAsyncCore()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0 || _detached || _connection is null)
        {
            return;
        }

        try
        {
            await _connection.CallAsync((api, ct) => api.DeleteSessionAsync(Id, ct), CancellationToken.None).ConfigureAwait(false);
        }
        catch (SessionNotFoundException)
        {
            Log.SessionAlreadyGone(_connection.Logger, Id);
        }
        catch (Exception ex)
        {
            // Disposal must not throw: it would hide the exception that ended an `await using` block.
            Log.DisposeDeleteFailed(_connection.Logger, Id, ex);
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"SandboxSession {Id}";

    // ---------------------------------------------------------------- helpers

    private ExecuteRequest BuildExecuteRequest(string command, ExecuteOptions? options)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(command);
        ThrowIfDisposed();
        return new ExecuteRequest
        {
            Command = command,
            TimeoutSeconds = ToSeconds(options?.Timeout, "options.Timeout"),
            Stdin = options?.Stdin,
            Environment = options?.Environment,
            WorkingDirectory = options?.WorkingDirectory,
            MergeStderr = options?.MergeStderr ?? false,
        };
    }

    private async Task<FileEntry> UploadAsync(string path, HttpContent content, bool replayable, CancellationToken cancellationToken)
    {
        using var request = CreateFileRequest(HttpMethod.Put, "files", path);
        request.Content = content;
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        var connection = Connection;
        request.Options.Set(SandboxRequestOptions.AttemptTimeout, connection.Options.FileTransferTimeout);
        if (!replayable)
        {
            request.Options.Set(SandboxRequestOptions.NoRetry, true);
        }

        using var response = await connection.SendAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken)
            .ConfigureAwait(false);
        return await SandboxConnection.ReadJsonAsync(response, SandboxJsonContext.Default.FileEntry, cancellationToken)
            .ConfigureAwait(false);
    }

    private HttpRequestMessage CreateFileRequest(HttpMethod method, string route, string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ThrowIfDisposed();
        return new HttpRequestMessage(method, SessionPath(route) + "?path=" + Uri.EscapeDataString(path));
    }

    private string SessionPath(string suffix) => $"v1/sessions/{Uri.EscapeDataString(Id)}/{suffix}";

    private static CommandEvent? ParseEvent(ServerSentEvent sse)
    {
        if (string.IsNullOrWhiteSpace(sse.Data))
        {
            return sse.EventType == CommandEventTypes.KeepAlive ? new CommandEvent { Type = CommandEventTypes.KeepAlive } : null;
        }

        return JsonSerializer.Deserialize(sse.Data, SandboxJsonContext.Default.CommandEvent);
    }

    internal static double? ToSeconds(TimeSpan? timeout, string parameterName)
    {
        if (timeout is not { } value)
        {
            return null;
        }

        if (value <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(parameterName, value, "A timeout must be positive.");
        }

        return value.TotalSeconds;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    /// <summary>StreamContent that leaves the caller's stream open.</summary>
    private sealed class NonDisposingStreamContent(Stream stream) : StreamContent(new NonClosingStream(stream));

    private sealed class NonClosingStream(Stream inner) : Stream
    {
        public override bool CanRead => inner.CanRead;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => false;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => inner.Position = value; }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            inner.ReadAsync(buffer, cancellationToken);
        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            inner.ReadAsync(buffer, offset, count, cancellationToken);
        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
