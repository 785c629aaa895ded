using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// Handle to a background process started with <see cref="SandboxSession.StartProcessAsync"/>.
/// The process lives on the server; this object only talks to it and may be dropped at any time.
/// </summary>
public class SandboxProcess
{
    /// <summary>Status of a process that is still running.</summary>
    public const string StatusRunning = "running";

    /// <summary>Status of a process that has ended.</summary>
    public const string StatusExited = "exited";

    private readonly SandboxConnection? _connection;
    private readonly string _sessionId = string.Empty;
    private ProcessInfo _info = null!;

    /// <summary>For mocking frameworks only.</summary>
    protected SandboxProcess()
    {
    }

    internal SandboxProcess(SandboxConnection connection, string sessionId, ProcessInfo info)
    {
        _connection = connection;
        _sessionId = sessionId;
        _info = info;
    }

    /// <summary>The process id within SandboxKit (not the Linux pid).</summary>
    public virtual string Id => Info.Id;

    /// <summary>The session the process runs in.</summary>
    public virtual string SessionId => _sessionId;

    /// <summary>The process as last reported by the server (updated by every call on this handle).</summary>
    public virtual ProcessInfo Info => Volatile.Read(ref _info);

    /// <summary>True when the last state seen says the process has ended.</summary>
    public virtual bool HasExited => Info.Status == StatusExited;

    private SandboxConnection Connection =>
        _connection ?? throw new InvalidOperationException("This SandboxProcess was created for mocking and has no connection.");

    /// <summary>Reads output produced after <paramref name="cursor"/>.</summary>
    /// <param name="cursor">0 for everything still buffered, then the <see cref="ProcessOutput.NextCursor"/> of the previous read.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The events (<c>stdout</c>/<c>stderr</c>), the next cursor, whether older output was dropped, and the process state.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual async Task<ProcessOutput> GetOutputAsync(long cursor = 0, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(cursor);
        var output = await Connection.CallAsync(
            (api, ct) => api.GetProcessOutputAsync(SessionId, Id, cursor, ct),
            cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _info, output.Process);
        return output;
    }

    /// <summary>Writes text to the process's standard input (it must have been started with
    /// <see cref="StartProcessOptions.KeepStdinOpen"/>).</summary>
    /// <param name="text">Text to write; include <c>\n</c> where the program expects a line.</param>
    /// <param name="close">Close stdin after writing (the program then sees end of input).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the server has accepted the text.</returns>
    /// <exception cref="SandboxException">The call failed (e.g. stdin is closed: <see cref="SandboxErrorCodes.Conflict"/>).</exception>
    public virtual Task SendStdinAsync(string text, bool close = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        var request = new SendStdinRequest { Text = text, Close = close };
        return Connection.CallAsync((api, ct) => api.SendStdinAsync(SessionId, Id, request, ct), cancellationToken);
    }

    /// <summary>Closes the process's standard input.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when stdin is closed.</returns>
    public virtual Task CloseStdinAsync(CancellationToken cancellationToken = default)
    {
        var request = new SendStdinRequest { Close = true };
        return Connection.CallAsync((api, ct) => api.SendStdinAsync(SessionId, Id, request, ct), cancellationToken);
    }

    /// <summary>Kills the process and its whole process tree.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the server has killed it.</returns>
    /// <exception cref="SandboxException">The call failed.</exception>
    public virtual Task KillAsync(CancellationToken cancellationToken = default) =>
        Connection.CallAsync((api, ct) => api.KillProcessAsync(SessionId, Id, ct), cancellationToken);

    /// <summary>Reloads the process state.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The current state (also stored in <see cref="Info"/>).</returns>
    public virtual async Task<ProcessInfo> RefreshAsync(CancellationToken cancellationToken = default)
    {
        var info = await Connection.CallAsync((api, ct) => api.GetProcessAsync(SessionId, Id, ct), cancellationToken)
            .ConfigureAwait(false);
        Volatile.Write(ref _info, info);
        return info;
    }

    /// <summary>Polls until the process has exited and returns its result.</summary>
    /// <param name="pollInterval">Time between polls; default 500 ms.</param>
    /// <param name="cancellationToken">Stops waiting (the process keeps running; use <see cref="KillAsync"/> to stop it).
    /// Combine with <see cref="CancellationTokenSource.CancelAfter(TimeSpan)"/> for a deadline.</param>
    /// <returns>The process's result.</returns>
    /// <exception cref="SandboxException">A poll failed.</exception>
    public virtual async Task<CommandResult> WaitAsync(TimeSpan? pollInterval = null, CancellationToken cancellationToken = default)
    {
        var interval = pollInterval ?? TimeSpan.FromMilliseconds(500);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(interval, TimeSpan.Zero, nameof(pollInterval));

        var info = Info;
        while (info.Status != StatusExited || info.Result is null)
        {
            await Task.Delay(interval, cancellationToken).ConfigureAwait(false);
            info = await RefreshAsync(cancellationToken).ConfigureAwait(false);
        }

        return new CommandResult(info.Result);
    }

    /// <inheritdoc />
    public override string ToString() => $"SandboxProcess {Id} ({Info.Status}) in session {SessionId}";
}
