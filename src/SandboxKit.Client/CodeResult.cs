using System.Text.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// What a code cell produced (<see cref="SandboxSession.RunCodeAsync"/>, <see cref="SandboxCodeContext.RunAsync"/>): its
/// output streams, its rich results (the last expression's value, <c>display()</c> output, figures) and, when it raised,
/// the exception. An exception in the cell is a normal result (<see cref="Error"/>), not a .NET exception.
/// </summary>
public sealed class CodeResult
{
    /// <summary>Creates a result from the server's contract type (also handy for fakes in tests).</summary>
    /// <param name="result">The server's result.</param>
    public CodeResult(ExecuteResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        Results = (result.Results ?? []).Where(r => r is not null).Select(r => new RichResult(r)).ToArray();
        Stdout = result.Stdout ?? string.Empty;
        Stderr = result.Stderr ?? string.Empty;
        Error = result.Error;
        ExecutionCount = result.ExecutionCount;
        ContextId = result.ContextId;
        ExitCode = result.ExitCode;
        TimedOut = result.TimedOut;
        Interrupted = result.Interrupted ?? false;
        StateLost = result.StateLost ?? false;
        OomKilled = result.OomKilled;
        Truncated = result.Truncated;
        Duration = TimeSpan.FromMilliseconds(result.DurationMs);
    }

    /// <summary>The rich results, in the order they came (figures and <c>display()</c> output, then the main result).</summary>
    public IReadOnlyList<RichResult> Results { get; }

    /// <summary>The value of the cell's last expression (<see cref="RichResult.IsMainResult"/>), or null when it had none
    /// (e.g. it ended with an assignment, or with <c>;</c> in IPython).</summary>
    public RichResult? MainResult => Results.FirstOrDefault(r => r.IsMainResult);

    /// <summary>The <c>text/plain</c> form of <see cref="MainResult"/>, e.g. <c>42</c> or <c>'text'</c>; null when there is none.</summary>
    public string? Text => MainResult?.Text;

    /// <summary>Standard output. When <see cref="Truncated"/>: head, a marker line, tail.</summary>
    public string Stdout { get; }

    /// <summary>Standard error, as <see cref="Stdout"/>.</summary>
    public string Stderr { get; }

    /// <summary>The exception the cell raised (also <c>KeyboardInterrupt</c> for an interrupt, <c>InterpreterDied</c> when
    /// the interpreter exited), or null when it ran to its end.</summary>
    public CodeError? Error { get; }

    /// <summary>The interpreter's execution count after the cell (null for bash).</summary>
    public int? ExecutionCount { get; }

    /// <summary>The context the cell ran in (e.g. <c>default-python</c>); null for bash.</summary>
    public string? ContextId { get; }

    /// <summary>0 when the cell ran to its end, 1 when it raised; for bash, the exit status.</summary>
    public int ExitCode { get; }

    /// <summary>True when the cell ran out of time (it was interrupted; for bash, killed).</summary>
    public bool TimedOut { get; }

    /// <summary>True when the cell was interrupted, by its timeout or by <see cref="SandboxCodeContext.InterruptAsync"/>.
    /// The context keeps its variables unless <see cref="StateLost"/>.</summary>
    public bool Interrupted { get; }

    /// <summary>True when the interpreter died or had to be killed: its variables are gone, and the next cell starts a fresh one.</summary>
    public bool StateLost { get; }

    /// <summary>True when the session's memory limit killed the interpreter (or the bash command).</summary>
    public bool OomKilled { get; }

    /// <summary>True when an output stream exceeded the server's cap (its middle was dropped) or rich results were dropped.</summary>
    public bool Truncated { get; }

    /// <summary>Wall-clock duration of the cell, measured by the server.</summary>
    public TimeSpan Duration { get; }

    /// <summary>True when the cell ran to its end without an exception (for bash: exited with 0), and did not time out.</summary>
    public bool Succeeded => Error is null && ExitCode == 0 && !TimedOut && !OomKilled;

    /// <inheritdoc />
    public override string ToString() =>
        (Error is { } error ? $"{error.Name}: {error.Value}" : Succeeded ? "ok" : $"exit {ExitCode}") +
        $"{(TimedOut ? ", timed out" : "")}{(Interrupted ? ", interrupted" : "")}{(StateLost ? ", state lost" : "")}" +
        $", {Results.Count} result(s), {Duration.TotalMilliseconds:0} ms" + (ExecutionCount is { } count ? $", [{count}]" : "");
}

/// <summary>
/// One rich result of a code cell: a Jupyter mime bundle, the same value in one or more formats (IPython gives a pandas
/// DataFrame as <c>text/plain</c> and <c>text/html</c>, a matplotlib figure as <c>image/png</c> and <c>text/plain</c>).
/// </summary>
public sealed class RichResult
{
    private readonly Dictionary<string, string> _data;

