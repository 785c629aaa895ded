using System.Net;
using Microsoft.Extensions.Configuration;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Tests;

public sealed class HostNameTests
{
    [TestCase("PyPI.org", "pypi.org")]
    [TestCase("pypi.org.", "pypi.org")]
    [TestCase("bücher.de", "xn--bcher-kva.de")]
    [TestCase("BÜCHER.de", "xn--bcher-kva.de")]
    [TestCase("xn--bcher-kva.de", "xn--bcher-kva.de")]
    [TestCase("_acme-challenge.example.com", "_acme-challenge.example.com")]
    public void Normalises(string input, string expected)
    {
        Assert.That(HostName.TryNormalize(input, out var name, out var error), Is.True, error);
        Assert.That(name, Is.EqualTo(expected));
    }

    [TestCase("", "is empty")]
    [TestCase(".", "is empty")]
    [TestCase("a..b", "empty label")]
    [TestCase("exa mple.com", "whitespace")]
    [TestCase("-a.com", "starts or ends with '-'")]
    [TestCase("a/b.com", "not allowed in a host name")]
    [TestCase("1.2.3", "numeric address")]
    [TestCase("example.0x7f", "numeric address")]
    [TestCase("xn--zz.com", "Punycode")]
    public void RefusesGarbage(string input, string expected)
    {
        Assert.That(HostName.TryNormalize(input, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(expected));
    }

    [Test]
    public void BoundsLabelsAndLength()
    {
        Assert.That(HostName.TryNormalize(new string('a', 63) + ".com", out _, out _), Is.True);
        Assert.That(HostName.TryNormalize(new string('a', 64) + ".com", out _, out var label), Is.False);
        Assert.That(label, Does.Contain("63"));
        var long254 = string.Join('.', Enumerable.Repeat(new string('a', 62), 4)) + ".com"; // 4*63 + 3 = 255 chars
        Assert.That(HostName.TryNormalize(long254, out _, out var length), Is.False);
        Assert.That(length, Does.Contain("253"));
        Assert.That(HostName.TryNormalize(new string('a', 5000), out _, out var huge), Is.False);
        Assert.That(huge, Is.EqualTo("is too long"));
    }

    [TestCase("1.2.3.4", true)]
    [TestCase("1.2.3", false)]
    [TestCase("010.0.0.1", false)]
    [TestCase("0x7f.0.0.1", false)]
    [TestCase("256.1.1.1", false)]
    [TestCase("::1", true)]
    [TestCase("fe80::1%eth0", false)]
    public void ParsesIpLiteralsStrictly(string text, bool valid) =>
        Assert.That(IpText.TryParseAddress(text, out _), Is.EqualTo(valid));
}

public sealed class RuleTests
{
    [TestCase("pypi.org", "ExactName", "pypi.org")]
    [TestCase("PyPI.org:443", "ExactName", "pypi.org:443")]
    [TestCase("*.pythonhosted.org", "WildcardName", "*.pythonhosted.org")]
    [TestCase("*:*", "AnyName", "*:*")]
    [TestCase("10.1.2.0/24:5432", "Network", "10.1.2.0/24:5432")]
    [TestCase("10.1.2.3", "Network", "10.1.2.3/32")]
    [TestCase("2001:db8::/32", "Network", "[2001:db8::/32]")]
    [TestCase("[2001:db8::/32]:443", "Network", "[2001:db8::/32]:443")]
    [TestCase("::ffff:10.0.0.0/104", "Network", "10.0.0.0/8")]
    public void Parses(string text, string kind, string canonical)
    {
        Assert.That(EgressRule.TryParse(text, portlessIsAny: false, out var rule, out var error), Is.True, error);
        Assert.That(rule!.Kind.ToString(), Is.EqualTo(kind));
        Assert.That(rule.Text, Is.EqualTo(canonical));
    }

