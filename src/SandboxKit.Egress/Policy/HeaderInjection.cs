using System.Text;

namespace SandboxKit.Egress.Policy;

/// <summary>
/// A header the gateway puts on requests to a domain, typically a credential. The value is reachable only through
/// <see cref="CopyTo"/>, which writes it into the upstream request; <see cref="ToString"/> and every message show the
/// name alone, so a secret cannot end up in a log, a decision record or an exception by accident.
/// </summary>
internal sealed class HeaderInjection
{
    /// <summary>Longest value accepted.</summary>
    public const int MaxValueLength = 8192;

    // Headers that frame or route the message: replacing one would break or smuggle requests, so none is injectable.
    private static readonly HashSet<string> Forbidden = new(StringComparer.OrdinalIgnoreCase)
    {
        "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive",
        "proxy-connection", "expect",
    };

    private readonly byte[] _line;

    private HeaderInjection(string name, byte[] line)
    {
        Name = name;
        _line = line;
    }

    /// <summary>The header name as configured (compared case-insensitively).</summary>
    public string Name { get; }

    /// <summary>Builds an injection, or says why the name or value is unusable (the message never contains the value).</summary>
    public static HeaderInjection? TryCreate(string? name, string? value, out string? error)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 128 || !IsToken(name))
        {
            error = $"header name '{HostName.Display(name, 40)}' is not a valid HTTP header name";
            return null;
        }
        if (Forbidden.Contains(name))
        {
            error = $"header '{name}' frames or routes the request and cannot be set at egress";
            return null;
        }
        if (value is null || value.Length > MaxValueLength)
        {
            error = $"header '{name}': the value is missing or longer than {MaxValueLength} characters";
            return null;
        }
        foreach (char c in value)
        {
            // Visible ASCII, space and tab only: a CR or LF would let a value inject further headers or requests.
            if (c != '\t' && (c < ' ' || c > '~'))
            {
                error = $"header '{name}': the value contains a control or non-ASCII character";
                return null;
            }
        }
        error = null;
        return new HeaderInjection(name, Encoding.ASCII.GetBytes($"{name}: {value.Trim()}\r\n"));
    }

    /// <summary>The header line's length in bytes.</summary>
    public int LineLength => _line.Length;

    /// <summary>Copies the header line into <paramref name="destination"/>.</summary>
    public void CopyTo(Span<byte> destination) => _line.CopyTo(destination);

    /// <inheritdoc />
    public override string ToString() => $"{Name}: (secret)";

    /// <summary>Whether <paramref name="name"/> is an RFC 9110 token.</summary>
    public static bool IsToken(ReadOnlySpan<char> name)
    {
        if (name.IsEmpty)
        {
            return false;
        }
        foreach (char c in name)
        {
            if (!IsTokenChar(c))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Whether <paramref name="c"/> is an RFC 9110 tchar.</summary>
    public static bool IsTokenChar(int c) =>
        c is >= 'a' and <= 'z' or >= 'A' and <= 'Z' or >= '0' and <= '9'
            or '!' or '#' or '$' or '%' or '&' or '\'' or '*' or '+' or '-' or '.' or '^' or '_' or '`' or '|' or '~';
}
