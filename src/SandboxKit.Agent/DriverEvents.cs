using System.Text.Json;
using System.Text.Unicode;

namespace SandboxKit.Agent;

/// <summary>The kinds of events an interpreter driver sends (src/SandboxKit.Interpreters/README.md, "Events").</summary>
internal enum DriverEventType
{
    Ready,
    Result,
    Error,
    Done,
}

/// <summary>What the supervisor needs of one validated driver event; <c>result</c> and <c>error</c> are forwarded as
/// the driver's own bytes.</summary>
internal sealed class DriverEvent
{
    internal required DriverEventType Type { get; init; }

    /// <summary>The cell id (<c>result</c>, <c>error</c>, <c>done</c>).</summary>
    internal string? Id { get; init; }

    /// <summary><c>done</c>: the cell's number.</summary>
    internal int ExecutionCount { get; init; }

    /// <summary><c>done</c>: <c>ok</c>, <c>error</c> or <c>interrupted</c>.</summary>
    internal string? Status { get; init; }

    /// <summary><c>ready</c>: the interpreter's version.</summary>
    internal string? Version { get; init; }

    /// <summary><c>ready</c>: IPython runs the Python context.</summary>
    internal bool IPython { get; init; }
}

/// <summary>
/// Validates driver events, which come from the sandbox and are trusted in nothing: one JSON object per frame,
/// no duplicate keys at the top level or in the mime bundle (a reader that takes the first and one that takes the last
/// would disagree on what the event says), every string valid UTF-8 at any depth, the documented fields of the
/// documented types. Unknown fields are allowed (drivers may add some). One pass, no document built: an event can be
/// 16 MiB.
/// </summary>
internal static class DriverEvents
{
    private static readonly JsonReaderOptions Options = new()
    {
        MaxDepth = 64,
        CommentHandling = JsonCommentHandling.Disallow,
        AllowTrailingCommas = false,
    };

    /// <summary>The event, or null with <paramref name="problem"/> saying what is wrong with it.</summary>
    /// <param name="payload">One frame's payload.</param>
    /// <param name="language">The context's language: a <c>ready</c> must name it.</param>
    /// <param name="problem">Why the event was refused.</param>
    internal static DriverEvent? Parse(ReadOnlySpan<byte> payload, string language, out string? problem)
    {
        try
        {
            return ParseCore(payload, language, out problem);
        }
        catch (JsonException e)
        {
            problem = $"not JSON: {e.Message}";
            return null;
        }
        catch (InvalidOperationException e)
        {
            problem = $"bad JSON value: {e.Message}";
            return null;
        }
    }

