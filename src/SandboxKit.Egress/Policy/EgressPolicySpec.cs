namespace SandboxKit.Egress.Policy;

/// <summary>
/// A tenant's egress policy as asked for (e.g. deserialised from a session request); <see cref="EgressPolicy.Create"/>
/// validates it against the operator's bounds. Nothing here is trusted until then.
/// </summary>
internal sealed class EgressPolicySpec
{
    /// <summary>Allow rules; a connection must match one.</summary>
    public List<EgressAllowRuleSpec> Allow { get; set; } = [];

    /// <summary>Deny rules, in rule syntax; a match wins over any allow rule. Without a port a deny rule covers every port.</summary>
    public List<string> Deny { get; set; } = [];

    /// <inheritdoc />
    public override string ToString() =>
        $"allow: [{string.Join(", ", Allow)}], deny: [{string.Join(", ", Deny.Select(d => HostName.Display(d)))}]";
}

/// <summary>One allow rule as asked for.</summary>
internal sealed class EgressAllowRuleSpec
{
    /// <summary>Creates an empty rule (for deserialisers).</summary>
    public EgressAllowRuleSpec()
    {
    }

    /// <summary>Creates a rule with no options.</summary>
    public EgressAllowRuleSpec(string match) => Match = match;

    /// <summary>Rule text: "pypi.org", "*.pythonhosted.org", "pypi.org:443", "10.1.2.0/24:5432", "[2001:db8::/32]:443".</summary>
    public string Match { get; set; } = "";

    /// <summary>Terminate TLS to these names so <see cref="Headers"/> reach HTTPS requests (the sandbox must trust the gateway's CA).</summary>
    public bool TerminateTls { get; set; }

    /// <summary>Headers added to HTTP requests to these names, replacing any the sandbox sent with the same name.</summary>
    public Dictionary<string, string>? Headers { get; set; }

    /// <summary>A rule with no options.</summary>
    public static implicit operator EgressAllowRuleSpec(string match) => new(match);

    /// <inheritdoc />
    public override string ToString()
    {
        var text = HostName.Display(Match);
        if (TerminateTls)
        {
            text += " (terminate TLS)";
        }
        if (Headers is { Count: > 0 })
        {
            // Names only: the values are secrets.
            text += " (adds " + string.Join(", ", Headers.Keys.Select(k => HostName.Display(k, 40))) + ")";
        }
        return text;
    }
}
