using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Text;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Relay;

/// <summary>Outcome of parsing what may be an HTTP/1.x request head.</summary>
internal enum HttpHeadStatus
{
    /// <summary>Consistent with a request so far; more bytes are needed.</summary>
    NeedMore,

    /// <summary>A complete, valid request head.</summary>
    Complete,

    /// <summary>The first line is not an HTTP/1.x request line: some other protocol.</summary>
    NotHttp,

    /// <summary>An HTTP request, but malformed or ambiguous (smuggling-prone framing, obs-fold, bad Host...).</summary>
    Invalid,

    /// <summary>The head does not fit the inspection bound.</summary>
    TooLarge,
}

/// <summary>How a request's body is delimited.</summary>
internal enum HttpBodyKind
{
    /// <summary>No body.</summary>
    None,

    /// <summary>Exactly <see cref="HttpRequestHead.ContentLength"/> bytes.</summary>
    ContentLength,

    /// <summary>Chunked transfer coding.</summary>
    Chunked,
}

/// <summary>One header line's position in the raw head.</summary>
/// <param name="Name">Header name as sent.</param>
/// <param name="Value">Value without surrounding whitespace (Latin-1, so bytes round-trip).</param>
/// <param name="Start">Offset of the line in the head.</param>
/// <param name="Length">Length of the line including its CRLF.</param>
internal readonly record struct HttpHeaderLine(string Name, string Value, int Start, int Length);

/// <summary>
/// A parsed HTTP/1.x request head. Parsing is strict where laxness enables request smuggling or header injection
/// (RFC 9112): CRLF line endings only, no obs-fold, no whitespace before a colon, one Host, Content-Length and
/// Transfer-Encoding never together, chunked last.
/// </summary>
internal sealed class HttpRequestHead
{
    private const int MaxHeaders = 256;
    private const int MaxRequestLine = 8192;

    private HttpRequestHead()
    {
    }

    /// <summary>Request method.</summary>
    public string Method { get; private init; } = "";

    /// <summary>Request target as sent.</summary>
    public string Target { get; private init; } = "";

    /// <summary>Minor version: 0 or 1.</summary>
    public int MinorVersion { get; private init; }

    /// <summary>Length of the request line including CRLF.</summary>
    public int RequestLineLength { get; private init; }

    /// <summary>Length of the whole head including the empty line.</summary>
    public int Length { get; private init; }

    /// <summary>Header lines in order.</summary>
    public IReadOnlyList<HttpHeaderLine> Headers { get; private init; } = [];

    /// <summary>Body framing.</summary>
    public HttpBodyKind Body { get; private init; }

    /// <summary>Body length for <see cref="HttpBodyKind.ContentLength"/>.</summary>
    public long ContentLength { get; private init; }

    /// <summary>Whether the request asks to switch protocols (Connection: upgrade with Upgrade).</summary>
    public bool IsUpgrade { get; private init; }

    /// <summary>Whether the target is an absolute URI (a client using the gateway as its HTTP proxy).</summary>
    public bool IsAbsoluteForm { get; private init; }

    /// <summary>Whether this is a CONNECT request.</summary>
    public bool IsConnect => Method == "CONNECT";

    /// <summary>The authority the request is for: CONNECT's target, an absolute-form target's, else the Host header; null if none.</summary>
    public HttpAuthority? Authority { get; private init; }

