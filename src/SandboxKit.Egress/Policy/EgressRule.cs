using System.Diagnostics.CodeAnalysis;
using System.Net;

namespace SandboxKit.Egress.Policy;

/// <summary>What a rule matches.</summary>
internal enum EgressRuleKind
{
    /// <summary>One host name ("pypi.org").</summary>
    ExactName,

    /// <summary>Every subdomain of a name, at any depth, not the name itself ("*.pythonhosted.org").</summary>
    WildcardName,

    /// <summary>Every host name ("*"); operators use it for "any name", it never matches an IP literal.</summary>
    AnyName,

    /// <summary>An IPv4 or IPv6 range; it matches IP-literal connections only, never a name.</summary>
    Network,
}

/// <summary>
/// One parsed rule: "pypi.org", "*.pythonhosted.org", "*", "10.1.2.0/24", "[2001:db8::/32]", each optionally with
/// ":port" or ":*". Immutable; the same type serves tenant allow and deny rules and operator patterns.
/// </summary>
internal sealed class EgressRule
{
    private EgressRule(EgressRuleKind kind, string? name, IPNetwork network, PortSet ports)
    {
        Kind = kind;
        Name = name;
        Network = network;
        Ports = ports;
    }

    /// <summary>What the rule matches.</summary>
    public EgressRuleKind Kind { get; }

    /// <summary>The exact name, or the suffix of a wildcard (without "*."); null for <see cref="EgressRuleKind.AnyName"/> and networks.</summary>
    public string? Name { get; }

    /// <summary>The range of a <see cref="EgressRuleKind.Network"/> rule.</summary>
    public IPNetwork Network { get; }

    /// <summary>The ports the rule covers.</summary>
    public PortSet Ports { get; }

    /// <summary>Whether the rule is about names (any kind but <see cref="EgressRuleKind.Network"/>).</summary>
    public bool IsNameRule => Kind != EgressRuleKind.Network;

    /// <summary>TLS to names of this rule is terminated so headers can be added (allow rules only).</summary>
    public bool TerminateTls { get; private init; }

    /// <summary>Headers added to HTTP requests to names of this rule (allow rules only).</summary>
    public IReadOnlyList<HeaderInjection> Headers { get; private init; } = [];

    /// <summary>
    /// Parses rule text. <paramref name="portlessIsAny"/> says what a rule without a port covers: every port (deny
    /// rules: "deny evil.example" means all of it) or 80 and 443 (allow rules and operator patterns).
    /// </summary>
    public static bool TryParse(string? text, bool portlessIsAny, [NotNullWhen(true)] out EgressRule? rule, [NotNullWhen(false)] out string? error)
    {
        rule = null;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "is empty";
            return false;
        }
        if (text.Length > 300)
        {
            error = "is too long";
            return false;
        }