    /// <summary>Creates a result from the server's contract type (also handy for fakes in tests).</summary>
    /// <param name="output">The server's mime bundle.</param>
    public RichResult(CodeOutput output)
    {
        ArgumentNullException.ThrowIfNull(output);
        IsMainResult = output.IsMainResult;
        _data = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (mimeType, value) in output.Data ?? [])
        {
            // The server sends strings; anything else is kept as its JSON text rather than lost.
            _data[mimeType] = value.ValueKind == JsonValueKind.String ? value.GetString()! : value.GetRawText();
        }
    }

    /// <summary>True for the value of the cell's last expression; false for <c>display()</c> output and figures.</summary>
    public bool IsMainResult { get; }

    /// <summary>The raw bundle: mime type to value. Text formats are the text; <c>image/png</c> and <c>image/jpeg</c> are
    /// base64; <c>application/json</c> is JSON text.</summary>
    public IReadOnlyDictionary<string, string> Data => _data;

    /// <summary>The mime types the bundle has.</summary>
    public IReadOnlyCollection<string> Formats => _data.Keys;

    /// <summary><c>text/plain</c>: the value as <c>repr()</c> shows it (Python) or as Node's inspector does.</summary>
    public string? Text => Get("text/plain");

    /// <summary><c>text/html</c>, e.g. a pandas DataFrame as a table.</summary>
    public string? Html => Get("text/html");

    /// <summary><c>text/markdown</c>.</summary>
    public string? Markdown => Get("text/markdown");

    /// <summary><c>text/latex</c>.</summary>
    public string? Latex => Get("text/latex");

    /// <summary><c>image/svg+xml</c>, as text.</summary>
    public string? Svg => Get("image/svg+xml");

    /// <summary><c>application/json</c>, parsed; null when absent or not valid JSON.</summary>
    public JsonElement? Json
    {
        get
        {
            if (Get("application/json") is not { } text)
            {
                return null;
            }

            try
            {
                using var document = JsonDocument.Parse(text);
                return document.RootElement.Clone();
            }
            catch (JsonException)
            {
                return null;
            }
        }
    }

    /// <summary><c>image/png</c>, decoded from base64 (a new array on each access); null when absent or not valid base64.</summary>
    public byte[]? Png => GetBytes("image/png");

    /// <summary><c>image/jpeg</c>, decoded from base64 (a new array on each access); null when absent or not valid base64.</summary>
    public byte[]? Jpeg => GetBytes("image/jpeg");

    /// <summary>True when the bundle has <c>image/png</c> or <c>image/jpeg</c>.</summary>
    public bool HasImage => _data.ContainsKey("image/png") || _data.ContainsKey("image/jpeg");

    /// <summary>The value of one format.</summary>
    /// <param name="mimeType">E.g. <c>text/plain</c> or <c>application/vnd.plotly.v1+json</c>.</param>
    /// <returns>The value as the bundle has it, or null when it does not have the format.</returns>
    public string? Get(string mimeType)
    {
        ArgumentNullException.ThrowIfNull(mimeType);
        return _data.TryGetValue(mimeType, out var value) ? value : null;
    }

    /// <summary>The value of a binary format (base64 in the bundle), decoded.</summary>
    /// <param name="mimeType">E.g. <c>image/png</c>.</param>
    /// <returns>A new array with the bytes, or null when the bundle does not have the format or it is not valid base64.</returns>
    public byte[]? GetBytes(string mimeType)
    {
        if (Get(mimeType) is not { } base64)
        {
            return null;
        }

        try
        {
            // Whitespace (IPython ends its base64 with a newline) is ignored.
            return Convert.FromBase64String(base64);
        }
        catch (FormatException)
        {
            return null;
        }
    }

    /// <inheritdoc />
    public override string ToString() => Text ?? $"[{string.Join(", ", _data.Keys)}]";
}

/// <summary>
/// One event of a streamed code cell (<see cref="SandboxSession.RunCodeStreamAsync"/>): output as it is written, each rich
/// result as it is displayed, the cell's exception, and finally <c>exited</c> with the whole <see cref="CodeResult"/>.
/// </summary>
public sealed class CodeEvent
{
    /// <summary>Creates an event from the server's contract type (also handy for fakes in tests).</summary>
    /// <param name="commandEvent">The server's event.</param>
    public CodeEvent(CommandEvent commandEvent)
    {
        ArgumentNullException.ThrowIfNull(commandEvent);
        Type = commandEvent.Type;
        Text = commandEvent.Data;
        Output = commandEvent.Output is { } output ? new RichResult(output) : null;
        Error = commandEvent.Exception;
        Result = commandEvent.Result is { } result ? new CodeResult(result) : null;
    }

    /// <summary><see cref="CommandEventTypes.Stdout"/>, <see cref="CommandEventTypes.Stderr"/>, <see cref="CommandEventTypes.Result"/>,
    /// <see cref="CommandEventTypes.Error"/> (the cell raised) or <see cref="CommandEventTypes.Exited"/> (always last);
    /// bash runs also have <see cref="CommandEventTypes.Started"/>.</summary>
    public string Type { get; }

    /// <summary>The output text, on <c>stdout</c> and <c>stderr</c>.</summary>
    public string? Text { get; }

    /// <summary>The rich result, on <c>result</c>.</summary>
    public RichResult? Output { get; }

    /// <summary>The cell's exception, on <c>error</c>; the stream goes on to <c>exited</c>.</summary>
    public CodeError? Error { get; }

    /// <summary>The whole result, on <c>exited</c>.</summary>
    public CodeResult? Result { get; }

    /// <inheritdoc />
    public override string ToString() => Type switch
    {
        CommandEventTypes.Stdout or CommandEventTypes.Stderr => $"{Type}: {Text}",
        CommandEventTypes.Result => $"result: {Output}",
        CommandEventTypes.Error => $"error: {Error?.Name}: {Error?.Value}",
        CommandEventTypes.Exited => $"exited: {Result}",
        _ => Type,
    };
}
