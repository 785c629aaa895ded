using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace SandboxKit.Egress.Tls;

/// <summary>
/// The deployment's TLS-termination CA: loaded from operator PEM files, or generated on first start and kept in a
/// directory so every later start (and every sandbox that was told to trust it) sees the same one.
/// </summary>
internal sealed class EgressCertificateAuthority : IDisposable
{
    /// <summary>File (certificate and private key) the CA is kept in under <see cref="EgressTlsOptions.CaDirectory"/>.</summary>
    public const string FileName = "egress-ca.pem";

    /// <summary>Public copy of the certificate alone, written beside it for convenience (e.g. to mount into images).</summary>
    public const string PublicFileName = "egress-ca.crt";

    private EgressCertificateAuthority(X509Certificate2 certificate)
    {
        Certificate = certificate;
        CertificatePem = certificate.ExportCertificatePem();
        PublicCertificate = X509CertificateLoader.LoadCertificate(certificate.RawData);
    }

    /// <summary>The CA certificate with its private key.</summary>
    public X509Certificate2 Certificate { get; }

    /// <summary>The CA certificate without its key (what chains are sent with).</summary>
    public X509Certificate2 PublicCertificate { get; }

    /// <summary>The certificate as PEM, for the sandbox's trust store.</summary>
    public string CertificatePem { get; }

    /// <summary>Loads or creates the CA the options describe; null when none is configured (TLS termination off).</summary>
    public static EgressCertificateAuthority? FromOptions(EgressTlsOptions options, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!string.IsNullOrWhiteSpace(options.CaCertificatePath))
        {
            return Load(options.CaCertificatePath, string.IsNullOrWhiteSpace(options.CaKeyPath) ? null : options.CaKeyPath, time);
        }
        if (!string.IsNullOrWhiteSpace(options.CaDirectory))
        {
            try
            {
                return LoadOrCreate(options.CaDirectory, options.CaKeyAlgorithm, time);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new InvalidOperationException($"The egress CA directory '{options.CaDirectory}' cannot be used: {e.Message}", e);
            }
        }
        return null;
    }

    /// <summary>Loads a CA from PEM files and checks it can sign.</summary>
    public static EgressCertificateAuthority Load(string certificatePath, string? keyPath, TimeProvider time)
    {
        X509Certificate2 certificate;
        try
        {
            certificate = X509Certificate2.CreateFromPemFile(certificatePath, keyPath);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new InvalidOperationException($"The egress CA could not be loaded from '{certificatePath}': {e.Message}", e);
        }
        Check(certificate, certificatePath, time);
        return new EgressCertificateAuthority(certificate);
    }

    /// <summary>Loads the CA kept in <paramref name="directory"/>, generating and keeping one first if there is none.</summary>
    public static EgressCertificateAuthority LoadOrCreate(string directory, string keyAlgorithm, TimeProvider time)
    {
        var path = Path.Combine(directory, FileName);
        if (!File.Exists(path))
        {
            Directory.CreateDirectory(directory);
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
            using var created = Generate(keyAlgorithm, time);
            var pem = created.ExportCertificatePem() + "\n" + ExportKeyPem(created);
            // Written to a private temporary file, then moved into place without overwriting: two servers starting
            // at once both generate, one wins, and the other loads the winner's CA.
            var temporary = Path.Combine(directory, $".{FileName}.{Guid.NewGuid():N}.tmp");
            var fileOptions = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
            if (!OperatingSystem.IsWindows())
            {
                fileOptions.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            }
            using (var writer = new StreamWriter(temporary, System.Text.Encoding.ASCII, fileOptions))
            {
                writer.Write(pem);
            }
            try
            {
                File.Move(temporary, path, overwrite: false);
            }
            catch (IOException) when (File.Exists(path))
            {
                File.Delete(temporary);
            }
        }
        var authority = Load(path, null, time);
        try
        {
            File.WriteAllText(Path.Combine(directory, PublicFileName), authority.CertificatePem);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Only a convenience copy; CertificatePem is the source of truth.
        }
        return authority;
    }

    /// <summary>Generates a new CA certificate with its key.</summary>
    public static X509Certificate2 Generate(string keyAlgorithm, TimeProvider time)
    {
        var subject = new X500DistinguishedName($"CN=SandboxKit Egress CA {DateTime.UtcNow:yyyy-MM-dd} {RandomNumberGenerator.GetHexString(8, lowercase: true)}, O=SandboxKit");
        var now = time.GetUtcNow();
        if (string.Equals(keyAlgorithm, "Rsa", StringComparison.OrdinalIgnoreCase))
        {
            using var rsa = RSA.Create(3072);
            return SelfSign(new CertificateRequest(subject, rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1), now);
        }
        if (!string.Equals(keyAlgorithm, "ECDsa", StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidOperationException($"Sandbox:Egress:Tls:CaKeyAlgorithm must be ECDsa or Rsa, not '{keyAlgorithm}'.");
        }
        using var ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        return SelfSign(new CertificateRequest(subject, ecdsa, HashAlgorithmName.SHA256), now);
    }

    /// <summary>A signature generator for the CA's key, whatever its algorithm.</summary>
    public X509SignatureGenerator CreateSignatureGenerator() =>
        Certificate.GetECDsaPrivateKey() is { } ecdsa
            ? X509SignatureGenerator.CreateForECDsa(ecdsa)
            : X509SignatureGenerator.CreateForRSA(Certificate.GetRSAPrivateKey()!, RSASignaturePadding.Pkcs1);

    /// <inheritdoc />
    public void Dispose()
    {
        Certificate.Dispose();
        PublicCertificate.Dispose();
    }

    private static X509Certificate2 SelfSign(CertificateRequest request, DateTimeOffset now)
    {
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign | X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        return request.CreateSelfSigned(now.AddDays(-1), now.AddYears(10));
    }

    private static string ExportKeyPem(X509Certificate2 certificate) =>
        certificate.GetECDsaPrivateKey() is { } ecdsa
            ? ecdsa.ExportPkcs8PrivateKeyPem()
            : certificate.GetRSAPrivateKey()!.ExportPkcs8PrivateKeyPem();

    private static void Check(X509Certificate2 certificate, string path, TimeProvider time)
    {
        string? problem = null;
        if (!certificate.HasPrivateKey)
        {
            problem = "has no private key";
        }
        else if (certificate.GetECDsaPrivateKey() is null && certificate.GetRSAPrivateKey() is null)
        {
            problem = "has a key that is neither RSA nor ECDSA";
        }
        else if (certificate.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
        {
            problem = "is not a CA certificate (basic constraints)";
        }
        else if (certificate.NotAfter.ToUniversalTime() <= time.GetUtcNow().UtcDateTime.AddDays(1))
        {
            problem = "has expired or expires within a day";
        }
        if (problem is not null)
        {
            certificate.Dispose();
            throw new InvalidOperationException($"The egress CA in '{path}' {problem}.");
        }
    }
}
