using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using SandboxKit.Egress.Dns;
using SandboxKit.Egress.Policy;
using SandboxKit.Egress.Relay;
using SandboxKit.Egress.Resolution;

namespace SandboxKit.Egress.Tests;

/// <summary>
/// Connects only to loopback and records every endpoint asked for. Anything else is refused before a packet leaves,
/// and counted, so a test that would have dialed out fails instead.
/// </summary>
internal sealed class LoopbackOnlyConnector : IUpstreamConnector
{
    private readonly SocketUpstreamConnector _inner = new();

    public ConcurrentQueue<IPEndPoint> Dialed { get; } = new();

    public ConcurrentQueue<IPEndPoint> Refused { get; } = new();

    public ValueTask<Socket> ConnectAsync(IPEndPoint endpoint, CancellationToken cancellationToken)
    {
        if (!IPAddress.IsLoopback(endpoint.Address))
        {
            Refused.Enqueue(endpoint);
            throw new InvalidOperationException($"test connector refused non-loopback {endpoint}");
        }
        Dialed.Enqueue(endpoint);
        return _inner.ConnectAsync(endpoint, cancellationToken);
    }
}

/// <summary>A system resolver that answers from a table and counts every lookup.</summary>
internal sealed class CountingSystemResolver : ISystemNameResolver
{
    private readonly Dictionary<string, IPAddress[]> _answers;

    public CountingSystemResolver(Dictionary<string, IPAddress[]>? answers = null) => _answers = answers ?? [];

    public ConcurrentQueue<string> Lookups { get; } = new();

    public Task<IPAddress[]> GetHostAddressesAsync(string name, CancellationToken cancellationToken)
    {
        Lookups.Enqueue(name);
        return _answers.TryGetValue(name, out var addresses)
            ? Task.FromResult(addresses)
            : Task.FromException<IPAddress[]>(new SocketException((int)SocketError.HostNotFound));
    }
}

/// <summary>A test PKI: a CA and server certificates it issues.</summary>
internal static class TestPki
{
    public static X509Certificate2 CreateCa(string name, bool rsa = false)
    {
        var subject = new X500DistinguishedName($"CN={name}");
        CertificateRequest request;
        if (rsa)
        {
            using var key = RSA.Create(2048);
            request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
            AddCaExtensions(request);
            return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(1));
        }
        using var ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        request = new CertificateRequest(subject, ecdsa, HashAlgorithmName.SHA256);
        AddCaExtensions(request);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(1));
    }

    public static X509Certificate2 IssueServer(X509Certificate2 ca, params string[] names)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={names[0]}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        foreach (var name in names)
        {
            san.AddDnsName(name);
        }
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var generator = ca.GetECDsaPrivateKey() is { } caKey
            ? X509SignatureGenerator.CreateForECDsa(caKey)
            : X509SignatureGenerator.CreateForRSA(ca.GetRSAPrivateKey()!, RSASignaturePadding.Pkcs1);
        using var unsigned = request.Create(ca.SubjectName, generator, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(30), RandomNumberGenerator.GetBytes(12));
        using var withKey = unsigned.CopyWithPrivateKey(key);
        // Through PKCS#12 so Kestrel/SslStream get a key they can use on every platform.
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>A certificate validation callback trusting only <paramref name="root"/>.</summary>
    public static RemoteCertificateValidationCallback TrustOnly(X509Certificate2 root) => (_, certificate, _, errors) =>
    {
        if (certificate is null || (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) != 0)
        {
            return false;
        }
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(root);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var leaf = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
        return chain.Build(leaf);
    };

    private static void AddCaExtensions(CertificateRequest request)
    {
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
    }
}

/// <summary>Loopback socket pairs: one end for the gateway (the supervisor's channel), one for the "sandbox program".</summary>
internal static class Loopback
{
    public static async Task<(NetworkStream GatewaySide, NetworkStream SandboxSide)> PairAsync()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var accept = listener.AcceptSocketAsync();
        await client.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
        var server = await accept;
        server.NoDelay = true;
        return (new NetworkStream(server, ownsSocket: true), new NetworkStream(client, ownsSocket: true));
    }

    /// <summary>Reads until end of stream (or <paramref name="limit"/> bytes), within <paramref name="timeout"/>.</summary>
    public static async Task<byte[]> ReadToEndAsync(Stream stream, TimeSpan timeout, int limit = 1 << 20)
    {
        using var cts = new CancellationTokenSource(timeout);
        var output = new MemoryStream();
        var buffer = new byte[8192];
        try
        {
            while (output.Length < limit)
            {
                int read = await stream.ReadAsync(buffer, cts.Token);
                if (read == 0)
                {
                    break;
                }
                output.Write(buffer, 0, read);
            }
        }
        catch (IOException)
        {
            // A reset counts as the end here.
        }
        return output.ToArray();
    }
}

