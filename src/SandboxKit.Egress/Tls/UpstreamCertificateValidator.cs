using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace SandboxKit.Egress.Tls;

/// <summary>
/// Validates upstream servers when the gateway re-originates TLS: the system trust store first, then the operator's
/// extra CAs. A name mismatch or a missing certificate is never forgiven.
/// </summary>
internal sealed class UpstreamCertificateValidator
{
    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private readonly X509Certificate2Collection _extraRoots;

    /// <summary>Creates the validator with <paramref name="extraRoots"/> trusted besides the system store.</summary>
    public UpstreamCertificateValidator(X509Certificate2Collection extraRoots) => _extraRoots = extraRoots;

    /// <summary>Loads the extra CAs the options name (PEM files, each may hold several certificates) plus the in-memory ones.</summary>
    public static UpstreamCertificateValidator FromOptions(EgressTlsOptions options)
    {
        var roots = new X509Certificate2Collection();
        roots.AddRange(options.ExtraTrustedCertificates);
        foreach (var path in options.ExtraTrustedCaPaths)
        {
            try
            {
                roots.ImportFromPemFile(path);
            }
            catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
            {
                throw new InvalidOperationException($"Sandbox:Egress:Tls:ExtraTrustedCaPaths: '{path}' could not be loaded: {e.Message}", e);
            }
        }
        return new UpstreamCertificateValidator(roots);
    }

    /// <summary>The callback for <see cref="SslClientAuthenticationOptions.RemoteCertificateValidationCallback"/>.</summary>
    public bool Validate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (errors == SslPolicyErrors.None)
        {
            return true;
        }
        if (certificate is null || errors != SslPolicyErrors.RemoteCertificateChainErrors || _extraRoots.Count == 0)
        {
            return false;
        }

        using var custom = new X509Chain();
        custom.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        custom.ChainPolicy.CustomTrustStore.AddRange(_extraRoots);
        custom.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck; // air-gapped deployments have no CRL/OCSP
        custom.ChainPolicy.DisableCertificateDownloads = true; // the configured CAs are the whole story
        custom.ChainPolicy.ApplicationPolicy.Add(ServerAuth);
        if (chain is not null)
        {
            // The intermediates the server sent.
            custom.ChainPolicy.ExtraStore.AddRange(chain.ChainPolicy.ExtraStore);
            foreach (var element in chain.ChainElements)
            {
                custom.ChainPolicy.ExtraStore.Add(element.Certificate);
            }
        }
        using var leaf = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
        return custom.Build(leaf);
    }
}
