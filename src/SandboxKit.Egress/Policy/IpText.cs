using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;

namespace SandboxKit.Egress.Policy;

/// <summary>Strict IP literal and CIDR parsing, and the one canonical form addresses are compared in.</summary>
internal static class IpText
{
    /// <summary>
    /// Parses an IP literal strictly: IPv4 only as four decimal octets without leading zeros (no "1.2.3", "0x7f.1" or
    /// "010.0.0.1", which <see cref="IPAddress.TryParse(string, out IPAddress)"/> accepts and different software reads
    /// differently), IPv6 without a zone. The result is canonical (<see cref="Canonical"/>).
    /// </summary>
    public static bool TryParseAddress(ReadOnlySpan<char> text, [NotNullWhen(true)] out IPAddress? address)
    {
        address = null;
        if (text.IsEmpty || text.Length > 64)
        {
            return false;
        }
        if (text.Contains(':'))
        {
            if (text.Contains('%') || !IPAddress.TryParse(text, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                return false;
            }
            address = Canonical(v6);
            return true;
        }

        Span<byte> octets = stackalloc byte[4];
        int octet = 0, value = 0, digits = 0;
        for (int i = 0; i <= text.Length; i++)
        {
            if (i == text.Length || text[i] == '.')
            {
                if (digits == 0 || octet > 3 || (digits > 1 && text[i - digits] == '0'))
                {
                    return false;
                }
                octets[octet++] = (byte)value;
                value = 0;
                digits = 0;
                continue;
            }
            if (!char.IsAsciiDigit(text[i]) || ++digits > 3)
            {
                return false;
            }
            value = value * 10 + (text[i] - '0');
            if (value > 255)
            {
                return false;
            }
        }
        if (octet != 4)
        {
            return false;
        }
        address = new IPAddress(octets);
        return true;
    }

    /// <summary>
    /// Parses "a.b.c.d/n", "x::/n" or a bare address (a /32 or /128). Host bits must be zero, so "10.1.2.3/24" is
    /// refused rather than silently widened.
    /// </summary>
    public static bool TryParseNetwork(string text, out IPNetwork network, [NotNullWhen(false)] out string? error)
    {
        network = default;
        int slash = text.IndexOf('/');
        var addressText = slash < 0 ? text.AsSpan() : text.AsSpan(0, slash);
        if (!TryParseAddress(addressText, out var address))
        {
            error = "is not a valid IP address or CIDR range";
            return false;
        }
        // Ranges are compared in canonical form: an IPv4-mapped IPv6 range ("::ffff:10.0.0.0/104") is its IPv4 range.
        bool mapped = addressText.Contains(':') && address.AddressFamily == AddressFamily.InterNetwork;
        int maxPrefix = address.AddressFamily == AddressFamily.InterNetwork && !mapped ? 32 : 128;
        int prefix = maxPrefix;
        if (slash >= 0)
        {
            var prefixText = text.AsSpan(slash + 1);
            if (prefixText.IsEmpty || prefixText.Length > 3
                || !int.TryParse(prefixText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out prefix)
                || prefix > maxPrefix)
            {
                error = $"has an invalid prefix length (0-{maxPrefix})";
                return false;
            }
        }
        if (mapped)
        {
            prefix -= 96;
            if (prefix < 0)
            {
                error = "is an IPv4-mapped range shorter than /96";
                return false;
            }
        }
        var masked = new IPNetwork(Mask(address, prefix), prefix);
        if (!masked.BaseAddress.Equals(address))
        {
            error = $"has host bits set (did you mean {masked}?)";
            return false;
        }
        network = masked;
        error = null;
        return true;
    }

    /// <summary>The form every comparison uses: IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4; IPv6 scope ids are dropped.</summary>
    public static IPAddress Canonical(IPAddress address)
    {
        if (address.AddressFamily == AddressFamily.InterNetworkV6)
        {
            if (address.IsIPv4MappedToIPv6)
            {
                return address.MapToIPv4();
            }
            if (address.ScopeId != 0)
            {
                return new IPAddress(address.GetAddressBytes());
            }
        }
        return address;
    }

    /// <summary>Whether <paramref name="inner"/> lies entirely within <paramref name="outer"/>.</summary>
    public static bool Contains(IPNetwork outer, IPNetwork inner) =>
        outer.BaseAddress.AddressFamily == inner.BaseAddress.AddressFamily
        && outer.PrefixLength <= inner.PrefixLength
        && outer.Contains(inner.BaseAddress);

    /// <summary>Whether the two ranges share any address.</summary>
    public static bool Overlaps(IPNetwork a, IPNetwork b) => Contains(a, b) || Contains(b, a);

    /// <summary>Formats an endpoint as host:port with brackets for IPv6.</summary>
    public static string Format(IPAddress address, int port) =>
        address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]:{port}" : $"{address}:{port}";

    private static IPAddress Mask(IPAddress address, int prefix)
    {
        var bytes = address.GetAddressBytes();
        for (int i = 0; i < bytes.Length; i++)
        {
            int bits = Math.Clamp(prefix - i * 8, 0, 8);
            bytes[i] &= (byte)(0xFF << (8 - bits));
        }
        return new IPAddress(bytes);
    }
}
