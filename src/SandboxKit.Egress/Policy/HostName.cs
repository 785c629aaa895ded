using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;

namespace SandboxKit.Egress.Policy;

/// <summary>
/// One spelling per host name, shared by rules, DNS questions, SNI and Host headers: lower case, IDNA A-labels
/// (Punycode), no trailing dot. A name only ever matches a rule after both went through here, so "PyPI.org." and
/// "pypi.org" are the same name and a Unicode rule matches the A-label a client puts on the wire.
/// </summary>
/// <remarks>
/// IDNA uses <see cref="IdnMapping"/>. With ICU that is UTS #46; under invariant globalization (the server's mode)
/// it is lower-casing plus Punycode, without NFKC mapping of e.g. full-width letters. Such a name then simply does
/// not match a rule written in ASCII: the difference fails closed.
/// </remarks>
internal static class HostName
{
    /// <summary>Longest name in text form (RFC 1035's 255 octets on the wire).</summary>
    public const int MaxLength = 253;

    /// <summary>Longest label.</summary>
    public const int MaxLabelLength = 63;

    // Inputs longer than this are rejected before any IDNA work, so garbage costs nothing.
    private const int MaxInputLength = 1024;

    private static readonly IdnMapping Idn = new() { AllowUnassigned = false, UseStd3AsciiRules = false };

    /// <summary>Normalises <paramref name="input"/>; on failure <paramref name="error"/> says why (without echoing the input).</summary>
    public static bool TryNormalize(string? input, [NotNullWhen(true)] out string? name, [NotNullWhen(false)] out string? error)
    {
        name = null;
        if (string.IsNullOrEmpty(input))
        {
            error = "is empty";
            return false;
        }
        if (input.Length > MaxInputLength)
        {
            error = "is too long";
            return false;
        }

        var text = input.EndsWith('.') ? input[..^1] : input;
        if (text.Length == 0)
        {
            error = "is empty";
            return false;
        }

        bool ascii = true;
        foreach (char c in text)
        {
            if (c > 0x7F)
            {
                ascii = false;
            }
            else if (c <= ' ' || c == 0x7F)
            {
                error = "contains whitespace or control characters";
                return false;
            }
        }

        if (ascii)
        {
            text = text.ToLowerInvariant();
        }
        else
        {
            try
            {
                text = Idn.GetAscii(text.ToLowerInvariant());
            }
            catch (ArgumentException)
            {
                error = "is not a valid internationalised domain name";
                return false;
            }
        }

        if (!TryValidateAscii(text, out error))
        {
            return false;
        }
        name = text;
        return true;
    }

    /// <summary>Normalises an ASCII name read from the wire (DNS labels, SNI); no IDNA mapping, only case and checks.</summary>
    public static bool TryNormalizeWire(ReadOnlySpan<byte> bytes, [NotNullWhen(true)] out string? name)
    {
        name = null;
        if (bytes.IsEmpty || bytes.Length > MaxLength + 1)
        {
            return false;
        }
        foreach (byte b in bytes)
        {
            if (b > 0x7F)
            {
                return false;
            }
        }
        return TryNormalize(Encoding.ASCII.GetString(bytes), out name, out _);
    }

    /// <summary>Whether <paramref name="name"/> is <paramref name="suffix"/> or one of its subdomains, label-aligned.</summary>
    public static bool IsSubdomainOf(string name, string suffix) =>
        name.Length > suffix.Length + 1
        && name.EndsWith(suffix, StringComparison.Ordinal)
        && name[name.Length - suffix.Length - 1] == '.';

    /// <summary>Shortens and de-controls untrusted text before it is put in a message.</summary>
    public static string Display(string? text, int max = 80)
    {
        if (text is null)
        {
            return "(null)";
        }
        var builder = new StringBuilder(Math.Min(text.Length, max) + 3);
        foreach (char c in text)
        {
            if (builder.Length == max)
            {
                builder.Append("...");
                break;
            }
            builder.Append(char.IsControl(c) ? '?' : c);
        }
        return builder.ToString();
    }

    private static bool TryValidateAscii(string text, [NotNullWhen(false)] out string? error)
    {
        if (text.Length > MaxLength)
        {
            error = $"is longer than {MaxLength} characters";
            return false;
        }

        int labelStart = 0;
        for (int i = 0; i <= text.Length; i++)
        {
            if (i < text.Length && text[i] != '.')
            {
                char c = text[i];
                // Letters, digits, hyphen; underscore too, since service names (_acme, docker_compose) use it.
                if (!(c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-' or '_'))
                {
                    error = $"contains the character '{(char.IsControl(c) ? '?' : c)}', which is not allowed in a host name";
                    return false;
                }
                continue;
            }

            int length = i - labelStart;
            if (length == 0)
            {
                error = "has an empty label";
                return false;
            }
            if (length > MaxLabelLength)
            {
                error = $"has a label longer than {MaxLabelLength} characters";
                return false;
            }
            if (text[labelStart] == '-' || text[i - 1] == '-')
            {
                error = "has a label that starts or ends with '-'";
                return false;
            }
            if (length > 4 && string.CompareOrdinal(text, labelStart, "xn--", 0, 4) == 0)
            {
                try
                {
                    _ = Idn.GetUnicode(text.Substring(labelStart, length));
                }
                catch (ArgumentException)
                {
                    error = "has an invalid Punycode (xn--) label";
                    return false;
                }
            }
            labelStart = i + 1;
        }

        // WHATWG URL parsers read a name whose last label is numeric as an IPv4 address ("1.2.3", "0x7f.1"): refuse
        // such names so a rule or a Host header can never mean two different things.
        int lastDot = text.LastIndexOf('.');
        var last = text.AsSpan(lastDot + 1);
        bool numeric = true;
        foreach (char c in last)
        {
            numeric &= char.IsAsciiDigit(c);
        }
        if (numeric || (last.Length > 2 && last[0] == '0' && last[1] == 'x'))
        {
            error = "looks like a numeric address, not a host name";
            return false;
        }

        error = null;
        return true;
    }
}
