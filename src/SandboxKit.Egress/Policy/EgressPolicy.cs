using System.Diagnostics.CodeAnalysis;
using System.Net;

namespace SandboxKit.Egress.Policy;

/// <summary>
/// A session's validated egress policy: allow rules (with their TLS and header options) and deny rules. Immutable, so
/// a session swaps the whole policy at once and a decision never sees half of an update.
/// </summary>
/// <remarks>
/// Semantics: a connection to a name needs an allow name rule matching the name and port and no deny name rule
/// matching them; then every address the name resolves to must pass the deny ranges. A connection to an IP literal
/// needs an allow range rule (names never allow an IP, ranges never allow a name, so the server resolves no name that
/// is not on the allow list). Deny wins over allow everywhere.
/// </remarks>
internal sealed class EgressPolicy
{
    private EgressPolicy(IReadOnlyList<EgressRule> allow, IReadOnlyList<EgressRule> deny)
    {
        Allow = allow;
        Deny = deny;
    }

    /// <summary>The policy that allows nothing.</summary>
    public static EgressPolicy DenyAll { get; } = new([], []);

    /// <summary>Allow rules.</summary>
    public IReadOnlyList<EgressRule> Allow { get; }

    /// <summary>Deny rules.</summary>
    public IReadOnlyList<EgressRule> Deny { get; }

    /// <summary>
    /// Validates a tenant's <paramref name="spec"/> against the operator's bounds. Every problem is listed, in words
    /// fit for a 400 response (rule indexes, never header values).
    /// </summary>
    public static EgressPolicyResult Create(EgressPolicySpec? spec, EgressSettings settings, bool tlsTerminationAvailable)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (spec is null)
        {
            return new EgressPolicyResult(DenyAll, []);
        }
        var errors = new List<string>();
        var allowSpecs = spec.Allow ?? [];
        var denySpecs = spec.Deny ?? [];
        if (allowSpecs.Count + denySpecs.Count > settings.MaxRules)
        {
            // Stop here: validating an enormous list would be work an attacker chooses the size of.
            errors.Add($"the policy has {allowSpecs.Count + denySpecs.Count} rules; at most {settings.MaxRules} are allowed");
            return new EgressPolicyResult(null, errors);
        }

        var allow = new List<EgressRule>();
        for (int i = 0; i < allowSpecs.Count; i++)
        {
            var item = allowSpecs[i];
            var where = $"allow[{i}] '{HostName.Display(item?.Match)}'";
            if (item is null)
            {
                errors.Add($"{where} is empty");
                continue;
            }
            if (!EgressRule.TryParse(item.Match, portlessIsAny: false, out var rule, out var error))
            {
                errors.Add($"{where} {error}");
                continue;
            }
            if (rule.Kind == EgressRuleKind.Network)
            {
                if (!settings.AllowCidrRules)
                {
                    errors.Add($"{where}: IP range rules are not enabled on this server; allow host names instead");
                    continue;
                }
                if (settings.Guard.FullyDenied(rule.Network) is { } denied)
                {
                    errors.Add($"{where} lies within {denied}");
                    continue;
                }
                if (item.TerminateTls || item.Headers is { Count: > 0 })
                {
                    errors.Add($"{where}: terminateTls and headers need a host name rule, not an IP range");
                    continue;
                }
            }
            if (!settings.AllowedPatterns.Any(rule.IsWithin))
            {
                errors.Add($"{where} is not within any rule the operator allows");
                continue;
            }
            if (item.TerminateTls && !tlsTerminationAvailable)
            {
                errors.Add($"{where}: terminateTls needs a gateway CA, which this server has not configured");
                continue;
            }
            var headers = PolicyHeaders.Parse(item.Headers, where + " headers", errors);
            allow.Add(rule.WithOptions(item.TerminateTls, headers));
        }

        var deny = new List<EgressRule>();
        for (int i = 0; i < denySpecs.Count; i++)
        {
            if (EgressRule.TryParse(denySpecs[i], portlessIsAny: true, out var rule, out var error))
            {
                deny.Add(rule);
            }
            else
            {
                errors.Add($"deny[{i}] '{HostName.Display(denySpecs[i])}' {error}");
            }
        }