        string hostPart;
        string? portPart = null;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
            {
                error = "has '[' without ']'";
                return false;
            }
            hostPart = text[1..close];
            var rest = text[(close + 1)..];
            if (rest.Length > 0)
            {
                if (rest[0] != ':')
                {
                    error = "has text after ']' that is not ':port'";
                    return false;
                }
                portPart = rest[1..];
            }
        }
        else
        {
            int colons = text.Count(c => c == ':');
            // More than one colon without brackets is an IPv6 literal or range, which then has no port.
            if (colons == 1)
            {
                int colon = text.IndexOf(':', StringComparison.Ordinal);
                hostPart = text[..colon];
                portPart = text[(colon + 1)..];
            }
            else
            {
                hostPart = text;
            }
        }

        PortSet ports = portlessIsAny ? PortSet.Any : PortSet.WebDefaults;
        if (portPart is not null)
        {
            if (portPart == "*")
            {
                ports = PortSet.Any;
            }
            else if (portPart.Length is >= 1 and <= 5 && portPart.All(char.IsAsciiDigit) && int.Parse(portPart, System.Globalization.CultureInfo.InvariantCulture) is >= 1 and <= 65535 and var port)
            {
                ports = PortSet.Single(port);
            }
            else
            {
                error = "has an invalid port (1-65535 or *)";
                return false;
            }
        }

        if (hostPart.Contains('/') || hostPart.Contains(':') || IpText.TryParseAddress(hostPart, out _))
        {
            if (!IpText.TryParseNetwork(hostPart, out var network, out error))
            {
                return false;
            }
            rule = new EgressRule(EgressRuleKind.Network, null, network, ports);
            return true;
        }

        if (hostPart == "*")
        {
            rule = new EgressRule(EgressRuleKind.AnyName, null, default, ports);
            error = null;
            return true;
        }

        bool wildcard = hostPart.StartsWith("*.", StringComparison.Ordinal);
        var namePart = wildcard ? hostPart[2..] : hostPart;
        if (namePart.Contains('*'))
        {
            error = "may use '*' only as the whole first label (*.example.com) or alone";
            return false;
        }
        if (!HostName.TryNormalize(namePart, out var name, out error))
        {
            return false;
        }
        rule = new EgressRule(wildcard ? EgressRuleKind.WildcardName : EgressRuleKind.ExactName, name, default, ports);
        return true;
    }

    /// <summary>A copy carrying the allow rule's options.</summary>
    public EgressRule WithOptions(bool terminateTls, IReadOnlyList<HeaderInjection> headers) =>
        new(Kind, Name, Network, Ports) { TerminateTls = terminateTls, Headers = headers };

    /// <summary>Whether the rule matches a (normalised) host name.</summary>
    public bool MatchesName(string name) => Kind switch
    {
        EgressRuleKind.ExactName => name == Name,
        EgressRuleKind.WildcardName => HostName.IsSubdomainOf(name, Name!),
        EgressRuleKind.AnyName => true,
        _ => false,
    };

    /// <summary>Whether the rule matches a (canonical) address.</summary>
    public bool MatchesAddress(IPAddress address) => Kind == EgressRuleKind.Network && Network.Contains(address);

    /// <summary>Whether every name, address and port this rule matches is matched by <paramref name="pattern"/>.</summary>
    public bool IsWithin(EgressRule pattern)
    {
        if (!pattern.Ports.Covers(Ports))
        {
            return false;
        }
        return (pattern.Kind, Kind) switch
        {
            (EgressRuleKind.Network, EgressRuleKind.Network) => IpText.Contains(pattern.Network, Network),
            (EgressRuleKind.Network, _) or (_, EgressRuleKind.Network) => false,
            (EgressRuleKind.AnyName, _) => true,
            (EgressRuleKind.ExactName, EgressRuleKind.ExactName) => Name == pattern.Name,
            (EgressRuleKind.WildcardName, EgressRuleKind.ExactName) => HostName.IsSubdomainOf(Name!, pattern.Name!),
            (EgressRuleKind.WildcardName, EgressRuleKind.WildcardName) => Name == pattern.Name || HostName.IsSubdomainOf(Name!, pattern.Name!),
            _ => false,
        };
    }

    /// <summary>
    /// Orders matching rules: the most specific one decides TLS termination and headers (exact name, then the longest
    /// wildcard suffix, then "*"; an explicit port before a port set).
    /// </summary>
    public int Specificity => (Kind switch
    {
        EgressRuleKind.ExactName => 3000,
        EgressRuleKind.WildcardName => 1000 + Name!.Length,
        _ => 0,
    }) * 2 + (Ports.Kind == PortSetKind.Single ? 1 : 0);

    /// <summary>The rule in its canonical text form (no header values).</summary>
    public string Text => FormatHost() + Ports.Suffix(defaultIsAny: false);

    /// <inheritdoc />
    public override string ToString()
    {
        var text = Text;
        if (TerminateTls)
        {
            text += " (terminate TLS)";
        }
        if (Headers.Count > 0)
        {
            text += " (adds " + string.Join(", ", Headers.Select(h => h.Name)) + ")";
        }
        return text;
    }

    private string FormatHost() => Kind switch
    {
        EgressRuleKind.ExactName => Name!,
        EgressRuleKind.WildcardName => "*." + Name,
        EgressRuleKind.AnyName => "*",
        _ => Network.BaseAddress.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{Network}]" : Network.ToString(),
    };
}
