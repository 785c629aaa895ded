using System.Runtime.CompilerServices;
using System.Text;

namespace SandboxKit.Client.Internal;

/// <summary>One dispatched server-sent event.</summary>
/// <param name="EventType">The <c>event:</c> field, or <c>message</c> when absent.</param>
/// <param name="Data">The <c>data:</c> lines joined with <c>\n</c>.</param>
/// <param name="Id">The last <c>id:</c> seen, if any.</param>
internal readonly record struct ServerSentEvent(string EventType, string Data, string? Id);

/// <summary>
/// Parses a <c>text/event-stream</c> (WHATWG HTML, "Server-sent events") from a byte stream.
/// Reads may end anywhere, including inside a multi-byte UTF-8 sequence or between <c>\r</c> and <c>\n</c>;
/// the decoder keeps partial characters and lines across reads. Comment lines (<c>:</c>) are skipped;
/// <c>retry:</c> is ignored. An event still pending at end of stream is dispatched (the server closes right
/// after its last event, and a truncated one fails JSON parsing rather than vanishing).
/// </summary>
internal static class ServerSentEventReader
{
    public static async IAsyncEnumerable<ServerSentEvent> ReadAsync(
        Stream stream,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);

        // UTF8Encoding(false) + BOM detection strips one leading BOM, as the spec asks.
        using var reader = new StreamReader(
            stream,
            new UTF8Encoding(encoderShouldEmitUTF8Identifier: false),
            detectEncodingFromByteOrderMarks: true,
            bufferSize: 4096,
            leaveOpen: true);

        string? eventType = null;
        string? lastId = null;
        var data = new StringBuilder();
        var hasData = false;

        while (true)
        {
            // StreamReader treats \r\n, \n and \r as line ends, which is exactly the SSE rule.
            var line = await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false);
            if (line is null)
            {
                break;
            }

            if (line.Length == 0)
            {
                if (hasData)
                {
                    yield return new ServerSentEvent(eventType ?? "message", data.ToString(), lastId);
                }

                eventType = null;
                data.Clear();
                hasData = false;
                continue;
            }

            if (line[0] == ':')
            {
                continue; // comment, e.g. ": keepalive"
            }

            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var field = colon < 0 ? line : line[..colon];
            var value = colon < 0 ? string.Empty : line[(colon + 1)..];
            if (value.Length > 0 && value[0] == ' ')
            {
                value = value[1..];
            }

            switch (field)
            {
                case "event":
                    eventType = value;
                    break;
                case "data":
                    if (hasData)
                    {
                        data.Append('\n');
                    }

                    data.Append(value);
                    hasData = true;
                    break;
                case "id":
                    if (!value.Contains('\0', StringComparison.Ordinal))
                    {
                        lastId = value;
                    }

                    break;
                default:
                    break; // "retry" and unknown fields are ignored
            }
        }

        if (hasData)
        {
            yield return new ServerSentEvent(eventType ?? "message", data.ToString(), lastId);
        }
    }
}
