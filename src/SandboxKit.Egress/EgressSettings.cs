using System.Net;
using System.Net.Sockets;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress;

/// <summary>
/// <see cref="EgressOptions"/> parsed and checked once: rule patterns, ranges, the static hosts map, operator
/// secrets and timeouts in the form the gateway uses. Invalid options fail here, at startup, with every problem listed.
/// </summary>
internal sealed class EgressSettings
{
    private EgressSettings()
    {
    }

    /// <summary>Operator patterns tenant rules must lie within.</summary>
    public IReadOnlyList<EgressRule> AllowedPatterns { get; private init; } = [];

    /// <summary>Most rules per policy.</summary>
    public int MaxRules { get; private init; }

    /// <summary>Whether tenant allow rules may be ranges.</summary>
    public bool AllowCidrRules { get; private init; }

    /// <summary>The address checks no tenant can lift.</summary>
    public AddressGuard Guard { get; private init; } = null!;

    /// <summary>Operator header rules (name rules carrying headers).</summary>
    public IReadOnlyList<EgressRule> Secrets { get; private init; } = [];

    /// <summary>Static hosts map, normalised.</summary>
    public IReadOnlyDictionary<string, IPAddress[]> Hosts { get; private init; } = new Dictionary<string, IPAddress[]>();

    /// <summary>Whether the system resolver is consulted after the static map.</summary>
    public bool UseSystemResolver { get; private init; }

    /// <summary>Decisions kept per session.</summary>
    public int DecisionLogSize { get; private init; }

    /// <summary>Synthetic address range.</summary>
    public IPNetwork SyntheticPool { get; private init; }

    /// <summary>DNS answer TTL.</summary>
    public uint DnsTtlSeconds { get; private init; }

    /// <summary>Most synthetic names per session.</summary>
    public int MaxNamesPerSession { get; private init; }

    /// <summary>Resolution timeout.</summary>
    public TimeSpan ResolveTimeout { get; private init; }

    /// <summary>Upstream connect timeout (per attempt).</summary>
    public TimeSpan ConnectTimeout { get; private init; }

    /// <summary>Idle timeout of a relayed connection.</summary>
    public TimeSpan IdleTimeout { get; private init; }

    /// <summary>Wait for the sandbox's first byte.</summary>
    public TimeSpan FirstByteTimeout { get; private init; }

    /// <summary>Wait for a complete ClientHello or request head.</summary>
    public TimeSpan PeekTimeout { get; private init; }

    /// <summary>TLS handshake timeout.</summary>
    public TimeSpan HandshakeTimeout { get; private init; }

    /// <summary>Most open connections per session.</summary>
    public int MaxConnectionsPerSession { get; private init; }

    /// <summary>Copy buffer size per direction.</summary>
    public int BufferSize { get; private init; }

    /// <summary>Largest inspected head.</summary>
    public int MaxHeadBytes { get; private init; }