        return errors.Count > 0 ? new EgressPolicyResult(null, errors) : new EgressPolicyResult(new EgressPolicy(allow, deny), errors);
    }

    /// <summary>Decides a connection to <paramref name="name"/>:<paramref name="port"/> by the name rules alone (before resolution).</summary>
    public RuleMatch CheckName(string name, int port)
    {
        foreach (var rule in Deny)
        {
            if (rule.IsNameRule && rule.MatchesName(name) && rule.Ports.Contains(port))
            {
                return RuleMatch.Denied($"{name}:{port} matches the deny rule {rule.Text}");
            }
        }
        EgressRule? best = null;
        foreach (var rule in Allow)
        {
            if (rule.IsNameRule && rule.MatchesName(name) && rule.Ports.Contains(port) && (best is null || rule.Specificity > best.Specificity))
            {
                best = rule;
            }
        }
        return best is null ? RuleMatch.Denied($"{name}:{port} is not on the allow list") : RuleMatch.AllowedBy(best);
    }

    /// <summary>
    /// Decides a DNS question for <paramref name="name"/>: answered when some allow rule matches the name on any port
    /// and no deny rule covers it on every port (a port-specific deny is enforced when the connection comes).
    /// </summary>
    public RuleMatch CheckNameForDns(string name)
    {
        foreach (var rule in Deny)
        {
            if (rule.IsNameRule && rule.MatchesName(name) && rule.Ports.Kind == PortSetKind.Any)
            {
                return RuleMatch.Denied($"{name} matches the deny rule {rule.Text}");
            }
        }
        EgressRule? best = null;
        foreach (var rule in Allow)
        {
            if (rule.IsNameRule && rule.MatchesName(name) && (best is null || rule.Specificity > best.Specificity))
            {
                best = rule;
            }
        }
        return best is null ? RuleMatch.Denied($"{name} is not on the allow list") : RuleMatch.AllowedBy(best);
    }

    /// <summary>
    /// Checks an address a connection would reach (resolved from an allowed name, or dialed): the tenant's deny ranges
    /// and the operator's guard. Null when it may be reached; <paramref name="port"/> null for DNS (any-port denies only).
    /// </summary>
    public string? CheckReachable(IPAddress address, int? port, AddressGuard guard)
    {
        address = IpText.Canonical(address);
        foreach (var rule in Deny)
        {
            if (rule.Kind == EgressRuleKind.Network && rule.MatchesAddress(address)
                && (port is int p ? rule.Ports.Contains(p) : rule.Ports.Kind == PortSetKind.Any))
            {
                return $"{address} matches the deny rule {rule.Text}";
            }
        }
        return guard.Check(address);
    }

    /// <summary>Decides a connection to the IP literal <paramref name="address"/>:<paramref name="port"/>.</summary>
    public RuleMatch CheckLiteral(IPAddress address, int port, AddressGuard guard)
    {
        address = IpText.Canonical(address);
        if (CheckReachable(address, port, guard) is { } denied)
        {
            return RuleMatch.Denied(denied);
        }
        EgressRule? best = null;
        foreach (var rule in Allow)
        {
            if (rule.MatchesAddress(address) && rule.Ports.Contains(port) && (best is null || rule.Network.PrefixLength > best.Network.PrefixLength))
            {
                best = rule;
            }
        }
        return best is null
            ? RuleMatch.Denied($"{IpText.Format(address, port)} is an IP literal no allow rule covers")
            : RuleMatch.AllowedBy(best);
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"allow: [{string.Join(", ", Allow)}], deny: [{string.Join(", ", Deny.Select(d => d.Text))}]";
}

/// <summary>The outcome of a rule check: the allow rule that matched, or why nothing did.</summary>
internal readonly record struct RuleMatch(EgressRule? Rule, string Reason)
{
    /// <summary>Whether an allow rule matched and no deny rule did.</summary>
    [MemberNotNullWhen(true, nameof(Rule))]
    public bool Allowed => Rule is not null;

    /// <summary>A match by <paramref name="rule"/>.</summary>
    public static RuleMatch AllowedBy(EgressRule rule) => new(rule, $"allowed by {rule.Text}");

    /// <summary>No match, for <paramref name="reason"/>.</summary>
    public static RuleMatch Denied(string reason) => new(null, reason);
}

/// <summary>Result of validating a tenant policy.</summary>
/// <param name="Policy">The policy, when valid.</param>
/// <param name="Errors">Every problem found, fit for a 400 response.</param>
internal sealed record EgressPolicyResult(EgressPolicy? Policy, IReadOnlyList<string> Errors)
{
    /// <summary>Whether the policy is valid.</summary>
    [MemberNotNullWhen(true, nameof(Policy))]
    public bool IsValid => Policy is not null;
}

/// <summary>Parsing of header maps shared by tenant rules and operator secrets.</summary>
internal static class PolicyHeaders
{
    /// <summary>Most headers one rule may add.</summary>
    public const int MaxPerRule = 16;

    /// <summary>Parses <paramref name="headers"/>, adding problems to <paramref name="errors"/> (never a value).</summary>
    public static IReadOnlyList<HeaderInjection> Parse(IDictionary<string, string>? headers, string where, List<string> errors)
    {
        if (headers is null || headers.Count == 0)
        {
            return [];
        }
        if (headers.Count > MaxPerRule)
        {
            errors.Add($"{where}: at most {MaxPerRule} headers per rule");
            return [];
        }
        var list = new List<HeaderInjection>();
        foreach (var (name, value) in headers)
        {
            var header = HeaderInjection.TryCreate(name, value, out var error);
            if (header is null)
            {
                errors.Add($"{where}: {error}");
            }
            else if (list.Any(h => string.Equals(h.Name, header.Name, StringComparison.OrdinalIgnoreCase)))
            {
                errors.Add($"{where}: header '{header.Name}' is given twice");
            }
            else
            {
                list.Add(header);
            }
        }
        return list;
    }
}