    /// <summary>Parses the head at the start of <paramref name="data"/>, looking at most at <paramref name="maxBytes"/> bytes.</summary>
    public static HttpHeadStatus TryParse(ReadOnlySpan<byte> data, int maxBytes, out HttpRequestHead? head, out string? error)
    {
        head = null;
        error = null;
        var window = data.Length > maxBytes ? data[..maxBytes] : data;

        int lineEnd = window.IndexOf((byte)'\n');
        if (lineEnd < 0)
        {
            if (!CouldBeRequestLine(window))
            {
                return HttpHeadStatus.NotHttp;
            }
            if (window.Length >= Math.Min(maxBytes, MaxRequestLine))
            {
                error = "the request line is too long";
                return HttpHeadStatus.TooLarge;
            }
            return HttpHeadStatus.NeedMore;
        }
        if (lineEnd == 0 || window[lineEnd - 1] != '\r' || !TryParseRequestLine(window[..(lineEnd - 1)], out var method, out var target, out int minor))
        {
            return HttpHeadStatus.NotHttp;
        }

        var headers = new List<HttpHeaderLine>();
        int offset = lineEnd + 1;
        while (true)
        {
            var rest = window[offset..];
            int end = rest.IndexOf((byte)'\n');
            if (end < 0)
            {
                if (window.Length >= maxBytes)
                {
                    error = $"the request head is larger than {maxBytes} bytes";
                    return HttpHeadStatus.TooLarge;
                }
                return HttpHeadStatus.NeedMore;
            }
            if (end == 0 || rest[end - 1] != '\r')
            {
                error = "a header line does not end in CRLF";
                return HttpHeadStatus.Invalid;
            }
            var line = rest[..(end - 1)];
            if (line.IsEmpty)
            {
                offset += end + 1;
                break;
            }
            if (line[0] is (byte)' ' or (byte)'\t')
            {
                error = "obsolete header line folding";
                return HttpHeadStatus.Invalid;
            }
            int colon = line.IndexOf((byte)':');
            if (colon <= 0)
            {
                error = "a header line has no name";
                return HttpHeadStatus.Invalid;
            }
            foreach (byte b in line[..colon])
            {
                if (!HeaderInjection.IsTokenChar(b))
                {
                    error = "a header name is not a token";
                    return HttpHeadStatus.Invalid;
                }
            }
            var value = line[(colon + 1)..].Trim(" \t"u8);
            if (value.IndexOfAny((byte)'\r', (byte)'\0') >= 0)
            {
                error = "a header value contains CR or NUL";
                return HttpHeadStatus.Invalid;
            }
            if (headers.Count == MaxHeaders)
            {
                error = $"more than {MaxHeaders} headers";
                return HttpHeadStatus.Invalid;
            }
            headers.Add(new HttpHeaderLine(Encoding.Latin1.GetString(line[..colon]), Encoding.Latin1.GetString(value), offset, end + 1));
            offset += end + 1;
        }

        if (!TryFrame(headers, minor, out var body, out long contentLength, out error))
        {
            return HttpHeadStatus.Invalid;
        }

        HttpAuthority? authority = null;
        bool absoluteForm = false;
        var hosts = headers.Where(h => h.Name.Equals("Host", StringComparison.OrdinalIgnoreCase)).ToList();
        if (hosts.Count > 1)
        {
            error = "more than one Host header";
            return HttpHeadStatus.Invalid;
        }
        if (hosts.Count == 1 && !HttpAuthority.TryParse(hosts[0].Value, out authority, out error))
        {
            error = "the Host header " + error;
            return HttpHeadStatus.Invalid;
        }
        if (hosts.Count == 0 && minor == 1)
        {
            error = "an HTTP/1.1 request without Host";
            return HttpHeadStatus.Invalid;
        }

        if (method == "CONNECT")
        {
            if (!HttpAuthority.TryParse(target, out var connectTo, out error) || connectTo.Port is null)
            {
                error = "the CONNECT target " + (error ?? "has no port");
                return HttpHeadStatus.Invalid;
            }
            authority = connectTo;
        }
        else if (target.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || target.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
        {
            // Absolute form (a client using the gateway as its HTTP proxy): the URI's authority is the destination,
            // and a Host header saying otherwise makes the request ambiguous.
            int schemeEnd = target.IndexOf("//", StringComparison.Ordinal) + 2;
            int authorityEnd = target.IndexOfAny(['/', '?', '#'], schemeEnd);
            var authorityText = authorityEnd < 0 ? target[schemeEnd..] : target[schemeEnd..authorityEnd];
            if (!HttpAuthority.TryParse(authorityText, out var absolute, out error))
            {
                error = "the request URI's authority " + error;
                return HttpHeadStatus.Invalid;
            }
            if (authority is not null && !authority.SameHost(absolute))
            {
                error = "the Host header differs from the request URI";
                return HttpHeadStatus.Invalid;
            }
            bool https = target.StartsWith("https", StringComparison.OrdinalIgnoreCase);
            absoluteForm = true;
            authority = absolute.Port is null ? absolute with { Port = https ? 443 : 80 } : absolute;
        }
        else if (target != "*" && !target.StartsWith('/'))
        {
            error = "the request target is neither origin, absolute nor authority form";
            return HttpHeadStatus.Invalid;
        }

        bool upgrade = headers.Any(h => h.Name.Equals("Upgrade", StringComparison.OrdinalIgnoreCase))
            && headers.Any(h => h.Name.Equals("Connection", StringComparison.OrdinalIgnoreCase)
                && h.Value.Split(',').Any(t => t.Trim().Equals("upgrade", StringComparison.OrdinalIgnoreCase)));

        head = new HttpRequestHead
        {
            Method = method,
            Target = target,
            MinorVersion = minor,
            RequestLineLength = lineEnd + 1,
            Length = offset,
            Headers = headers,
            Body = body,
            ContentLength = contentLength,
            IsUpgrade = upgrade,
            IsAbsoluteForm = absoluteForm,
            Authority = authority,
        };
        return HttpHeadStatus.Complete;
    }

    private static bool TryFrame(List<HttpHeaderLine> headers, int minor, out HttpBodyKind body, out long contentLength, [NotNullWhen(false)] out string? error)
    {
        body = HttpBodyKind.None;
        contentLength = 0;
        error = null;
        var codings = new List<string>();
        long? length = null;
        foreach (var header in headers)
        {
            if (header.Name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase))
            {
                codings.AddRange(header.Value.Split(',').Select(c => c.Trim().ToLowerInvariant()).Where(c => c.Length > 0));
            }
            else if (header.Name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            {
                foreach (var part in header.Value.Split(','))
                {
                    var text = part.Trim();
                    if (text.Length is 0 or > 18 || !text.All(char.IsAsciiDigit))
                    {
                        error = "an invalid Content-Length";
                        return false;
                    }
                    long value = long.Parse(text, System.Globalization.CultureInfo.InvariantCulture);
                    if (length is not null && length != value)
                    {
                        error = "conflicting Content-Length values";
                        return false;
                    }
                    length = value;
                }
            }
        }
        if (codings.Count > 0)
        {
            if (length is not null)
            {
                error = "both Transfer-Encoding and Content-Length";
                return false;
            }
            if (minor == 0 || codings[^1] != "chunked" || codings.Count(c => c == "chunked") != 1)
            {
                error = "a Transfer-Encoding other than a final chunked";
                return false;
            }
            body = HttpBodyKind.Chunked;
            return true;
        }
        if (length is > 0)
        {
            body = HttpBodyKind.ContentLength;
            contentLength = length.Value;
        }
        return true;
    }

    private static bool TryParseRequestLine(ReadOnlySpan<byte> line, out string method, out string target, out int minor)
    {
        method = target = "";
        minor = 0;
        int first = line.IndexOf((byte)' ');
        int last = line.LastIndexOf((byte)' ');
        if (first <= 0 || last <= first + 1 || first > 20 || line.Length > MaxRequestLine)
        {
            return false;
        }
        foreach (byte b in line[..first])
        {
            if (b is not ((>= (byte)'A' and <= (byte)'Z') or (byte)'-'))
            {
                return false;
            }
        }
        var targetBytes = line[(first + 1)..last];
        foreach (byte b in targetBytes)
        {
            if (b is <= 0x20 or >= 0x7F)
            {
                return false;
            }
        }
        var version = line[(last + 1)..];
        if (!version.SequenceEqual("HTTP/1.1"u8) && !version.SequenceEqual("HTTP/1.0"u8))
        {
            return false;
        }
        method = Encoding.ASCII.GetString(line[..first]);
        target = Encoding.ASCII.GetString(targetBytes);
        minor = version[^1] - '0';
        return true;
    }

    // Whether a first line not yet complete can still turn out to be "METHOD SP target SP HTTP/1.x": decides early that
    // a client-speaks-first protocol which is not HTTP is opaque, without waiting for a line end that may never come.
    private static bool CouldBeRequestLine(ReadOnlySpan<byte> partial)
    {
        int i = 0;
        for (; i < partial.Length && partial[i] != ' '; i++)
        {
            if (i >= 20 || partial[i] is not ((>= (byte)'A' and <= (byte)'Z') or (byte)'-'))
            {
                return false;
            }
        }
        if (i == 0 && partial.Length > 0)
        {
            return false;
        }
        for (i++; i < partial.Length; i++)
        {
            if (partial[i] is < 0x20 or >= 0x7F)
            {
                return false;
            }
        }
        return true;
    }
}

/// <summary>A host (name or IP literal) and optional port from a Host header, a CONNECT target or a request URI.</summary>
/// <param name="Name">Normalised host name, or null for an IP literal.</param>
/// <param name="Address">Canonical IP literal, or null for a name.</param>
/// <param name="Port">The port, if given.</param>
internal sealed record HttpAuthority(string? Name, IPAddress? Address, int? Port)
{
    /// <summary>Parses "host", "host:port", "[v6]" or "[v6]:port" (no user info).</summary>
    public static bool TryParse(string text, [NotNullWhen(true)] out HttpAuthority? authority, [NotNullWhen(false)] out string? error)
    {
        authority = null;
        if (text.Length is 0 or > 300 || text.Contains('@'))
        {
            error = "is empty, too long or has user info";
            return false;
        }
        string host;
        string? portText = null;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']', StringComparison.Ordinal);
            if (close < 0 || (close + 1 < text.Length && text[close + 1] != ':'))
            {
                error = "has a malformed IPv6 literal";
                return false;
            }
            host = text[1..close];
            portText = close + 1 < text.Length ? text[(close + 2)..] : null;
            if (!IpText.TryParseAddress(host, out var v6) || !host.Contains(':'))
            {
                error = "has a malformed IPv6 literal";
                return false;
            }
            return TryFinish(null, v6, portText, out authority, out error);
        }
        int colon = text.IndexOf(':', StringComparison.Ordinal);
        if (colon >= 0)
        {
            host = text[..colon];
            portText = text[(colon + 1)..];
        }
        else
        {
            host = text;
        }
        if (IpText.TryParseAddress(host, out var v4))
        {
            return TryFinish(null, v4, portText, out authority, out error);
        }
        if (!HostName.TryNormalize(host, out var name, out error))
        {
            error = "is not a valid host: it " + error;
            return false;
        }
        return TryFinish(name, null, portText, out authority, out error);
    }

    /// <summary>Whether both name the same host (ports aside).</summary>
    public bool SameHost(HttpAuthority other) => Name == other.Name && Equals(Address, other.Address);

    /// <inheritdoc />
    public override string ToString() => (Name ?? Address?.ToString()) + (Port is int p ? ":" + p.ToString(System.Globalization.CultureInfo.InvariantCulture) : "");

    private static bool TryFinish(string? name, IPAddress? address, string? portText, [NotNullWhen(true)] out HttpAuthority? authority, [NotNullWhen(false)] out string? error)
    {
        authority = null;
        int? port = null;
        if (portText is not null)
        {
            if (portText.Length is 0 or > 5 || !portText.All(char.IsAsciiDigit) || int.Parse(portText, System.Globalization.CultureInfo.InvariantCulture) is < 1 or > 65535)
            {
                error = "has an invalid port";
                return false;
            }
            port = int.Parse(portText, System.Globalization.CultureInfo.InvariantCulture);
        }
        authority = new HttpAuthority(name, address, port);
        error = null;
        return true;
    }
}
