namespace SandboxKit.Egress.Policy;

/// <summary>The ports a rule covers: one port, the web defaults (80 and 443), or any port.</summary>
internal readonly record struct PortSet
{
    private PortSet(PortSetKind kind, int port)
    {
        Kind = kind;
        Port = port;
    }

    /// <summary>80 and 443: what an allow rule without a port means.</summary>
    public static PortSet WebDefaults { get; } = new(PortSetKind.WebDefaults, 0);

    /// <summary>Every port: what a deny rule without a port means, and what ":*" says.</summary>
    public static PortSet Any { get; } = new(PortSetKind.Any, 0);

    /// <summary>The kind of set.</summary>
    public PortSetKind Kind { get; }

    /// <summary>The port of a <see cref="PortSetKind.Single"/> set.</summary>
    public int Port { get; }

    /// <summary>A set of one port (1-65535).</summary>
    public static PortSet Single(int port) =>
        port is >= 1 and <= 65535 ? new(PortSetKind.Single, port) : throw new ArgumentOutOfRangeException(nameof(port));

    /// <summary>Whether the set holds <paramref name="port"/>.</summary>
    public bool Contains(int port) => Kind switch
    {
        PortSetKind.Any => true,
        PortSetKind.WebDefaults => port is 80 or 443,
        _ => port == Port,
    };

    /// <summary>Whether every port of <paramref name="other"/> is in this set.</summary>
    public bool Covers(PortSet other) => Kind switch
    {
        PortSetKind.Any => true,
        PortSetKind.WebDefaults => other.Kind == PortSetKind.WebDefaults || (other.Kind == PortSetKind.Single && other.Port is 80 or 443),
        _ => other.Kind == PortSetKind.Single && other.Port == Port,
    };

    /// <summary>The suffix in rule syntax: "", ":443" or ":*".</summary>
    public string Suffix(bool defaultIsAny) => Kind switch
    {
        PortSetKind.Single => $":{Port}",
        PortSetKind.Any => defaultIsAny ? "" : ":*",
        _ => defaultIsAny ? ":80,443" : "",
    };

    /// <inheritdoc />
    public override string ToString() => Kind switch
    {
        PortSetKind.Single => Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
        PortSetKind.Any => "*",
        _ => "80,443",
    };
}

/// <summary>Kinds of <see cref="PortSet"/>.</summary>
internal enum PortSetKind
{
    /// <summary>80 and 443.</summary>
    WebDefaults,

    /// <summary>One port.</summary>
    Single,

    /// <summary>Every port.</summary>
    Any,
}
