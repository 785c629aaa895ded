using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

// The code interpreter: cells run in live Python and JavaScript interpreters ("contexts") whose state persists from cell to
// cell, with rich results (Jupyter mime bundles: text, HTML, images); and the contexts themselves.
public partial class SandboxSession
{
    // ---------------------------------------------------------------- code cells

    /// <summary>
    /// Runs a cell of code and waits for it to finish. Python and JavaScript run in a live interpreter of the session (by
    /// default the language's default context, made on first use), so variables, imports and functions persist to the next
    /// cell; the value of the last expression and every figure or <c>display()</c> come back as <see cref="CodeResult.Results"/>.
    /// Bash runs in the session's shell, as <see cref="ExecuteAsync"/> does.
    /// </summary>
    /// <param name="code">Source text, e.g. <c>x = 21</c>, then <c>x * 2</c>.</param>
    /// <param name="language"><see cref="CodeLanguages.Python"/> (the default), <see cref="CodeLanguages.JavaScript"/> or <see cref="CodeLanguages.Bash"/>.</param>
    /// <param name="options">Context, timeout; stdin and environment for bash.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The result; an exception raised by the cell is <see cref="CodeResult.Error"/>, not a .NET exception.</returns>
    /// <exception cref="ArgumentException">The code is null, or the arguments look swapped (the code first, then the language).</exception>
    /// <exception cref="SessionNotFoundException">The session expired or was deleted.</exception>
    /// <exception cref="SandboxException">The image lacks the interpreter (422 <c>language_unavailable</c>), the context does not
    /// exist (404 <see cref="SandboxErrorCodes.NotFound"/>) or runs another cell (409 <see cref="SandboxErrorCodes.Conflict"/>), or the call failed.</exception>
    /// <remarks>The HTTP call may take the cell's timeout plus <see cref="SandboxClientOptions.CommandTimeoutMargin"/>. Retries carry
    /// the same idempotency key.</remarks>
    public virtual Task<CodeResult> RunCodeAsync(
        string code,
        string language = CodeLanguages.Python,
        RunCodeOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return RunCodeCoreAsync(Connection, Id, code, language, options, cancellationToken);
    }

    /// <summary>
    /// Runs a cell of code and yields its events as they happen: <c>stdout</c>/<c>stderr</c> text, each rich result
    /// (<c>result</c>), the cell's exception (<c>error</c>: the cell failed, the stream goes on), and finally one <c>exited</c>
    /// whose <see cref="CodeEvent.Result"/> is the whole result. Keep-alive events are consumed, not yielded.
    /// </summary>
    /// <param name="code">Source text.</param>
    /// <param name="language"><see cref="CodeLanguages.Python"/> (the default), <see cref="CodeLanguages.JavaScript"/> or <see cref="CodeLanguages.Bash"/>.</param>
    /// <param name="options">Context, timeout; stdin and environment for bash.</param>
    /// <param name="cancellationToken">Stops reading.</param>
    /// <returns>The events, ending with <c>exited</c>.</returns>
    /// <exception cref="SandboxException">The call failed, the stream failed (<see cref="SandboxErrorCodes.StreamError"/>), or it
    /// ended before <c>exited</c>.</exception>
    /// <remarks>Failures before the stream starts are retried like any call; once events flow, a broken connection is not retried.</remarks>
    public virtual IAsyncEnumerable<CodeEvent> RunCodeStreamAsync(
        string code,
        string language = CodeLanguages.Python,
        RunCodeOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return StreamCodeCoreAsync(Connection, Id, code, language, options, cancellationToken);
    }

    // ---------------------------------------------------------------- code contexts

    /// <summary>Starts a new live interpreter in the session, separate from the default one and from every other context.</summary>
    /// <param name="language"><see cref="CodeLanguages.Python"/> (the default) or <see cref="CodeLanguages.JavaScript"/>.</param>
    /// <param name="cwd">Its working directory (relative to <c>/workspace</c>); the session's when null.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The context; disposing it deletes it.</returns>
    /// <exception cref="SandboxException">The image lacks the interpreter (422), the session has its maximum of contexts (409),
    /// or the call failed.</exception>
    public virtual async Task<SandboxCodeContext> CreateCodeContextAsync(
        string language = CodeLanguages.Python,
        string? cwd = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(language);
        ThrowIfDisposed();
        var connection = Connection;
        var request = new CreateContextRequest { Language = language, Cwd = cwd };
        var info = await connection.CallAsync((api, ct) => api.CreateContextAsync(Id, request, ct), cancellationToken).ConfigureAwait(false);
        return new SandboxCodeContext(connection, Id, info);
    }

