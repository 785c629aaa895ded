using System.Net;
using System.Net.Sockets;

namespace SandboxKit.Egress.Policy;

/// <summary>
/// The address checks no tenant rule can lift: the always-denied special ranges (unless the operator allowed a range
/// explicitly) and the operator's own deny ranges. Applied to every address a connection would really reach, i.e.
/// after name resolution, never to a name.
/// </summary>
internal sealed class AddressGuard
{
    private static readonly (IPNetwork Range, string Label)[] SpecialRanges =
    [
        (IPNetwork.Parse("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
        (IPNetwork.Parse("10.0.0.0/8"), "private (RFC 1918)"),
        (IPNetwork.Parse("100.64.0.0/10"), "shared address space (CGNAT, 100.64.0.0/10)"),
        (IPNetwork.Parse("127.0.0.0/8"), "loopback"),
        (IPNetwork.Parse("169.254.0.0/16"), "link-local (incl. cloud metadata 169.254.169.254)"),
        (IPNetwork.Parse("172.16.0.0/12"), "private (RFC 1918)"),
        (IPNetwork.Parse("192.168.0.0/16"), "private (RFC 1918)"),
        (IPNetwork.Parse("224.0.0.0/4"), "multicast"),
        (IPNetwork.Parse("240.0.0.0/4"), "reserved or broadcast"),
        (IPNetwork.Parse("::/128"), "unspecified"),
        (IPNetwork.Parse("::1/128"), "loopback"),
        (IPNetwork.Parse("::/96"), "IPv4-compatible IPv6 (deprecated)"),
        (IPNetwork.Parse("64:ff9b:1::/48"), "local-use NAT64"),
        (IPNetwork.Parse("2001::/32"), "Teredo tunnel"),
        (IPNetwork.Parse("fc00::/7"), "unique local (ULA)"),
        (IPNetwork.Parse("fe80::/10"), "link-local"),
        (IPNetwork.Parse("fec0::/10"), "site-local (deprecated)"),
        (IPNetwork.Parse("ff00::/8"), "multicast"),
    ];

    // IPv6 prefixes that carry an IPv4 address a translator would reach: checked as that IPv4 address too.
    private static readonly IPNetwork Nat64 = IPNetwork.Parse("64:ff9b::/96");
    private static readonly IPNetwork SixToFour = IPNetwork.Parse("2002::/16");

    private readonly IReadOnlyList<IPNetwork> _operatorDeny;
    private readonly IReadOnlyList<IPNetwork> _operatorAllowed;

    /// <summary>Creates the guard from the operator's extra deny ranges and explicitly allowed special ranges.</summary>
    public AddressGuard(IReadOnlyList<IPNetwork> operatorDeny, IReadOnlyList<IPNetwork> operatorAllowed)
    {
        _operatorDeny = operatorDeny;
        _operatorAllowed = operatorAllowed;
    }

    /// <summary>Why <paramref name="address"/> must not be reached, or null when it may (subject to the tenant's rules).</summary>
    public string? Check(IPAddress address)
    {
        address = IpText.Canonical(address);
        foreach (var range in _operatorDeny)
        {
            if (range.Contains(address))
            {
                return $"{address} is in the operator's deny range {range}";
            }
        }
        if (IsOperatorAllowed(address))
        {
            return null;
        }
        if (ClassifySpecial(address) is { } label)
        {
            return $"{address} is {label}, which is always denied";
        }
        if (EmbeddedIPv4(address) is { } embedded)
        {
            if (ClassifySpecial(embedded) is { } embeddedLabel && !IsOperatorAllowed(embedded))
            {
                return $"{address} embeds {embedded}, which is {embeddedLabel} and always denied";
            }
            foreach (var range in _operatorDeny)
            {
                if (range.Contains(embedded))
                {
                    return $"{address} embeds {embedded}, in the operator's deny range {range}";
                }
            }
        }
        return null;
    }

    /// <summary>The label of the always-denied range holding <paramref name="address"/>, or null.</summary>
    public static string? ClassifySpecial(IPAddress address)
    {
        address = IpText.Canonical(address);
        foreach (var (range, label) in SpecialRanges)
        {
            if (range.Contains(address))
            {
                return label;
            }
        }
        return null;
    }

    /// <summary>Whether an always-denied range covers all of <paramref name="network"/> (and the operator allowed none of it).</summary>
    public string? FullyDenied(IPNetwork network)
    {
        foreach (var allowed in _operatorAllowed)
        {
            if (IpText.Overlaps(allowed, network))
            {
                return null;
            }
        }
        foreach (var range in _operatorDeny)
        {
            if (IpText.Contains(range, network))
            {
                return $"the operator's deny range {range}";
            }
        }
        foreach (var (range, label) in SpecialRanges)
        {
            if (IpText.Contains(range, network))
            {
                return $"{range}, {label}, which is always denied";
            }
        }
        return null;
    }

    private bool IsOperatorAllowed(IPAddress address)
    {
        foreach (var range in _operatorAllowed)
        {
            if (range.Contains(address))
            {
                return true;
            }
        }
        return false;
    }

    private static IPAddress? EmbeddedIPv4(IPAddress address)
    {
        if (address.AddressFamily != AddressFamily.InterNetworkV6)
        {
            return null;
        }
        var bytes = address.GetAddressBytes();
        if (Nat64.Contains(address))
        {
            return new IPAddress(bytes.AsSpan(12, 4));
        }
        if (SixToFour.Contains(address))
        {
            return new IPAddress(bytes.AsSpan(2, 4));
        }
        return null;
    }
}
