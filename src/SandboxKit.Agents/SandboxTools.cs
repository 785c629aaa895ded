using System.Globalization;
using System.Text;
using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Agents;

/// <summary>
/// The one implementation of the sandbox tools, shared by the Semantic Kernel plugin, the Microsoft.Extensions.AI functions
/// and the server's MCP tools: validates the (untrusted) arguments a model sends, carries the call out on an
/// <see cref="ISandboxToolTarget"/>, and turns every outcome, failures included, into a structured result a model cannot misread.
/// </summary>
/// <remarks>
/// Methods never throw for a bad argument or a failed call: the result has status <c>error</c> and a short message.
/// Only cancellation of <c>cancellationToken</c> throws (<see cref="OperationCanceledException"/>). Instances are immutable
/// and thread-safe.
/// </remarks>
public sealed class SandboxTools
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly int _maxCommandLength;
    private readonly int _maxCodeLength;
    private readonly int _maxPathLength;
    private readonly int _maxWriteBytes;
    private readonly int _maxReadBytes;
    private readonly int _maxOutputChars;
    private readonly int _maxListEntries;
    private readonly TimeSpan _defaultTimeout;
    private readonly TimeSpan _maxTimeout;
    private readonly bool _attachImages;
    private readonly int _maxImages;
    private readonly int _maxImageBytes;
    private readonly HostUploadPolicy _uploads;

    /// <summary>Creates the tools.</summary>
    /// <param name="options">Limits; <see langword="null"/> for the defaults. Values are copied: later changes have no effect.</param>
    /// <exception cref="ArgumentOutOfRangeException">A limit is not positive.</exception>
    public SandboxTools(SandboxToolOptions? options = null)
    {
        options ??= new SandboxToolOptions();
        options.Validate();
        _maxCommandLength = options.MaxCommandLength;
        _maxCodeLength = options.MaxCodeLength;
        _maxPathLength = options.MaxPathLength;
        _maxWriteBytes = options.MaxWriteBytes;
        _maxReadBytes = options.MaxReadBytes;
        _maxOutputChars = options.MaxOutputChars;
        _maxListEntries = options.MaxListEntries;
        _defaultTimeout = options.DefaultTimeout;
        _maxTimeout = options.MaxTimeout;
        _attachImages = options.AttachImages;
        _maxImages = options.MaxImages;
        _maxImageBytes = options.MaxImageBytes;
        _uploads = new HostUploadPolicy(options.AllowedUploadDirectories, options.MaxUploadBytes);
    }

    /// <summary>True when uploads from the host are configured (<see cref="SandboxToolOptions.AllowedUploadDirectories"/>).</summary>
    public bool UploadsFromHostEnabled => _uploads.Enabled;

    /// <summary>Runs a bash command (<c>run_command</c>).</summary>
    /// <param name="target">The session to run in.</param>
    /// <param name="command">The command line, from the model.</param>
    /// <param name="timeoutSeconds">Timeout from the model; <see langword="null"/> for the default.</param>
    /// <param name="cancellationToken">Cancels the call (the command is killed).</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxCommandResult> RunCommandAsync(
        ISandboxToolTarget target, string command, double? timeoutSeconds = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (CheckText(command, "command", _maxCommandLength) is { } invalid)
        {
            return SandboxCommandResult.Failed(invalid);
        }
        if (ResolveTimeout(timeoutSeconds, out var seconds) is { } badTimeout)
        {
            return SandboxCommandResult.Failed(badTimeout);
        }
        try
        {
            var result = await target.ExecuteAsync(new ExecuteRequest { Command = command, TimeoutSeconds = seconds }, cancellationToken)
                .ConfigureAwait(false);
            return ToResult(result, seconds);
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxCommandResult.Failed(DescribeError(e));
        }
    }

    /// <summary>
    /// Runs code (<c>run_code</c>): Python or JavaScript in the session's default context of that language, a live interpreter
    /// whose variables persist from call to call; bash in the session's shell. Rich results come back as text, and the images
    /// the code displayed as <see cref="SandboxCodeResult.Images"/> (unless <see cref="SandboxToolOptions.AttachImages"/> is off).
    /// </summary>
    /// <param name="target">The session to run in.</param>
    /// <param name="language"><c>python</c>, <c>javascript</c> or <c>bash</c> (common aliases such as <c>python3</c>, <c>node</c> and <c>js</c> are accepted).</param>
    /// <param name="code">The source code, from the model.</param>
    /// <param name="timeoutSeconds">Timeout from the model; <see langword="null"/> for the default.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxCodeResult> RunCodeAsync(
        ISandboxToolTarget target, string language, string code, double? timeoutSeconds = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        var normalized = NormalizeLanguage(language);
        if (normalized is null)
        {
            return SandboxCodeResult.Failed($"language must be \"python\", \"javascript\" or \"bash\" (got \"{Shorten(language)}\").");
        }
        if (CheckText(code, "code", _maxCodeLength) is { } invalid)
        {
            return SandboxCodeResult.Failed(invalid);
        }
        if (ResolveTimeout(timeoutSeconds, out var seconds) is { } badTimeout)
        {
            return SandboxCodeResult.Failed(badTimeout);
        }
        try
        {
            var result = await target.RunCodeAsync(new RunCodeRequest { Language = normalized, Code = code, TimeoutSeconds = seconds }, cancellationToken)
                .ConfigureAwait(false);
            return ToCodeResult(result, seconds);
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxCodeResult.Failed(DescribeError(e));
        }
    }

    /// <summary>Creates or replaces a UTF-8 text file (<c>write_file</c>).</summary>
    /// <param name="target">The session.</param>
    /// <param name="path">Sandbox path, from the model.</param>
    /// <param name="content">The text, from the model.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileResult> WriteFileAsync(ISandboxToolTarget target, string path, string content, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (NormalizePath(path, allowRoot: false, out var resolved) is { } badPath)
        {
            return SandboxFileResult.Failed(Shorten(path), badPath);
        }
        if (content is null)
        {
            return SandboxFileResult.Failed(resolved, "content is required (use an empty string for an empty file).");
        }
        if (content.Length > _maxWriteBytes || Encoding.UTF8.GetByteCount(content) > _maxWriteBytes)
        {
            return SandboxFileResult.Failed(resolved, $"content is larger than {_maxWriteBytes} bytes; write large files in parts with run_command or generate them with run_code.");
        }
        try
        {
            var entry = await target.WriteFileAsync(resolved, Encoding.UTF8.GetBytes(content), cancellationToken).ConfigureAwait(false);
            return new SandboxFileResult { Status = SandboxToolStatus.Ok, Path = entry.Path, Size = entry.Size };
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxFileResult.Failed(resolved, DescribeError(e));
        }
    }

    /// <summary>Reads a UTF-8 text file, at most <see cref="SandboxToolOptions.MaxReadBytes"/> of it (<c>read_file</c>).</summary>
    /// <param name="target">The session.</param>
    /// <param name="path">Sandbox path, from the model.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result, with the text in <see cref="SandboxFileResult.Content"/>.</returns>
    public async Task<SandboxFileResult> ReadFileAsync(ISandboxToolTarget target, string path, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (NormalizePath(path, allowRoot: false, out var resolved) is { } badPath)
        {
            return SandboxFileResult.Failed(Shorten(path), badPath);
        }
        using var buffer = new HeadBuffer(_maxReadBytes);
        bool truncated;
        try
        {
            await target.ReadFileAsync(resolved, buffer, cancellationToken).ConfigureAwait(false);
            truncated = false;
        }
        catch (HeadBuffer.FullException)
        {
            truncated = true;
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxFileResult.Failed(resolved, DescribeError(e));
        }

        var bytes = buffer.Bytes;
        if (bytes.Span.StartsWith(Encoding.UTF8.Preamble))
        {
            bytes = bytes[Encoding.UTF8.Preamble.Length..];
        }
        if (DecodeText(bytes.Span, allowCutAtEnd: truncated) is not { } text)
        {
            return SandboxFileResult.Failed(resolved, "the file is not UTF-8 text; inspect it with run_command (e.g. file, xxd or base64).");
        }
        return new SandboxFileResult
        {
            Status = SandboxToolStatus.Ok,
            Path = resolved,
            Content = text,
            Size = truncated ? null : buffer.Length,
            Truncated = truncated,
        };
    }

    /// <summary>Lists a directory (<c>list_files</c>).</summary>
    /// <param name="target">The session.</param>
    /// <param name="path">Sandbox directory, from the model; <see langword="null"/> or empty for <c>/workspace</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileListResult> ListFilesAsync(ISandboxToolTarget target, string? path = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (NormalizePath(string.IsNullOrWhiteSpace(path) ? "/workspace" : path, allowRoot: true, out var resolved) is { } badPath)
        {
            return SandboxFileListResult.Failed(Shorten(path), badPath);
        }
        try
        {
            var list = await target.ListFilesAsync(resolved, cancellationToken).ConfigureAwait(false);
            return new SandboxFileListResult
            {
                Status = SandboxToolStatus.Ok,
                Path = list.Path,
                Entries = list.Entries.Take(_maxListEntries).Select(e => new SandboxFileListEntry { Name = e.Name, Type = e.Type, Size = e.Size }).ToList(),
                Truncated = list.Entries.Count > _maxListEntries,
            };
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxFileListResult.Failed(resolved, DescribeError(e));
        }
    }

    /// <summary>
    /// Copies a host file into the sandbox (<c>upload_file_from_host</c>), only from <see cref="SandboxToolOptions.AllowedUploadDirectories"/>
    /// after full normalisation and symbolic-link resolution; refused when none are configured.
    /// </summary>
    /// <param name="target">The session.</param>
    /// <param name="hostPath">Host path, from the model.</param>
    /// <param name="sandboxPath">Destination in the sandbox; <see langword="null"/> for <c>/workspace/&lt;file name&gt;</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileResult> UploadFileFromHostAsync(
        ISandboxToolTarget target, string hostPath, string? sandboxPath = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (!_uploads.Enabled)
        {
            return SandboxFileResult.Failed(null, "uploads from the host are turned off for this application.");
        }
        if (CheckText(hostPath, "hostPath", _maxPathLength) is { } badHostPath)
        {
            return SandboxFileResult.Failed(null, badHostPath);
        }
        var destination = string.IsNullOrWhiteSpace(sandboxPath) ? "/workspace/" + Path.GetFileName(hostPath.TrimEnd('/', '\\')) : sandboxPath;
        if (NormalizePath(destination, allowRoot: false, out var resolved) is { } badPath)
        {
            return SandboxFileResult.Failed(Shorten(destination), badPath);
        }
        byte[] bytes;
        try
        {
            bytes = await _uploads.ReadAsync(hostPath, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxFileResult.Failed(resolved, e is IOException or UnauthorizedAccessException
                ? "hostPath could not be read."
                : DescribeError(e));
        }
        try
        {
            var entry = await target.WriteFileAsync(resolved, bytes, cancellationToken).ConfigureAwait(false);
            return new SandboxFileResult { Status = SandboxToolStatus.Ok, Path = entry.Path, Size = entry.Size };
        }
        catch (Exception e) when (!IsCallerCancellation(e, cancellationToken))
        {
            return SandboxFileResult.Failed(resolved, DescribeError(e));
        }
    }

    /// <summary>A short, model-safe description of a failure. Messages of unknown exception types are not disclosed.</summary>
    /// <param name="exception">The failure.</param>
    /// <returns>One sentence.</returns>
    public static string DescribeError(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        return exception switch
        {
            SandboxToolException e => e.Message,
            SessionNotFoundException => "the sandbox session no longer exists (it expired or was deleted).",
            SandboxQuotaExceededException => "the sandbox quota is exhausted; try again later.",
            SandboxAuthenticationException => "the application is not allowed to use the sandbox server (authentication failed).",
            SandboxException { Code: SandboxErrorCodes.NotFound } e => "not found: " + (e.Detail ?? e.Message),
            SandboxException { Code: SandboxErrorCodes.PayloadTooLarge } => "the file is larger than the sandbox server accepts.",
            SandboxException { Code: SandboxErrorCodes.Timeout or SandboxErrorCodes.TransportError } => "the sandbox server could not be reached; try again.",
            SandboxException e => e.Detail ?? e.Message,
            OperationCanceledException or TimeoutException => "the call timed out.",
            _ => $"the sandbox call failed unexpectedly ({exception.GetType().Name}).",
        };
    }

    private static bool IsCallerCancellation(Exception e, CancellationToken cancellationToken) =>
        e is OperationCanceledException && cancellationToken.IsCancellationRequested;

    private SandboxCommandResult ToResult(ExecuteResult result, double timeoutSeconds)
    {
        var stdout = CapOutput(result.Stdout, _maxOutputChars, out var stdoutCut);
        var stderr = CapOutput(result.Stderr, _maxOutputChars, out var stderrCut);
        var (status, error) = result switch
        {
            { TimedOut: true } => (SandboxToolStatus.Timeout,
                $"the command did not finish within {timeoutSeconds.ToString(CultureInfo.InvariantCulture)} s; it and its child processes were killed."),
            { OomKilled: true } => (SandboxToolStatus.Error, "the command ran out of memory and was killed."),
            { ExitCode: 0 } => (SandboxToolStatus.Ok, null),
            { ExitCode: > 128 and < 160 } => (SandboxToolStatus.Error, $"the command was killed by signal {result.ExitCode - 128} (exit code {result.ExitCode})."),
            _ => (SandboxToolStatus.Error, $"the command exited with code {result.ExitCode}."),
        };
        return new SandboxCommandResult
        {
            Status = status,
            ExitCode = result.TimedOut ? null : result.ExitCode,
            Stdout = stdout,
            Stderr = stderr,
            Truncated = result.Truncated || stdoutCut || stderrCut,
            Error = error,
        };
    }

    /// <summary>Most rich results one <c>run_code</c> result lists.</summary>
    private const int MaxCodeResults = 20;

    /// <summary>Image formats attached to <c>run_code</c> results, in order of preference.</summary>
    private static readonly string[] ImageFormats = ["image/png", "image/jpeg"];

    /// <summary>Formats whose text stands in for a result without <c>text/plain</c>, in order of preference.</summary>
    private static readonly string[] TextFormats = ["text/plain", "text/markdown", "application/json", "text/latex", "text/html", "image/svg+xml"];

    private SandboxCodeResult ToCodeResult(ExecuteResult result, double timeoutSeconds)
    {
        var stdout = CapOutput(result.Stdout, _maxOutputChars, out var stdoutCut);
        var stderr = CapOutput(result.Stderr, _maxOutputChars, out var stderrCut);
        var isCell = result.ContextId is not null;
        var stateLost = result.StateLost == true;
        var lost = stateLost ? " The interpreter was restarted: variables defined before are gone." : "";
        var seconds = timeoutSeconds.ToString(CultureInfo.InvariantCulture);
        var (status, error) = result switch
        {
            { TimedOut: true } when isCell => (SandboxToolStatus.Timeout,
                $"the code did not finish within {seconds} s and was interrupted." + (stateLost ? lost : " Variables defined before are kept.")),
            { TimedOut: true } => (SandboxToolStatus.Timeout, $"the command did not finish within {seconds} s; it and its child processes were killed."),
            { OomKilled: true } => (SandboxToolStatus.Error, "the code ran out of memory and was killed." + lost),
            { Error: { } raised } => (SandboxToolStatus.Error, CapOutput($"{raised.Name}: {raised.Value}", 1024, out _) + lost),
            { ExitCode: 0 } => (SandboxToolStatus.Ok, null),
            { ExitCode: > 128 and < 160 } when !isCell => (SandboxToolStatus.Error, $"the command was killed by signal {result.ExitCode - 128} (exit code {result.ExitCode})."),
            _ => (SandboxToolStatus.Error, isCell ? "the code failed." + lost : $"the command exited with code {result.ExitCode}."),
        };

        var outputs = new List<SandboxCodeOutput>();
        var images = new List<SandboxImage>();
        var truncated = result.Truncated || stdoutCut || stderrCut;
        foreach (var output in result.Results ?? [])
        {
            if (output is null)
            {
                continue;
            }
            if (outputs.Count == MaxCodeResults)
            {
                truncated = true;
                break;
            }
            outputs.Add(ToOutput(output, images, ref truncated));
        }

        return new SandboxCodeResult
        {
            Status = status,
            ExitCode = result.TimedOut ? null : result.ExitCode,
            Stdout = stdout,
            Stderr = stderr,
            Results = outputs,
            Error = error,
            Traceback = result.Error is { Traceback: { Length: > 0 } traceback } ? CapTail(traceback, Math.Max(64, _maxOutputChars / 4)) : null,
            ExecutionCount = isCell ? result.ExecutionCount : null,
            StateLost = stateLost,
            Truncated = truncated,
            Images = images,
        };
    }

    private SandboxCodeOutput ToOutput(CodeOutput output, List<SandboxImage> images, ref bool truncated)
    {
        string? text = null;
        string? note = null;
        foreach (var format in TextFormats)
        {
            if (output.Get(format) is { } value)
            {
                text = CapOutput(value, _maxOutputChars, out var cut);
                if (cut)
                {
                    truncated = true;
                    note = $"the text ({format}) was cut: it is longer than {_maxOutputChars} characters.";
                }
                break;
            }
        }

        int? image = null;
        if (ImageFormats.FirstOrDefault(f => output.Get(f) is not null) is { } imageFormat)
        {
            var bytes = Decode(output.Get(imageFormat)!);
            if (!_attachImages)
            {
                note = $"{imageFormat} not attached: images are turned off for this application.";
            }
            else if (bytes is null)
            {
                note = $"{imageFormat} not attached: it is not valid base64.";
            }
            else if (bytes.Length > _maxImageBytes)
            {
                note = $"{imageFormat} not attached: it is larger than {_maxImageBytes} bytes; save it to a file (e.g. savefig) and shrink it.";
            }
            else if (images.Count >= _maxImages)
            {
                note = $"{imageFormat} not attached: at most {_maxImages} images are attached to one result.";
            }
            else
            {
                images.Add(new SandboxImage { MimeType = imageFormat, Data = bytes });
                image = images.Count;
            }
        }

        return new SandboxCodeOutput
        {
            IsMainResult = output.IsMainResult,
            Formats = output.Data.Keys.Take(16).ToList(),
            Text = text,
            Image = image,
            Note = note,
        };

        static byte[]? Decode(string base64)
        {
            try
            {
                return Convert.FromBase64String(base64);
            }
            catch (FormatException)
            {
                return null;
            }
        }
    }

    /// <summary>Keeps the end of long text (where a traceback names the failing line), with a marker where the start was dropped.</summary>
    private static string CapTail(string text, int maxChars)
    {
        if (text.Length <= maxChars)
        {
            return text;
        }
        var start = text.Length - (maxChars - 40);
        if (char.IsLowSurrogate(text[start]))
        {
            start++;
        }
        return $"[... {start} characters omitted ...]\n" + text[start..];
    }

    /// <summary>Keeps the head and tail of long output, with a marker where the middle was dropped.</summary>
    internal static string CapOutput(string? text, int maxChars, out bool truncated)
    {
        text ??= "";
        if (text.Length <= maxChars)
        {
            truncated = false;
            return text;
        }
        truncated = true;
        var keep = maxChars - 48;
        var headEnd = keep / 2;
        var tailStart = text.Length - (keep - headEnd);
        if (char.IsHighSurrogate(text[headEnd - 1]))
        {
            headEnd--;
        }
        if (char.IsLowSurrogate(text[tailStart]))
        {
            tailStart++;
        }
        return string.Concat(
            text.AsSpan(0, headEnd),
            $"\n[... {tailStart - headEnd} characters omitted ...]\n",
            text.AsSpan(tailStart));
    }

    private string? ResolveTimeout(double? requested, out double seconds)
    {
        seconds = requested ?? _defaultTimeout.TotalSeconds;
        if (double.IsNaN(seconds) || seconds <= 0 || seconds > _maxTimeout.TotalSeconds)
        {
            return $"timeoutSeconds must be greater than 0 and at most {_maxTimeout.TotalSeconds.ToString(CultureInfo.InvariantCulture)}.";
        }
        return null;
    }

    private static string? CheckText(string? value, string name, int maxLength)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return $"{name} is required.";
        }
        if (value.Length > maxLength)
        {
            return $"{name} is longer than {maxLength} characters.";
        }
        if (value.Contains('\0', StringComparison.Ordinal))
        {
            return $"{name} contains a NUL character.";
        }
        return null;
    }

    /// <summary>Absolute, normalised sandbox path (relative paths start at /workspace), as the server resolves it.</summary>
    private string? NormalizePath(string? path, bool allowRoot, out string resolved)
    {
        resolved = "";
        if (CheckText(path, "path", _maxPathLength) is { } invalid)
        {
            return invalid;
        }
        if (path is null || path.Any(char.IsControl))
        {
            return "path contains control characters.";
        }
        resolved = SandboxPath.Normalize(path);
        return resolved == "/" && !allowRoot ? "path must name a file, not the root directory." : null;
    }

    private static string? NormalizeLanguage(string? language) => language?.Trim().ToLowerInvariant() switch
    {
        "python" or "python3" or "py" => CodeLanguages.Python,
        "node" or "nodejs" or "javascript" or "js" => CodeLanguages.JavaScript,
        "bash" or "sh" or "shell" => CodeLanguages.Bash,
        _ => null,
    };

    /// <summary>Strict UTF-8 decoding; a truncated read may end inside a character, which is then dropped.</summary>
    private static string? DecodeText(ReadOnlySpan<byte> bytes, bool allowCutAtEnd)
    {
        if (bytes.Contains((byte)0))
        {
            return null;
        }
        for (var drop = 0; drop <= (allowCutAtEnd ? Math.Min(3, bytes.Length) : 0); drop++)
        {
            try
            {
                return StrictUtf8.GetString(bytes[..^drop]);
            }
            catch (DecoderFallbackException)
            {
            }
        }
        return null;
    }

    private static string Shorten(string? value) =>
        value is null ? "" : value.Length <= 80 ? value : value[..80] + "...";

    /// <summary>Keeps the first bytes written to it and throws once more would exceed its capacity.</summary>
    private sealed class HeadBuffer(int capacity) : Stream
    {
        private readonly MemoryStream _inner = new();

        public ReadOnlyMemory<byte> Bytes => _inner.GetBuffer().AsMemory(0, (int)_inner.Length);

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => _inner.Length;
        public override long Position { get => _inner.Length; set => throw new NotSupportedException(); }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            var room = capacity - (int)_inner.Length;
            if (buffer.Length > room)
            {
                _inner.Write(buffer[..room]);
                throw new FullException();
            }
            _inner.Write(buffer);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            Write(buffer.AsSpan(offset, count));
            return Task.CompletedTask;
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Write(buffer.Span);
            return ValueTask.CompletedTask;
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _inner.Dispose();
            }
            base.Dispose(disposing);
        }

        /// <summary>Stops the copy: the file is longer than the buffer.</summary>
        public sealed class FullException : Exception
        {
            public FullException()
                : base("The read limit was reached.")
            {
            }

            public FullException(string message)
                : base(message)
            {
            }

            public FullException(string message, Exception innerException)
                : base(message, innerException)
            {
            }
        }
    }
}