    /// <summary>Gets a handle to an existing context, e.g. <c>default-python</c> (which exists once a Python cell ran without a context).</summary>
    /// <param name="contextId">The context id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The context with its current state; disposing the handle deletes the context.</returns>
    /// <exception cref="SandboxException">It does not exist (404 <see cref="SandboxErrorCodes.NotFound"/>) or the call failed.</exception>
    public virtual async Task<SandboxCodeContext> GetCodeContextAsync(string contextId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(contextId);
        ThrowIfDisposed();
        var connection = Connection;
        var info = await connection.CallAsync((api, ct) => api.GetContextAsync(Id, contextId, ct), cancellationToken).ConfigureAwait(false);
        return new SandboxCodeContext(connection, Id, info);
    }

    /// <summary>Lists the session's code contexts, the default ones included.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Their states, oldest first (use <see cref="GetCodeContextAsync"/> for a handle to one).</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<IReadOnlyList<CodeContext>> ListCodeContextsAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var list = await Connection.CallAsync((api, ct) => api.ListContextsAsync(Id, ct), cancellationToken).ConfigureAwait(false);
        return list.Contexts;
    }

    // ---------------------------------------------------------------- shared with SandboxCodeContext

    internal static async Task<CodeResult> RunCodeCoreAsync(
        SandboxConnection connection, string sessionId, string code, string language, RunCodeOptions? options, CancellationToken cancellationToken)
    {
        var request = BuildRunCodeRequest(code, language, options);
        var attemptTimeout = connection.Options.CommandAttemptTimeout(options?.Timeout);
        var result = await connection.CallAsync(
            (api, ct) => api.RunCodeAsync(sessionId, request, options?.IdempotencyKey, attemptTimeout, ct),
            cancellationToken).ConfigureAwait(false);
        return new CodeResult(result);
    }

    internal static IAsyncEnumerable<CodeEvent> StreamCodeCoreAsync(
        SandboxConnection connection, string sessionId, string code, string language, RunCodeOptions? options, CancellationToken cancellationToken)
    {
        // Validated now, not at the first MoveNextAsync.
        var request = BuildRunCodeRequest(code, language, options);
        return StreamCodeEventsAsync(connection, sessionId, request, options?.IdempotencyKey, cancellationToken);
    }

    private static async IAsyncEnumerable<CodeEvent> StreamCodeEventsAsync(
        SandboxConnection connection, string sessionId, RunCodeRequest body, string? idempotencyKey,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var events = PostEventStreamAsync(connection, $"v1/sessions/{Uri.EscapeDataString(sessionId)}/code/stream",
            SandboxConnection.JsonBody(body, SandboxJsonContext.Default.RunCodeRequest), idempotencyKey, cancellationToken);
        await foreach (var commandEvent in events.ConfigureAwait(false))
        {
            // An error with the cell's exception is the cell failing (the stream goes on to exited); one without is the stream failing.
            if (commandEvent.Type == CommandEventTypes.Error && commandEvent.Exception is null)
            {
                throw new SandboxException(
                    $"The code stream of session {sessionId} failed: {commandEvent.Error ?? "(no detail)"}",
                    status: null,
                    SandboxErrorCodes.StreamError,
                    detail: commandEvent.Error);
            }

            if (commandEvent.Type == CommandEventTypes.Exited && commandEvent.Result is null)
            {
                throw new SandboxException(
                    $"The code stream of session {sessionId} ended with an exited event without a result.",
                    status: null,
                    SandboxErrorCodes.InvalidResponse);
            }

            yield return new CodeEvent(commandEvent);

            if (commandEvent.Type == CommandEventTypes.Exited)
            {
                yield break;
            }
        }

        throw new SandboxException(
            $"The code stream of session {sessionId} ended before the cell finished.",
            status: null,
            SandboxErrorCodes.StreamError);
    }

    private static RunCodeRequest BuildRunCodeRequest(string code, string language, RunCodeOptions? options)
    {
        ArgumentNullException.ThrowIfNull(code);
        ArgumentException.ThrowIfNullOrWhiteSpace(language);
        if (!IsLanguageName(language) && IsLanguageName(code))
        {
            // RunCodeAsync(language, code) was the order before the code interpreter: catch it rather than run "python" as code.
            throw new ArgumentException(
                $"'{language}' is not a language, but the code is '{code}': RunCodeAsync takes the code first, then the language.",
                nameof(language));
        }

        return new RunCodeRequest
        {
            Language = language,
            Code = code,
            ContextId = options?.ContextId,
            TimeoutSeconds = ToSeconds(options?.Timeout, "options.Timeout"),
            Stdin = options?.Stdin,
            Environment = options?.Environment,
        };
    }

    private static bool IsLanguageName(string value) => value.Trim().ToLowerInvariant() is
        "python" or "python3" or "py" or "javascript" or "js" or "node" or "nodejs" or "bash" or "sh" or "shell";
}
