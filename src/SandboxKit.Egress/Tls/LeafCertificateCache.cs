using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace SandboxKit.Egress.Tls;

/// <summary>
/// Leaf certificates the gateway presents to the sandbox, one per SNI name, issued by the egress CA on first use and
/// kept in a bounded LRU cache (ECDSA P-256 keys: cheap to make, accepted by every current client).
/// </summary>
internal sealed class LeafCertificateCache
{
    private readonly EgressCertificateAuthority _authority;
    private readonly int _capacity;
    private readonly TimeSpan _validity;
    private readonly TimeProvider _time;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, LinkedListNode<Entry>> _entries = new(StringComparer.Ordinal);
    private readonly LinkedList<Entry> _order = new();

    /// <summary>Creates the cache.</summary>
    public LeafCertificateCache(EgressCertificateAuthority authority, int capacity, TimeSpan validity, TimeProvider time)
    {
        _authority = authority;
        _capacity = capacity;
        _validity = validity;
        _time = time;
    }

    /// <summary>Leaf certificates issued so far (for tests and metrics).</summary>
    public int Issued { get; private set; }

    /// <summary>Certificates held now.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>The certificate context for <paramref name="name"/>, issuing one when missing or close to expiry.</summary>
    public SslStreamCertificateContext Get(string name)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            if (_entries.TryGetValue(name, out var node))
            {
                if (node.Value.RenewAfter > now)
                {
                    _order.Remove(node);
                    _order.AddFirst(node);
                    return node.Value.Context;
                }
                _order.Remove(node);
                _entries.Remove(name);
            }

            // Issued under the lock: a few milliseconds, and two handshakes for a new name then share one certificate.
            var (context, notAfter) = Issue(name, now);
            Issued++;
            var entry = new Entry(name, context, notAfter - (_validity / 4));
            _entries[name] = _order.AddFirst(entry);
            while (_entries.Count > _capacity)
            {
                var last = _order.Last!;
                _order.RemoveLast();
                _entries.Remove(last.Value.Name);
            }
            return context;
        }
    }

    private (SslStreamCertificateContext Context, DateTimeOffset NotAfter) Issue(string name, DateTimeOffset now)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={name}"), key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(name);
        request.CertificateExtensions.Add(san.Build(critical: false));
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_authority.PublicCertificate, includeKeyIdentifier: true, includeIssuerAndSerial: false));

        var notBefore = now.AddHours(-1); // tolerate a sandbox clock slightly behind
        var notAfter = now + _validity;
        if (notAfter > _authority.Certificate.NotAfter)
        {
            notAfter = _authority.Certificate.NotAfter.ToUniversalTime();
        }
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F; // positive
        using var unsigned = request.Create(_authority.Certificate.SubjectName, _authority.CreateSignatureGenerator(), notBefore, notAfter, serial);
        var leaf = unsigned.CopyWithPrivateKey(key);
        if (OperatingSystem.IsWindows())
        {
            // SChannel wants a key it can find by name, not an ephemeral one.
            var pfx = leaf.Export(X509ContentType.Pkcs12);
            leaf.Dispose();
            leaf = X509CertificateLoader.LoadPkcs12(pfx, null);
        }
        var context = SslStreamCertificateContext.Create(leaf, [_authority.PublicCertificate], offline: true);
        return (context, notAfter);
    }

    private sealed record Entry(string Name, SslStreamCertificateContext Context, DateTimeOffset RenewAfter);
}
