using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Configuration;

namespace SandboxKit.Egress;

/// <summary>
/// Operator settings of the egress gateway, bound from the <c>Sandbox:Egress</c> configuration section
/// (<see cref="FromConfiguration"/>). They bound what a tenant's policy may ask for and configure resolution, DNS,
/// the relay and TLS termination. <see cref="EgressGateway"/> validates them at construction.
/// </summary>
internal sealed class EgressOptions
{
    /// <summary>Configuration section.</summary>
    public const string Section = "Sandbox:Egress";

    /// <summary>
    /// Static name → address map, consulted before anything else (<c>Sandbox:Egress:Hosts:pypi.org=10.0.0.5</c>;
    /// several addresses separated by commas). Air-gapped deployments and every test resolve through it alone.
    /// </summary>
    public Dictionary<string, string> Hosts { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Whether names missing from <see cref="Hosts"/> are resolved by the server's system resolver (off by default).</summary>
    public bool UseSystemResolver { get; set; }

    /// <summary>
    /// Rule patterns a tenant rule must lie within, in rule syntax ("*.example.com", "pypi.org:443", "*:*",
    /// "10.0.0.0/8:5432"). Empty means tenants may allow nothing.
    /// </summary>
    public List<string> AllowedRulePatterns { get; set; } = [];

    /// <summary>Most allow plus deny rules in one tenant policy.</summary>
    public int MaxRules { get; set; } = 64;

    /// <summary>Whether tenant allow rules may be IP ranges at all (deny rules may always be).</summary>
    public bool AllowCidrRules { get; set; }

    /// <summary>Extra ranges no connection may reach, on top of the always-denied special ranges.</summary>
    public List<string> DenyRanges { get; set; } = [];

    /// <summary>
    /// Special ranges (private, loopback, link-local...) the operator lets connections reach anyway, e.g. an internal
    /// package mirror's subnet. A tenant rule must still allow the name or range.
    /// </summary>
    public List<string> AllowedPrivateRanges { get; set; } = [];

    /// <summary>Headers (credentials) the operator adds to requests for some domains, whatever the tenant's policy says.</summary>
    public List<EgressSecretOptions> Secrets { get; set; } = [];

    /// <summary>Decisions kept per session for the read API.</summary>
    public int DecisionLogSize { get; set; } = 1000;

    /// <summary>DNS answering.</summary>
    public EgressDnsOptions Dns { get; set; } = new();

    /// <summary>TCP relaying.</summary>
    public EgressTcpOptions Tcp { get; set; } = new();

    /// <summary>TLS termination and upstream certificate validation.</summary>
    public EgressTlsOptions Tls { get; set; } = new();

    /// <summary>Binds the options from <paramref name="configuration"/>'s <see cref="Section"/> (or from it directly if it is that section).</summary>
    public static EgressOptions FromConfiguration(IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        var section = configuration is IConfigurationSection { Path: var path } && string.Equals(path, Section, StringComparison.OrdinalIgnoreCase)
            ? (IConfiguration)configuration
            : configuration.GetSection(Section);
        var options = new EgressOptions();
        section.Bind(options);
        return options;
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"EgressOptions(hosts: {Hosts.Count}, patterns: [{string.Join(", ", AllowedRulePatterns)}], secrets: {Secrets.Count})";
}

/// <summary>Headers the operator adds to HTTP requests for names matching <see cref="Match"/>.</summary>
internal sealed class EgressSecretOptions
{
    /// <summary>Name rule the entry applies to ("api.example.com", "*.example.com", optionally with a port).</summary>
    public string Match { get; set; } = "";

    /// <summary>Terminate TLS for these names so the headers reach HTTPS requests too.</summary>
    public bool TerminateTls { get; set; }

    /// <summary>Header name → value; a header of the same name sent by the sandbox is replaced.</summary>
    public Dictionary<string, string> Headers { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <inheritdoc />
    public override string ToString() => $"{Match} (adds {string.Join(", ", Headers.Keys)})";
}

/// <summary>DNS settings.</summary>
internal sealed class EgressDnsOptions
{
    /// <summary>Loopback range synthetic IPv4 answers come from (per session); it must lie within 127.0.0.0/8.</summary>
    public string SyntheticPool { get; set; } = "127.77.0.0/16";

    /// <summary>TTL of synthetic answers: short, so a policy change reaches the sandbox's caches quickly.</summary>
    public int TtlSeconds { get; set; } = 30;

    /// <summary>Most names one session gets synthetic addresses for.</summary>
    public int MaxNamesPerSession { get; set; } = 4096;

    /// <summary>Longest a name resolution may take before the answer is SERVFAIL or the connection is refused.</summary>
    public int ResolveTimeoutSeconds { get; set; } = 5;
}

/// <summary>TCP relay settings.</summary>
internal sealed class EgressTcpOptions
{
    /// <summary>Timeout of one upstream connect attempt.</summary>
    public int ConnectTimeoutSeconds { get; set; } = 10;

    /// <summary>A connection with no byte in either direction for this long is closed.</summary>
    public int IdleTimeoutSeconds { get; set; } = 300;

    /// <summary>
    /// How long to wait for the sandbox's first byte before treating the connection as opaque (a server-speaks-first
    /// protocol such as SMTP or MySQL) and deciding on the dialed address alone.
    /// </summary>
    public int FirstByteTimeoutMilliseconds { get; set; } = 2000;

    /// <summary>How long the sandbox may take to send a complete ClientHello, HTTP request head or CONNECT.</summary>
    public int PeekTimeoutSeconds { get; set; } = 10;

    /// <summary>Most relayed connections one session may have open at once.</summary>
    public int MaxConnectionsPerSession { get; set; } = 256;

    /// <summary>Size of each direction's copy buffer.</summary>
    public int BufferSize { get; set; } = 16 * 1024;

    /// <summary>Largest HTTP request head (request line and headers) or TLS ClientHello inspected.</summary>
    public int MaxHeadBytes { get; set; } = 32 * 1024;
}

/// <summary>TLS settings: the gateway's CA, leaf certificates, upstream trust.</summary>
internal sealed class EgressTlsOptions
{
    /// <summary>
    /// Directory the gateway's CA is kept in: generated on first start (<c>egress-ca.pem</c>, certificate and private
    /// key, mode 0600) and loaded on later ones. Ignored when <see cref="CaCertificatePath"/> is set.
    /// </summary>
    public string? CaDirectory { get; set; }

    /// <summary>PEM file of an operator-provided CA certificate (RSA or ECDSA).</summary>
    public string? CaCertificatePath { get; set; }

    /// <summary>PEM file of that CA's private key; empty when it is in <see cref="CaCertificatePath"/>.</summary>
    public string? CaKeyPath { get; set; }

    /// <summary>Key type of a generated CA: <c>ECDsa</c> (P-256) or <c>Rsa</c> (3072 bits).</summary>
    public string CaKeyAlgorithm { get; set; } = "ECDsa";

    /// <summary>PEM files of CAs trusted for upstream servers in addition to the system store.</summary>
    public List<string> ExtraTrustedCaPaths { get; set; } = [];

    /// <summary>Most leaf certificates kept (one per name, least recently used evicted).</summary>
    public int LeafCacheSize { get; set; } = 1000;

    /// <summary>Validity of a leaf certificate; it is reissued before it expires.</summary>
    public int LeafValidityHours { get; set; } = 7 * 24;

    /// <summary>Longest a TLS handshake (either side) may take.</summary>
    public int HandshakeTimeoutSeconds { get; set; } = 10;

    /// <summary>In-memory CAs trusted for upstream servers (tests, or a host that loads them itself); not bound from configuration.</summary>
    internal X509Certificate2Collection ExtraTrustedCertificates { get; } = new();
}