    [TestCase("pypi.org:0", "invalid port")]
    [TestCase("pypi.org:65536", "invalid port")]
    [TestCase("pypi.org:http", "invalid port")]
    [TestCase("10.1.2.3/24", "host bits set")]
    [TestCase("10.1.2.0/33", "prefix length")]
    [TestCase("a.*.com", "'*' only")]
    [TestCase("*pypi.org", "'*' only")]
    [TestCase("[::1", "without ']'")]
    [TestCase("   ", "is empty")]
    public void RefusesInvalid(string text, string expected)
    {
        Assert.That(EgressRule.TryParse(text, portlessIsAny: false, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(expected));
    }

    [Test]
    public void WildcardMatchesSubdomainsAtAnyDepthButNotTheApex()
    {
        EgressRule.TryParse("*.pythonhosted.org", false, out var rule, out _);
        Assert.That(rule!.MatchesName("files.pythonhosted.org"), Is.True);
        Assert.That(rule.MatchesName("a.b.pythonhosted.org"), Is.True);
        Assert.That(rule.MatchesName("pythonhosted.org"), Is.False);
        Assert.That(rule.MatchesName("evilpythonhosted.org"), Is.False);
    }

    [Test]
    public void PortsDefaultTo80And443ForAllowAndEverythingForDeny()
    {
        EgressRule.TryParse("pypi.org", portlessIsAny: false, out var allow, out _);
        EgressRule.TryParse("pypi.org", portlessIsAny: true, out var deny, out _);
        Assert.That(new[] { allow!.Ports.Contains(80), allow.Ports.Contains(443), allow.Ports.Contains(22) }, Is.EqualTo(new[] { true, true, false }));
        Assert.That(deny!.Ports.Contains(22), Is.True);
    }

    [TestCase("a.example.com", "*.example.com", true)]
    [TestCase("*.a.example.com", "*.example.com", true)]
    [TestCase("*.example.com", "*.example.com", true)]
    [TestCase("example.com", "*.example.com", false)]
    [TestCase("pypi.org:443", "pypi.org", true)]
    [TestCase("pypi.org:22", "pypi.org", false)]
    [TestCase("pypi.org:22", "pypi.org:*", true)]
    [TestCase("anything.test:8080", "*:*", true)]
    [TestCase("10.1.2.0/24", "*:*", false)]
    [TestCase("10.1.2.0/24:5432", "10.0.0.0/8:*", true)]
    [TestCase("10.0.0.0/7", "10.0.0.0/8:*", false)]
    public void TenantRuleWithinOperatorPattern(string tenant, string pattern, bool within)
    {
        EgressRule.TryParse(tenant, false, out var rule, out _);
        EgressRule.TryParse(pattern, false, out var operatorRule, out _);
        Assert.That(rule!.IsWithin(operatorRule!), Is.EqualTo(within));
    }
}

public sealed class PolicyValidationTests
{
    private static EgressSettings Settings(Action<EgressOptions>? configure = null)
    {
        var options = new EgressOptions { AllowedRulePatterns = ["*.example.com", "pypi.org:*", "10.0.0.0/8:*", "0.0.0.0/0:*"], MaxRules = 4, AllowCidrRules = true };
        configure?.Invoke(options);
        var settings = EgressSettings.TryCreate(options, out var errors);
        Assert.That(errors, Is.Empty);
        return settings!;
    }

    private static EgressPolicyResult Create(EgressSettings settings, params EgressAllowRuleSpec[] allow) =>
        EgressPolicy.Create(new EgressPolicySpec { Allow = [.. allow] }, settings, tlsTerminationAvailable: false);

    [Test]
    public void AcceptsRulesWithinTheOperatorsPatterns()
    {
        var result = Create(Settings(), "api.example.com", "pypi.org:8443", "203.0.113.0/24:443");
        Assert.That(result.Errors, Is.Empty);
        Assert.That(result.Policy!.Allow.Select(r => r.Text), Is.EqualTo(new[] { "api.example.com", "pypi.org:8443", "203.0.113.0/24:443" }));
    }

    [Test]
    public void ListsEveryProblemWithItsIndex()
    {
        var result = Create(Settings(), "example.com", "files.pythonhosted.org", "pypi.org:99999", "10.1.2.0/24");
        Assert.That(result.IsValid, Is.False);
        Assert.That(result.Errors, Has.Count.EqualTo(4));
        Assert.That(result.Errors[0], Does.StartWith("allow[0] 'example.com' is not within any rule the operator allows"));
        Assert.That(result.Errors[1], Does.StartWith("allow[1] 'files.pythonhosted.org'"));
        Assert.That(result.Errors[2], Does.Contain("invalid port"));
        Assert.That(result.Errors[3], Does.Contain("private (RFC 1918)"));
    }

    [Test]
    public void BoundsTheNumberOfRules()
    {
        var result = Create(Settings(), "a.example.com", "b.example.com", "c.example.com", "d.example.com", "e.example.com");
        Assert.That(result.Errors, Is.EqualTo(new[] { "the policy has 5 rules; at most 4 are allowed" }));
    }

    [Test]
    public void CidrRulesNeedTheOperatorsConsent()
    {
        var result = Create(Settings(o => o.AllowCidrRules = false), "203.0.113.0/24:443");
        Assert.That(result.Errors.Single(), Does.Contain("IP range rules are not enabled"));
    }

    [TestCase("127.0.0.0/8", "loopback")]
    [TestCase("169.254.169.254", "link-local")]
    [TestCase("100.64.0.0/10", "CGNAT")]
    [TestCase("::1", "loopback")]
    [TestCase("fd00::/8", "unique local")]
    public void AlwaysDeniedRangesCannotBeAskedFor(string rule, string label)
    {
        var settings = Settings(o => o.AllowedRulePatterns = ["0.0.0.0/0:*", "[::/0]:*"]);
        var result = Create(settings, rule);
        Assert.That(result.Errors.Single(), Does.Contain(label));
    }