    /// <summary>Parses <paramref name="options"/>; <paramref name="errors"/> lists every problem (no secret values).</summary>
    public static EgressSettings? TryCreate(EgressOptions options, out List<string> errors)
    {
        ArgumentNullException.ThrowIfNull(options);
        errors = [];

        var patterns = new List<EgressRule>();
        for (int i = 0; i < options.AllowedRulePatterns.Count; i++)
        {
            var text = options.AllowedRulePatterns[i];
            if (EgressRule.TryParse(text, portlessIsAny: false, out var rule, out var error))
            {
                patterns.Add(rule);
            }
            else
            {
                errors.Add($"Sandbox:Egress:AllowedRulePatterns:{i} '{HostName.Display(text)}' {error}");
            }
        }

        var deny = ParseRanges(options.DenyRanges, "DenyRanges", errors);
        var allowedPrivate = ParseRanges(options.AllowedPrivateRanges, "AllowedPrivateRanges", errors);

        var secrets = new List<EgressRule>();
        for (int i = 0; i < options.Secrets.Count; i++)
        {
            var entry = options.Secrets[i];
            var where = $"Sandbox:Egress:Secrets:{i}";
            if (!EgressRule.TryParse(entry.Match, portlessIsAny: true, out var rule, out var error))
            {
                errors.Add($"{where}:Match '{HostName.Display(entry.Match)}' {error}");
                continue;
            }
            if (!rule.IsNameRule)
            {
                errors.Add($"{where}:Match must be a host name rule: headers go to named hosts");
                continue;
            }
            var headers = PolicyHeaders.Parse(entry.Headers, where + ":Headers", errors);
            if (headers.Count == 0 && !entry.TerminateTls)
            {
                errors.Add($"{where} sets no header");
                continue;
            }
            secrets.Add(rule.WithOptions(entry.TerminateTls, headers));
        }

        var hosts = new Dictionary<string, IPAddress[]>(StringComparer.Ordinal);
        foreach (var (key, value) in options.Hosts)
        {
            var where = $"Sandbox:Egress:Hosts:{HostName.Display(key)}";
            if (!HostName.TryNormalize(key, out var name, out var error))
            {
                errors.Add($"{where}: the name {error}");
                continue;
            }
            var addresses = new List<IPAddress>();
            foreach (var part in (value ?? "").Split([',', ' ', ';'], StringSplitOptions.RemoveEmptyEntries))
            {
                if (IpText.TryParseAddress(part, out var address))
                {
                    addresses.Add(address);
                }
                else
                {
                    errors.Add($"{where}: '{HostName.Display(part)}' is not an IP address");
                }
            }
            if (addresses.Count == 0)
            {
                errors.Add($"{where}: no address");
                continue;
            }
            hosts[name] = hosts.TryGetValue(name, out var existing) ? [.. existing, .. addresses] : [.. addresses];
        }

        IPNetwork pool = default;
        if (!IpText.TryParseNetwork(options.Dns.SyntheticPool ?? "", out pool, out var poolError))
        {
            errors.Add($"Sandbox:Egress:Dns:SyntheticPool {poolError}");
        }
        else if (pool.BaseAddress.AddressFamily != AddressFamily.InterNetwork || !IpText.Contains(IPNetwork.Parse("127.0.0.0/8"), pool) || pool.PrefixLength > 30)
        {
            // Loopback only: the sandbox must never be able to reach a synthetic address without the supervisor.
            errors.Add("Sandbox:Egress:Dns:SyntheticPool must be an IPv4 range within 127.0.0.0/8 of at least 4 addresses");
        }

        Check(options.MaxRules is >= 1 and <= 10_000, "MaxRules must be 1-10000", errors);
        Check(options.DecisionLogSize is >= 1 and <= 1_000_000, "DecisionLogSize must be 1-1000000", errors);
        Check(options.Dns.TtlSeconds is >= 0 and <= 86_400, "Dns:TtlSeconds must be 0-86400", errors);
        Check(options.Dns.MaxNamesPerSession is >= 1 and <= 1 << 20, "Dns:MaxNamesPerSession must be 1-1048576", errors);
        Check(options.Dns.ResolveTimeoutSeconds is >= 1 and <= 120, "Dns:ResolveTimeoutSeconds must be 1-120", errors);
        Check(options.Tcp.ConnectTimeoutSeconds is >= 1 and <= 300, "Tcp:ConnectTimeoutSeconds must be 1-300", errors);
        Check(options.Tcp.IdleTimeoutSeconds >= 1, "Tcp:IdleTimeoutSeconds must be at least 1", errors);
        Check(options.Tcp.FirstByteTimeoutMilliseconds is >= 1 and <= 60_000, "Tcp:FirstByteTimeoutMilliseconds must be 1-60000", errors);
        Check(options.Tcp.PeekTimeoutSeconds is >= 1 and <= 300, "Tcp:PeekTimeoutSeconds must be 1-300", errors);
        Check(options.Tcp.MaxConnectionsPerSession is >= 1 and <= 100_000, "Tcp:MaxConnectionsPerSession must be 1-100000", errors);
        Check(options.Tcp.BufferSize is >= 1024 and <= 1 << 20, "Tcp:BufferSize must be 1024-1048576", errors);
        Check(options.Tcp.MaxHeadBytes is >= 4096 and <= 1 << 20, "Tcp:MaxHeadBytes must be 4096-1048576", errors);
        Check(options.Tls.HandshakeTimeoutSeconds is >= 1 and <= 300, "Tls:HandshakeTimeoutSeconds must be 1-300", errors);
        Check(options.Tls.LeafCacheSize is >= 1 and <= 1_000_000, "Tls:LeafCacheSize must be 1-1000000", errors);
        Check(options.Tls.LeafValidityHours is >= 2 and <= 24 * 397, "Tls:LeafValidityHours must be 2-9528", errors);

        if (errors.Count > 0)
        {
            return null;
        }
        return new EgressSettings
        {
            AllowedPatterns = patterns,
            MaxRules = options.MaxRules,
            AllowCidrRules = options.AllowCidrRules,
            Guard = new AddressGuard(deny, allowedPrivate),
            Secrets = secrets,
            Hosts = hosts,
            UseSystemResolver = options.UseSystemResolver,
            DecisionLogSize = options.DecisionLogSize,
            SyntheticPool = pool,
            DnsTtlSeconds = (uint)options.Dns.TtlSeconds,
            MaxNamesPerSession = options.Dns.MaxNamesPerSession,
            ResolveTimeout = TimeSpan.FromSeconds(options.Dns.ResolveTimeoutSeconds),
            ConnectTimeout = TimeSpan.FromSeconds(options.Tcp.ConnectTimeoutSeconds),
            IdleTimeout = TimeSpan.FromSeconds(options.Tcp.IdleTimeoutSeconds),
            FirstByteTimeout = TimeSpan.FromMilliseconds(options.Tcp.FirstByteTimeoutMilliseconds),
            PeekTimeout = TimeSpan.FromSeconds(options.Tcp.PeekTimeoutSeconds),
            HandshakeTimeout = TimeSpan.FromSeconds(options.Tls.HandshakeTimeoutSeconds),
            MaxConnectionsPerSession = options.Tcp.MaxConnectionsPerSession,
            BufferSize = options.Tcp.BufferSize,
            MaxHeadBytes = options.Tcp.MaxHeadBytes,
        };
    }

    private static List<IPNetwork> ParseRanges(List<string> texts, string key, List<string> errors)
    {
        var ranges = new List<IPNetwork>();
        for (int i = 0; i < texts.Count; i++)
        {
            if (IpText.TryParseNetwork(texts[i] ?? "", out var network, out var error))
            {
                ranges.Add(network);
            }
            else
            {
                errors.Add($"Sandbox:Egress:{key}:{i} '{HostName.Display(texts[i])}' {error}");
            }
        }
        return ranges;
    }

    private static void Check(bool condition, string message, List<string> errors)
    {
        if (!condition)
        {
            errors.Add("Sandbox:Egress:" + message);
        }
    }
}