/// <summary>Builds and reads DNS messages independently of the code under test.</summary>
internal static class DnsPackets
{
    public static byte[] Query(ushort id, string name, ushort type, ushort @class = 1, ushort flags = 0x0100)
    {
        var message = new MemoryStream();
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(header, id);
        BinaryPrimitives.WriteUInt16BigEndian(header[2..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(header[4..], 1);
        message.Write(header);
        foreach (var label in name.TrimEnd('.').Split('.'))
        {
            var bytes = Encoding.ASCII.GetBytes(label);
            message.WriteByte((byte)bytes.Length);
            message.Write(bytes);
        }
        message.WriteByte(0);
        Span<byte> tail = stackalloc byte[4];
        BinaryPrimitives.WriteUInt16BigEndian(tail, type);
        BinaryPrimitives.WriteUInt16BigEndian(tail[2..], @class);
        message.Write(tail);
        return message.ToArray();
    }

    public static byte[] TcpFramed(byte[] message)
    {
        var framed = new byte[message.Length + 2];
        BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)message.Length);
        message.CopyTo(framed, 2);
        return framed;
    }

    public sealed record Answer(ushort Type, uint Ttl, byte[] Data);

    public sealed record Response(ushort Id, ushort Flags, int Rcode, int QuestionCount, string? QuestionName, ushort QuestionType, List<Answer> Answers)
    {
        public bool IsResponse => (Flags & 0x8000) != 0;

        public bool Authoritative => (Flags & 0x0400) != 0;
    }

    /// <summary>Parses a response (question and answers; names in answers must be pointers or plain labels).</summary>
    public static Response Parse(byte[] message)
    {
        ushort id = BinaryPrimitives.ReadUInt16BigEndian(message);
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(2));
        int qd = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(4));
        int an = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(6));
        int offset = 12;
        string? qname = null;
        ushort qtype = 0;
        for (int q = 0; q < qd; q++)
        {
            qname = ReadName(message, ref offset);
            qtype = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
            offset += 4;
        }
        var answers = new List<Answer>();
        for (int a = 0; a < an; a++)
        {
            ReadName(message, ref offset);
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
            uint ttl = BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset + 4));
            int length = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset + 8));
            answers.Add(new Answer(type, ttl, message.AsSpan(offset + 10, length).ToArray()));
            offset += 10 + length;
        }
        Assert.That(offset, Is.EqualTo(message.Length), "the response has trailing bytes");
        return new Response(id, flags, flags & 0xF, qd, qname, qtype, answers);
    }

    private static string ReadName(byte[] message, ref int offset)
    {
        var labels = new List<string>();
        int cursor = offset;
        bool jumped = false;
        while (true)
        {
            int length = message[cursor];
            if ((length & 0xC0) == 0xC0)
            {
                int pointer = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(cursor)) & 0x3FFF;
                if (!jumped)
                {
                    offset = cursor + 2;
                }
                jumped = true;
                cursor = pointer;
                continue;
            }
            if (length == 0)
            {
                if (!jumped)
                {
                    offset = cursor + 1;
                }
                return string.Join('.', labels);
            }
            labels.Add(Encoding.ASCII.GetString(message, cursor + 1, length));
            cursor += 1 + length;
        }
    }
}

/// <summary>Builds gateways for tests: static hosts only, loopback-only dialing, fast timeouts.</summary>
internal static class TestGateways
{
    public static EgressOptions Options(Action<EgressOptions>? configure = null)
    {
        var options = new EgressOptions
        {
            UseSystemResolver = false,
            AllowedRulePatterns = ["*:*"],
            // The loopback servers the tests talk to stand in for real upstreams: the operator allows exactly that address.
            AllowedPrivateRanges = ["127.0.0.1/32"],
        };
        options.Tcp.FirstByteTimeoutMilliseconds = 1000;
        options.Tcp.PeekTimeoutSeconds = 3;
        options.Tcp.ConnectTimeoutSeconds = 3;
        options.Tls.HandshakeTimeoutSeconds = 5;
        configure?.Invoke(options);
        return options;
    }

    public static EgressPolicy Policy(EgressGateway gateway, params EgressAllowRuleSpec[] allow) => Policy(gateway, allow, []);

    public static EgressPolicy Policy(EgressGateway gateway, EgressAllowRuleSpec[] allow, string[] deny)
    {
        var result = gateway.CreatePolicy(new EgressPolicySpec { Allow = [.. allow], Deny = [.. deny] });
        Assert.That(result.Errors, Is.Empty, "the test policy must be valid");
        return result.Policy!;
    }

    /// <summary>Asks the gateway for <paramref name="name"/>'s A record and returns the synthetic address.</summary>
    public static async Task<IPAddress> ResolveAsync(EgressGateway gateway, EgressSession session, string name)
    {
        var result = await gateway.HandleDnsQueryAsync(session, DnsPackets.Query(0x4242, name, DnsType.A), DnsTransport.Udp);
        Assert.That(result.Response, Is.Not.Null);
        var response = DnsPackets.Parse(result.Response!);
        Assert.That(response.Rcode, Is.EqualTo(0), $"DNS for {name}: {result.Decision.Reason}");
        Assert.That(response.Answers, Has.Count.EqualTo(1));
        return new IPAddress(response.Answers[0].Data);
    }
}