    [Test]
    public void OperatorAllowedPrivateRangeCanBeAskedFor()
    {
        var result = Create(Settings(o => o.AllowedPrivateRanges = ["10.20.0.0/16"]), "10.20.1.0/24:5432");
        Assert.That(result.Errors, Is.Empty);
    }

    [Test]
    public void HeaderRulesAreCheckedWithoutEchoingValues()
    {
        var settings = Settings();
        var result = Create(settings,
            new EgressAllowRuleSpec("a.example.com") { Headers = new() { ["Authorization"] = "Bearer TOPSECRET\r\nX-Evil: 1" } },
            new EgressAllowRuleSpec("b.example.com") { Headers = new() { ["Content-Length"] = "0" } },
            new EgressAllowRuleSpec("c.example.com") { TerminateTls = true },
            new EgressAllowRuleSpec("203.0.113.0/24") { Headers = new() { ["X-Key"] = "TOPSECRET" } });
        Assert.That(result.Errors, Has.Count.EqualTo(4));
        Assert.That(result.Errors[0], Does.Contain("control or non-ASCII character"));
        Assert.That(result.Errors[1], Does.Contain("frames or routes the request"));
        Assert.That(result.Errors[2], Does.Contain("needs a gateway CA"));
        Assert.That(result.Errors[3], Does.Contain("need a host name rule"));
        Assert.That(string.Join("\n", result.Errors), Does.Not.Contain("TOPSECRET"));
    }

    [Test]
    public void DenyWinsOverAllow()
    {
        var settings = Settings(o => { o.MaxRules = 10; o.AllowedRulePatterns = ["*:*"]; });
        var policy = EgressPolicy.Create(new EgressPolicySpec { Allow = ["*.example.com:*"], Deny = ["bad.example.com", "api.example.com:22"] }, settings, false).Policy!;
        Assert.That(policy.CheckName("good.example.com", 443).Allowed, Is.True);
        Assert.That(policy.CheckName("bad.example.com", 443).Reason, Does.Contain("deny rule bad.example.com:*"));
        Assert.That(policy.CheckName("api.example.com", 22).Allowed, Is.False);
        Assert.That(policy.CheckName("api.example.com", 443).Allowed, Is.True);
        // DNS: a deny on every port hides the name; a deny on one port is enforced at connect time.
        Assert.That(policy.CheckNameForDns("bad.example.com").Allowed, Is.False);
        Assert.That(policy.CheckNameForDns("api.example.com").Allowed, Is.True);
    }

    [Test]
    public void NameRulesNeverAllowLiteralsAndRangesNeverAllowNames()
    {
        var settings = Settings(o => o.AllowedRulePatterns = ["*:*", "0.0.0.0/0:*"]);
        var policy = EgressPolicy.Create(new EgressPolicySpec { Allow = ["*:*", "203.0.113.0/24:443"] }, settings, false).Policy!;
        Assert.That(policy.CheckLiteral(IPAddress.Parse("198.51.100.1"), 443, settings.Guard).Allowed, Is.False);
        Assert.That(policy.CheckLiteral(IPAddress.Parse("203.0.113.9"), 443, settings.Guard).Allowed, Is.True);
        Assert.That(policy.CheckLiteral(IPAddress.Parse("203.0.113.9"), 80, settings.Guard).Allowed, Is.False);
    }

    [Test]
    public void NullSpecIsDenyAll()
    {
        var result = EgressPolicy.Create(null, Settings(), false);
        Assert.That(result.Policy, Is.SameAs(EgressPolicy.DenyAll));
    }
}

public sealed class AddressGuardTests
{
    private static readonly AddressGuard Guard = new([IPNetwork.Parse("198.51.100.0/24")], [IPNetwork.Parse("10.20.0.0/16")]);

    [TestCase("127.0.0.1", "loopback")]
    [TestCase("127.77.0.1", "loopback")]
    [TestCase("10.1.2.3", "private")]
    [TestCase("172.16.5.4", "private")]
    [TestCase("192.168.1.1", "private")]
    [TestCase("169.254.169.254", "metadata")]
    [TestCase("100.64.0.1", "CGNAT")]
    [TestCase("0.1.2.3", "this network")]
    [TestCase("224.0.0.251", "multicast")]
    [TestCase("255.255.255.255", "broadcast")]
    [TestCase("::1", "loopback")]
    [TestCase("::", "unspecified")]
    [TestCase("fc00::1", "unique local")]
    [TestCase("fd00:ec2::254", "unique local")]
    [TestCase("fe80::1", "link-local")]
    [TestCase("ff02::1", "multicast")]
    [TestCase("::ffff:127.0.0.1", "loopback")]
    [TestCase("::ffff:169.254.169.254", "link-local")]
    [TestCase("::ffff:10.0.0.1", "private")]
    [TestCase("64:ff9b::a9fe:a9fe", "embeds 169.254.169.254")]
    [TestCase("2002:7f00:1::1", "embeds 127.0.0.1")]
    [TestCase("198.51.100.7", "operator's deny range")]
    public void DeniesSpecialAndOperatorDeniedAddresses(string address, string expected) =>
        Assert.That(Guard.Check(IPAddress.Parse(address)), Does.Contain(expected));

