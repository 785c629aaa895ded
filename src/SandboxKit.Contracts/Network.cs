namespace SandboxKit.Contracts;

/// <summary>
/// A session's egress policy: what the sandbox may reach, decided outside it by the server's gateway (HTTP by Host,
/// TLS by SNI, the gateway resolving names itself). Rules: <c>pypi.org</c>, <c>*.pythonhosted.org</c> (subdomains),
/// <c>10.1.2.0/24</c> (where the operator allows ranges), each optionally <c>:port</c>; without a port a rule covers
/// 80 and 443. Deny wins. Private, loopback, link-local and metadata ranges are always denied unless the operator
/// allows a range.
/// </summary>
public sealed record EgressPolicyRequest
{
    /// <summary>Allowed names and ranges; empty: no egress.</summary>
    public IReadOnlyList<string> Allow { get; init; } = [];

    /// <summary>Denied names and ranges (without a port: every port).</summary>
    public IReadOnlyList<string>? Deny { get; init; }

    /// <summary>Headers the gateway adds to HTTP requests for an allowed rule (credentials for a private index); the values never enter the sandbox.</summary>
    public IReadOnlyList<EgressHeaderRule>? Headers { get; init; }
}

/// <summary>Headers added at egress for one allow rule.</summary>
public sealed record EgressHeaderRule
{
    /// <summary>The allow rule they are for, exactly as in <see cref="EgressPolicyRequest.Allow"/>.</summary>
    public required string Match { get; init; }

    /// <summary>Header name to value.</summary>
    public required IReadOnlyDictionary<string, string> Headers { get; init; }

    /// <summary>
    /// For HTTPS: terminate TLS at the gateway (with the deployment's CA, which the sandbox then trusts) so the headers
    /// can be added. Opt-in, because the gateway then sees the traffic in clear.
    /// </summary>
    public bool TerminateTls { get; init; }
}

/// <summary>A session's egress policy as the server shows it.</summary>
public sealed record EgressPolicyInfo
{
    /// <summary>Allowed rules.</summary>
    public required IReadOnlyList<string> Allow { get; init; }

    /// <summary>Denied rules.</summary>
    public required IReadOnlyList<string> Deny { get; init; }

    /// <summary>For each rule with added headers: the rule and the header names (never the values).</summary>
    public IReadOnlyList<EgressHeaderNames>? Headers { get; init; }
}

/// <summary>Which headers are added for a rule.</summary>
public sealed record EgressHeaderNames
{
    /// <summary>The rule.</summary>
    public required string Match { get; init; }

    /// <summary>The header names.</summary>
    public required IReadOnlyList<string> Names { get; init; }

    /// <summary>True when TLS is terminated for it.</summary>
    public bool TerminateTls { get; init; }
}

/// <summary>The gateway's decisions for a session, newest first, from <c>GET /v1/sessions/{id}/egress/log</c>.</summary>
public sealed record EgressLog
{
    /// <summary>The decisions.</summary>
    public required IReadOnlyList<EgressLogEntry> Entries { get; init; }

    /// <summary>Allowed so far.</summary>
    public required long Allowed { get; init; }

    /// <summary>Denied so far.</summary>
    public required long Denied { get; init; }

    /// <summary>Bytes from the sandbox to upstreams.</summary>
    public required long BytesOut { get; init; }

    /// <summary>Bytes from upstreams to the sandbox.</summary>
    public required long BytesIn { get; init; }
}

/// <summary>One egress decision.</summary>
public sealed record EgressLogEntry
{
    /// <summary>When.</summary>
    public required DateTimeOffset At { get; init; }

    /// <summary><c>dns</c>, <c>tcp</c> or <c>policy-change</c>.</summary>
    public required string Kind { get; init; }

    /// <summary>Allowed or denied.</summary>
    public required bool Allowed { get; init; }

    /// <summary>Why.</summary>
    public required string Reason { get; init; }

    /// <summary>The name asked for, if any.</summary>
    public string? Name { get; init; }

    /// <summary>The port.</summary>
    public int? Port { get; init; }

    /// <summary>The address the sandbox dialed.</summary>
    public string? DialedAddress { get; init; }

    /// <summary>The address the gateway connected to.</summary>
    public string? ResolvedAddress { get; init; }

    /// <summary><c>http</c>, <c>tls</c>, <c>opaque</c>, ...</summary>
    public string? Protocol { get; init; }

    /// <summary>Names of the headers added (never values).</summary>
    public IReadOnlyList<string>? InjectedHeaders { get; init; }
}

/// <summary>Body of <c>POST /v1/sessions/{id}/ports</c>: expose a port inside the sandbox as a preview URL.</summary>
public sealed record ExposePortRequest
{
    /// <summary>The TCP port a server in the sandbox listens on (loopback is enough; the sandbox needs no network).</summary>
    public required int Port { get; init; }

    /// <summary>How long the URL works (default 1 hour; at most the server's maximum).</summary>
    public int? ExpiresInSeconds { get; init; }
}

/// <summary>An exposed port.</summary>
public sealed record ExposedPort
{
    /// <summary>The port in the sandbox.</summary>
    public required int Port { get; init; }

    /// <summary>The preview URL: HTTP and WebSocket to the port, authorised by the signed token it carries.</summary>
    public required string Url { get; init; }

    /// <summary>When the URL stops working.</summary>
    public required DateTimeOffset ExpiresAt { get; init; }
}

/// <summary>Result of listing exposed ports.</summary>
public sealed record ExposedPortList
{
    /// <summary>The ports.</summary>
    public required IReadOnlyList<ExposedPort> Ports { get; init; }
}