    private static DriverEvent? ParseCore(ReadOnlySpan<byte> payload, string language, out string? problem)
    {
        var reader = new Utf8JsonReader(payload, Options);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            problem = "not a JSON object";
            return null;
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string? type = null, id = null, status = null, eventLanguage = null, version = null, name = null, value = null;
        int? count = null;
        bool ipython = false, hasData = false;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var property = PropertyName(ref reader);
            if (!seen.Add(property))
            {
                problem = $"duplicate field '{property}'";
                return null;
            }
            if (!reader.Read())
            {
                problem = "truncated";
                return null;
            }
            problem = null;
            switch (property)
            {
                case "type":
                    type = String(ref reader, property, ref problem);
                    break;
                case "id":
                    id = reader.TokenType == JsonTokenType.Null ? null : String(ref reader, property, ref problem);
                    break;
                case "status":
                    status = String(ref reader, property, ref problem);
                    break;
                case "language":
                    eventLanguage = String(ref reader, property, ref problem);
                    break;
                case "version":
                    version = String(ref reader, property, ref problem);
                    break;
                case "name":
                    name = String(ref reader, property, ref problem);
                    break;
                case "value":
                    value = String(ref reader, property, ref problem);
                    break;
                case "traceback":
                    _ = String(ref reader, property, ref problem);
                    break;
                case "ipython":
                case "isMainResult":
                    if (reader.TokenType is not (JsonTokenType.True or JsonTokenType.False))
                    {
                        problem = $"'{property}' is not a boolean";
                    }
                    else if (property == "ipython")
                    {
                        ipython = reader.GetBoolean();
                    }
                    break;
                case "executionCount":
                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt32(out var n) || n < 0)
                    {
                        problem = "'executionCount' is not a non-negative integer";
                    }
                    else
                    {
                        count = n;
                    }
                    break;
                case "data":
                    hasData = true;
                    problem = Bundle(ref reader);
                    break;
                case "metadata":
                    problem = reader.TokenType == JsonTokenType.StartObject ? Any(ref reader) : "'metadata' is not an object";
                    break;
                default:
                    problem = Any(ref reader);
                    break;
            }
            if (problem is not null)
            {
                return null;
            }
        }
        if (reader.TokenType != JsonTokenType.EndObject || reader.Read())
        {
            problem = "trailing data after the object";
            return null;
        }
        problem = null;
        switch (type)
        {
            case "ready":
                if (eventLanguage != language)
                {
                    problem = $"ready for language '{eventLanguage}', not '{language}'";
                    return null;
                }
                return new DriverEvent { Type = DriverEventType.Ready, Version = version, IPython = ipython };
            case "result" when id is not null && hasData:
                return new DriverEvent { Type = DriverEventType.Result, Id = id };
            case "error" when id is not null && name is not null && value is not null:
                return new DriverEvent { Type = DriverEventType.Error, Id = id };
            case "done" when id is not null && count is not null && status is ("ok" or "error" or "interrupted"):
                return new DriverEvent { Type = DriverEventType.Done, Id = id, ExecutionCount = count.Value, Status = status };
            case "result" or "error" or "done":
                problem = $"'{type}' event without its required fields (a string id and the documented fields)";
                return null;
            default:
                problem = type is null ? "no 'type'" : $"unknown event type '{Cut(type)}'";
                return null;
        }
    }

    private static string PropertyName(ref Utf8JsonReader reader)
    {
        CheckUtf8(ref reader);
        return reader.GetString()!;
    }

    private static string? String(ref Utf8JsonReader reader, string property, ref string? problem)
    {
        if (reader.TokenType != JsonTokenType.String)
        {
            problem = $"'{property}' is not a string";
            return null;
        }
        CheckUtf8(ref reader);
        return reader.GetString();
    }

    /// <summary>A mime bundle: an object of string values with unique keys.</summary>
    private static string? Bundle(ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            return "'data' is not an object";
        }
        var keys = new HashSet<string>(StringComparer.Ordinal);
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var key = PropertyName(ref reader);
            if (!keys.Add(key))
            {
                return $"duplicate mime type '{Cut(key)}' in 'data'";
            }
            if (!reader.Read() || reader.TokenType != JsonTokenType.String)
            {
                return $"'data' value for '{Cut(key)}' is not a string";
            }
            CheckUtf8(ref reader);
        }
        return null;
    }

    /// <summary>Any value (the reader is on its first token): every string and property name must be valid UTF-8.</summary>
    private static string? Any(ref Utf8JsonReader reader)
    {
        if (reader.TokenType is not (JsonTokenType.StartObject or JsonTokenType.StartArray))
        {
            if (reader.TokenType == JsonTokenType.String)
            {
                CheckUtf8(ref reader);
            }
            return null;
        }
        var depth = reader.CurrentDepth;
        while (reader.Read())
        {
            if (reader.TokenType is JsonTokenType.String or JsonTokenType.PropertyName)
            {
                CheckUtf8(ref reader);
            }
            else if (reader.TokenType is (JsonTokenType.EndObject or JsonTokenType.EndArray) && reader.CurrentDepth == depth)
            {
                return null;
            }
        }
        return "truncated";
    }

    /// <summary>The reader does not validate UTF-8 inside strings; the raw bytes are checked here (escapes are ASCII,
    /// so the raw span is valid exactly when the text is, lone escaped surrogates aside).</summary>
    private static void CheckUtf8(ref Utf8JsonReader reader)
    {
        if (!Utf8.IsValid(reader.ValueSpan))
        {
            throw new InvalidOperationException("a string is not valid UTF-8");
        }
    }

    private static string Cut(string text) => text.Length > 64 ? text[..64] + "…" : text;
}