    [TestCase("93.184.216.34")]
    [TestCase("2606:4700::1111")]
    [TestCase("10.20.3.4")]
    [TestCase("::ffff:10.20.3.4")]
    public void AllowsPublicAndOperatorAllowedAddresses(string address) =>
        Assert.That(Guard.Check(IPAddress.Parse(address)), Is.Null);
}

public sealed class OptionsTests
{
    [Test]
    public void InvalidOptionsFailWithEveryProblemAndNoSecret()
    {
        var options = new EgressOptions
        {
            AllowedRulePatterns = ["a.*.b"],
            DenyRanges = ["nonsense"],
            Hosts = new() { ["pypi.org"] = "not-an-ip", ["bad name"] = "1.2.3.4" },
            Secrets = [new EgressSecretOptions { Match = "api.test", Headers = new() { ["X-Key"] = "TOPSECRET\n" } }],
        };
        options.Dns.SyntheticPool = "10.0.0.0/16";
        options.Tcp.BufferSize = 1;
        var e = Assert.Throws<InvalidOperationException>(() => new EgressGateway(options))!;
        Assert.That(e.Message, Does.Contain("AllowedRulePatterns:0"));
        Assert.That(e.Message, Does.Contain("DenyRanges:0"));
        Assert.That(e.Message, Does.Contain("Hosts:pypi.org: 'not-an-ip' is not an IP address"));
        Assert.That(e.Message, Does.Contain("Hosts:bad name"));
        Assert.That(e.Message, Does.Contain("Secrets:0:Headers"));
        Assert.That(e.Message, Does.Contain("SyntheticPool must be an IPv4 range within 127.0.0.0/8"));
        Assert.That(e.Message, Does.Contain("BufferSize"));
        Assert.That(e.Message, Does.Not.Contain("TOPSECRET"));
    }

    [Test]
    public void BindsFromConfiguration()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Sandbox:Egress:Hosts:pypi.org"] = "10.0.0.5, 10.0.0.6",
            ["Sandbox:Egress:UseSystemResolver"] = "true",
            ["Sandbox:Egress:AllowedRulePatterns:0"] = "*.example.com",
            ["Sandbox:Egress:AllowCidrRules"] = "true",
            ["Sandbox:Egress:AllowedPrivateRanges:0"] = "10.0.0.0/24",
            ["Sandbox:Egress:Secrets:0:Match"] = "api.example.com",
            ["Sandbox:Egress:Secrets:0:TerminateTls"] = "true",
            ["Sandbox:Egress:Secrets:0:Headers:Authorization"] = "Bearer TOPSECRET",
            ["Sandbox:Egress:Dns:TtlSeconds"] = "15",
            ["Sandbox:Egress:Tcp:IdleTimeoutSeconds"] = "60",
            ["Sandbox:Egress:Tls:CaDirectory"] = "/var/lib/sandboxkit/egress",
        }).Build();
        var options = EgressOptions.FromConfiguration(configuration);
        Assert.That(options.Hosts["pypi.org"], Is.EqualTo("10.0.0.5, 10.0.0.6"));
        Assert.That(options.UseSystemResolver, Is.True);
        Assert.That(options.AllowedRulePatterns, Is.EqualTo(new[] { "*.example.com" }));
        Assert.That(options.Secrets.Single().Headers["Authorization"], Is.EqualTo("Bearer TOPSECRET"));
        Assert.That(options.Secrets.Single().TerminateTls, Is.True);
        Assert.That(options.Dns.TtlSeconds, Is.EqualTo(15));
        Assert.That(options.Tcp.IdleTimeoutSeconds, Is.EqualTo(60));
        Assert.That(options.Tls.CaDirectory, Is.EqualTo("/var/lib/sandboxkit/egress"));
        Assert.That(options.ToString() + options.Secrets[0], Does.Not.Contain("TOPSECRET"));

        var settings = EgressSettings.TryCreate(options, out var errors);
        Assert.That(errors, Is.Empty);
        Assert.That(settings!.Hosts["pypi.org"], Is.EqualTo(new[] { IPAddress.Parse("10.0.0.5"), IPAddress.Parse("10.0.0.6") }));
    }
}
