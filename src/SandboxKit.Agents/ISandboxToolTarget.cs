using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Agents;

/// <summary>
/// The sandbox session a tool call acts on. <see cref="SandboxTools"/> validates arguments and shapes results;
/// a target only carries the call out. <see cref="SandboxSessionToolTarget"/> does it over HTTP with
/// <see cref="SandboxSession"/>; the SandboxKit server's MCP tools do it in-process.
/// </summary>
/// <remarks>
/// Throw <see cref="SandboxToolException"/> (or <see cref="SandboxException"/>) for failures whose message may be shown
/// to the model; any other exception is reported to the model without its message.
/// </remarks>
public interface ISandboxToolTarget
{
    /// <summary>Runs a bash command and waits for its result.</summary>
    /// <param name="request">The validated request.</param>
    /// <param name="cancellationToken">Cancels the call (the command is killed).</param>
    /// <returns>The result; a non-zero exit code is a result, not an exception.</returns>
    Task<ExecuteResult> ExecuteAsync(ExecuteRequest request, CancellationToken cancellationToken);

    /// <summary>Runs code and waits for its result: Python and JavaScript as a cell of the session's live interpreter (its
    /// default context unless <see cref="RunCodeRequest.ContextId"/> names one), bash in the session's shell.</summary>
    /// <param name="request">The validated request.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The result, with the cell's rich results and exception.</returns>
    Task<ExecuteResult> RunCodeAsync(RunCodeRequest request, CancellationToken cancellationToken);

    /// <summary>Creates or replaces a file (parents are created).</summary>
    /// <param name="path">The validated path.</param>
    /// <param name="content">The bytes.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The written file.</returns>
    Task<FileEntry> WriteFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken);

    /// <summary>Copies a file's bytes into <paramref name="destination"/>, which may throw to stop the copy early.</summary>
    /// <param name="path">The validated path.</param>
    /// <param name="destination">Where to write.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The number of bytes copied.</returns>
    Task<long> ReadFileAsync(string path, Stream destination, CancellationToken cancellationToken);

    /// <summary>Lists a directory.</summary>
    /// <param name="path">The validated path.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The directory's absolute path and its entries.</returns>
    Task<FileList> ListFilesAsync(string path, CancellationToken cancellationToken);
}

/// <summary>A tool call failed for a reason the model may read (its message is returned as the result's <c>error</c>).</summary>
public class SandboxToolException : Exception
{
    /// <summary>Creates the exception.</summary>
    public SandboxToolException()
        : this("The sandbox call failed.")
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong, written for the model.</param>
    public SandboxToolException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong, written for the model.</param>
    /// <param name="innerException">The cause.</param>
    public SandboxToolException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>True when the session is gone (expired or deleted), so a caller that manages sessions may make a new one.</summary>
    public bool SessionGone { get; init; }
}

/// <summary>Carries tool calls out on a <see cref="SandboxSession"/> of the client SDK.</summary>
/// <param name="session">The session; it is not disposed.</param>
public sealed class SandboxSessionToolTarget(SandboxSession session) : ISandboxToolTarget
{
    private readonly SandboxSession _session = session ?? throw new ArgumentNullException(nameof(session));

    /// <summary>The session calls act on.</summary>
    public SandboxSession Session => _session;

    /// <inheritdoc />
    public async Task<ExecuteResult> ExecuteAsync(ExecuteRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var result = await _session.ExecuteAsync(request.Command, new ExecuteOptions
        {
            Timeout = request.TimeoutSeconds is { } seconds ? TimeSpan.FromSeconds(seconds) : null,
            Stdin = request.Stdin,
            WorkingDirectory = request.WorkingDirectory,
            Environment = request.Environment,
            MergeStderr = request.MergeStderr,
        }, cancellationToken).ConfigureAwait(false);
        return ToContract(result);
    }

    /// <inheritdoc />
    public async Task<ExecuteResult> RunCodeAsync(RunCodeRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var result = await _session.RunCodeAsync(request.Code, request.Language, new RunCodeOptions
        {
            Timeout = request.TimeoutSeconds is { } seconds ? TimeSpan.FromSeconds(seconds) : null,
            ContextId = request.ContextId,
            Stdin = request.Stdin,
            Environment = request.Environment,
        }, cancellationToken).ConfigureAwait(false);
        return ToContract(result);
    }

    /// <inheritdoc />
    public Task<FileEntry> WriteFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken) =>
        _session.WriteFileAsync(path, content, cancellationToken);

    /// <inheritdoc />
    public Task<long> ReadFileAsync(string path, Stream destination, CancellationToken cancellationToken) =>
        _session.DownloadAsync(path, destination, cancellationToken);

    /// <inheritdoc />
    public async Task<FileList> ListFilesAsync(string path, CancellationToken cancellationToken)
    {
        var entries = await _session.ListFilesAsync(path, cancellationToken).ConfigureAwait(false);
        return new FileList { Path = path, Entries = entries };
    }

    private static ExecuteResult ToContract(CodeResult r) => new()
    {
        ExitCode = r.ExitCode,
        Stdout = r.Stdout,
        Stderr = r.Stderr,
        TimedOut = r.TimedOut,
        OomKilled = r.OomKilled,
        Truncated = r.Truncated,
        StdoutBytes = System.Text.Encoding.UTF8.GetByteCount(r.Stdout),
        StderrBytes = System.Text.Encoding.UTF8.GetByteCount(r.Stderr),
        DurationMs = r.Duration.TotalMilliseconds,
        Results = r.Results.Select(ToContract).ToList(),
        Error = r.Error,
        ExecutionCount = r.ExecutionCount,
        ContextId = r.ContextId,
        Interrupted = r.ContextId is null ? null : r.Interrupted,
        StateLost = r.ContextId is null ? null : r.StateLost,
    };

    private static CodeOutput ToContract(RichResult r)
    {
        var output = new CodeOutput { IsMainResult = r.IsMainResult };
        foreach (var (mimeType, value) in r.Data)
        {
            output.Data[mimeType] = StringElement(value);
        }
        return output;
    }

    private static System.Text.Json.JsonElement StringElement(string value)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(value.Length + 16);
        using (var writer = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            writer.WriteStringValue(value);
        }
        using var document = System.Text.Json.JsonDocument.Parse(buffer.WrittenMemory);
        return document.RootElement.Clone();
    }

    private static ExecuteResult ToContract(CommandResult r) => new()
    {
        ExitCode = r.ExitCode,
        Stdout = r.Stdout,
        Stderr = r.Stderr,
        TimedOut = r.TimedOut,
        OomKilled = r.OomKilled,
        Truncated = r.Truncated,
        StdoutBytes = r.StdoutBytes,
        StderrBytes = r.StderrBytes,
        DurationMs = r.Duration.TotalMilliseconds,
        WorkingDirectory = r.WorkingDirectory,
    };
}
