using System.Buffers.Binary;
using System.Net.Security;
using System.Text;
using SandboxKit.Egress.Policy;
using SandboxKit.Egress.Relay;

namespace SandboxKit.Egress.Tests;

public sealed class ClientHelloTests
{
    private const int Max = 32 * 1024;

    [Test]
    public async Task ReadsTheSniOfARealClientHello()
    {
        var hello = await CaptureClientHelloAsync("WWW.Allowed.Test");
        Assert.That(TlsClientHello.TryParse(hello, Max, out var sni, out var error), Is.EqualTo(ClientHelloStatus.Complete), error);
        Assert.That(sni, Is.EqualTo("www.allowed.test"));
    }

    [Test]
    public async Task AClientHelloWithoutSniHasNoName()
    {
        var hello = await CaptureClientHelloAsync("127.0.0.1"); // no SNI is sent for an IP literal
        Assert.That(TlsClientHello.TryParse(hello, Max, out var sni, out _), Is.EqualTo(ClientHelloStatus.Complete));
        Assert.That(sni, Is.Null);
    }

    [TestCase(1)]
    [TestCase(7)]
    [TestCase(100)]
    public async Task ReassemblesAClientHelloFragmentedOverRecords(int fragment)
    {
        var hello = Fragment(await CaptureClientHelloAsync("secure.test"), fragment);
        Assert.That(TlsClientHello.TryParse(hello, Max, out var sni, out var error), Is.EqualTo(ClientHelloStatus.Complete), error);
        Assert.That(sni, Is.EqualTo("secure.test"));
    }

    [Test]
    public async Task EveryTruncationNeedsMoreAndNeverFails()
    {
        var hello = Fragment(await CaptureClientHelloAsync("secure.test"), 50);
        for (int length = 1; length < hello.Length; length++)
        {
            Assert.That(TlsClientHello.TryParse(hello.AsSpan(0, length), Max, out _, out _), Is.EqualTo(ClientHelloStatus.NeedMore), $"prefix of {length}");
        }
    }

    [Test]
    public async Task MutatedClientHellosNeverThrow()
    {
        var hello = await CaptureClientHelloAsync("secure.test");
        var random = new Random(1234);
        int complete = 0, invalid = 0, needMore = 0;
        for (int i = 0; i < 3000; i++)
        {
            var copy = (byte[])hello.Clone();
            for (int flips = random.Next(1, 4); flips > 0; flips--)
            {
                copy[random.Next(copy.Length)] = (byte)random.Next(256);
            }
            switch (TlsClientHello.TryParse(copy, Max, out var sni, out _))
            {
                case ClientHelloStatus.Complete:
                    complete++;
                    Assert.That(sni is null || HostName.TryNormalize(sni, out _, out _), Is.True);
                    break;
                case ClientHelloStatus.Invalid:
                    invalid++;
                    break;
                default:
                    needMore++;
                    break;
            }
        }
        Assert.That(invalid, Is.GreaterThan(0));
        Assert.That(complete + invalid + needMore, Is.EqualTo(3000));
    }

    [Test]
    public void RejectsDuplicateServerNames()
    {
        var sni = ServerName("a.test");
        Assert.That(TlsClientHello.TryParse(Build((0, sni), (0, sni)), Max, out _, out var duplicate), Is.EqualTo(ClientHelloStatus.Invalid));
        Assert.That(duplicate, Does.Contain("duplicate"));
        Assert.That(TlsClientHello.TryParse(Build((0, ServerName("bad name.test"))), Max, out _, out var bad), Is.EqualTo(ClientHelloStatus.Invalid));
        Assert.That(bad, Does.Contain("not a valid host name"));
        Assert.That(TlsClientHello.TryParse(Build((0, ServerName("ok.test")), (0xFE0D, [1, 2, 3])), Max, out var grease, out _), Is.EqualTo(ClientHelloStatus.Complete));
        Assert.That(grease, Is.EqualTo("ok.test"));
    }

    [Test]
    public void RejectsOversizedAndNonHandshakeInput()
    {
        var huge = Build((0, ServerName("a.test")), (0x1234, new byte[20_000]));
        Assert.That(TlsClientHello.TryParse(Fragment(huge, 16000), 16 * 1024, out _, out var error), Is.EqualTo(ClientHelloStatus.Invalid));
        Assert.That(error, Does.Contain("larger than"));
        Assert.That(TlsClientHello.TryParse([0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5], Max, out _, out _), Is.EqualTo(ClientHelloStatus.Invalid));
        Assert.That(TlsClientHello.TryParse([0x16, 3, 3, 0, 0], Max, out _, out _), Is.EqualTo(ClientHelloStatus.Invalid));
        Assert.That(TlsClientHello.TryParse([0x16, 3, 3, 0, 4, 2, 0, 0, 0], Max, out _, out var notHello), Is.EqualTo(ClientHelloStatus.Invalid));
        Assert.That(notHello, Does.Contain("not a ClientHello"));
    }

    internal static async Task<byte[]> CaptureClientHelloAsync(string targetHost)
    {
        var capture = new CaptureStream();
        using var tls = new SslStream(capture);
        try
        {
            await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = targetHost, RemoteCertificateValidationCallback = (_, _, _, _) => false });
        }
        catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
        {
            // Expected: the capture stream never answers.
        }
        return capture.Written.ToArray();
    }

    /// <summary>Re-splits the handshake payload of <paramref name="hello"/> into records of <paramref name="size"/> bytes.</summary>
    internal static byte[] Fragment(byte[] hello, int size)
    {
        var payload = new MemoryStream();
        int offset = 0;
        while (offset + 5 <= hello.Length && hello[offset] == 22)
        {
            int length = BinaryPrimitives.ReadUInt16BigEndian(hello.AsSpan(offset + 3));
            payload.Write(hello, offset + 5, Math.Min(length, hello.Length - offset - 5));
            offset += 5 + length;
        }
        var bytes = payload.ToArray();
        var output = new MemoryStream();
        for (int i = 0; i < bytes.Length; i += size)
        {
            int chunk = Math.Min(size, bytes.Length - i);
            output.Write([22, 3, 1, (byte)(chunk >> 8), (byte)chunk]);
            output.Write(bytes, i, chunk);
        }
        return output.ToArray();
    }

    internal static byte[] ServerName(string name)
    {
        var bytes = Encoding.ASCII.GetBytes(name);
        var value = new byte[5 + bytes.Length];
        BinaryPrimitives.WriteUInt16BigEndian(value, (ushort)(3 + bytes.Length));
        value[2] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(value.AsSpan(3), (ushort)bytes.Length);
        bytes.CopyTo(value, 5);
        return value;
    }

    /// <summary>A minimal TLS 1.2-format ClientHello with the given extensions, in one record (or more if large).</summary>
    internal static byte[] Build(params (ushort Type, byte[] Data)[] extensions)
    {
        var body = new MemoryStream();
        body.Write([3, 3]);
        body.Write(new byte[32]);
        body.WriteByte(0); // session id
        body.Write([0, 2, 0x13, 0x01]); // one cipher suite
        body.Write([1, 0]); // null compression
        var ext = new MemoryStream();
        foreach (var (type, data) in extensions)
        {
            ext.Write([(byte)(type >> 8), (byte)type, (byte)(data.Length >> 8), (byte)data.Length]);
            ext.Write(data);
        }
        body.Write([(byte)(ext.Length >> 8), (byte)ext.Length]);
        ext.WriteTo(body);
        var handshake = new MemoryStream();
        handshake.Write([1, (byte)(body.Length >> 16), (byte)(body.Length >> 8), (byte)body.Length]);
        body.WriteTo(handshake);
        var bytes = handshake.ToArray();
        var record = new MemoryStream();
        for (int i = 0; i < bytes.Length; i += 16384)
        {
            int chunk = Math.Min(16384, bytes.Length - i);
            record.Write([22, 3, 1, (byte)(chunk >> 8), (byte)chunk]);
            record.Write(bytes, i, chunk);
        }
        return record.ToArray();
    }

    private sealed class CaptureStream : Stream
    {
        public MemoryStream Written { get; } = new();

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => 0;

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => Written.Write(buffer, offset, count);
    }
}

public sealed class HttpHeadTests
{
    private static HttpHeadStatus Parse(string text, out HttpRequestHead? head, out string? error) =>
        HttpRequestHead.TryParse(Encoding.Latin1.GetBytes(text), 32 * 1024, out head, out error);

    [Test]
    public void ParsesAnOriginFormRequest()
    {
        Assert.That(Parse("POST /upload HTTP/1.1\r\nHost: API.Example.com:8080\r\nContent-Length: 12\r\n\r\nbody", out var head, out var error), Is.EqualTo(HttpHeadStatus.Complete), error);
        Assert.That(head!.Authority!.Name, Is.EqualTo("api.example.com"));
        Assert.That(head.Authority.Port, Is.EqualTo(8080));
        Assert.That(head.Body, Is.EqualTo(HttpBodyKind.ContentLength));
        Assert.That(head.ContentLength, Is.EqualTo(12));
        Assert.That(head.Length, Is.EqualTo(head.Length > 0 ? "POST /upload HTTP/1.1\r\nHost: API.Example.com:8080\r\nContent-Length: 12\r\n\r\n".Length : -1));
    }

    [Test]
    public void ParsesConnectAndAbsoluteForm()
    {
        Assert.That(Parse("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n", out var connect, out _), Is.EqualTo(HttpHeadStatus.Complete));
        Assert.That(connect!.IsConnect, Is.True);
        Assert.That(connect.Authority, Is.EqualTo(new HttpAuthority("pypi.org", null, 443)));
        Assert.That(Parse("GET http://pypi.org/simple/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n", out var absolute, out _), Is.EqualTo(HttpHeadStatus.Complete));
        Assert.That(absolute!.Authority, Is.EqualTo(new HttpAuthority("pypi.org", null, 80)));
        Assert.That(Parse("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n", out var v6, out _), Is.EqualTo(HttpHeadStatus.Complete));
        Assert.That(v6!.Authority!.Address!.ToString(), Is.EqualTo("2001:db8::1"));
    }

    [TestCase("GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both Transfer-Encoding and Content-Length")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n", "final chunked")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting Content-Length")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n folded\r\n\r\n", "folding")]
    [TestCase("GET / HTTP/1.1\r\nHost : a.test\r\n\r\n", "not a token")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "more than one Host")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n", "CRLF")]
    [TestCase("GET / HTTP/1.1\r\nX: y\r\n\r\n", "without Host")]
    [TestCase("GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", "user info")]
    [TestCase("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "Host header")]
    [TestCase("GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", "differs from the request URI")]
    [TestCase("CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n", "has no port")]
    [TestCase("GET nonsense HTTP/1.1\r\nHost: a.test\r\n\r\n", "neither origin")]
    public void RefusesAmbiguousOrMalformedRequests(string text, string expected)
    {
        Assert.That(Parse(text, out _, out var error), Is.EqualTo(HttpHeadStatus.Invalid));
        Assert.That(error, Does.Contain(expected));
    }

    [TestCase("SSH-2.0-OpenSSH_9.2\r\n")]
    [TestCase("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]
    [TestCase("*1\r\n$4\r\nPING\r\n")]
    [TestCase("\u0000\u0001binary")]
    [TestCase("get / HTTP/1.1\r\n")]
    public void OtherProtocolsAreNotHttp(string text) => Assert.That(Parse(text, out _, out _), Is.EqualTo(HttpHeadStatus.NotHttp));

    [TestCase("G")]
    [TestCase("GET /index")]
    [TestCase("GET / HTTP/1.1\r\nHost: a.te")]
    public void PartialRequestsNeedMore(string text) => Assert.That(Parse(text, out _, out _), Is.EqualTo(HttpHeadStatus.NeedMore));

    [Test]
    public void BoundsTheHead()
    {
        var text = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + new string('a', 40_000);
        Assert.That(Parse(text, out _, out var error), Is.EqualTo(HttpHeadStatus.TooLarge));
        Assert.That(error, Does.Contain("larger than"));
    }

    [Test]
    public void RewriteReplacesSameNamedHeadersAndKeepsTheRestByteForByte()
    {
        var text = "GET /x HTTP/1.1\r\nHost: api.test\r\nauthorization: Basic c2FuZGJveA==\r\nX-Keep:   spaced  \r\nAUTHORIZATION: again\r\n\r\n";
        Assert.That(Parse(text, out var head, out _), Is.EqualTo(HttpHeadStatus.Complete));
        var injection = HeaderInjection.TryCreate("Authorization", "Bearer s3cr3t", out _)!;
        var rewritten = Encoding.Latin1.GetString(HttpRequestForwarder.Rewrite(Encoding.Latin1.GetBytes(text), head!, [injection]));
        Assert.That(rewritten, Is.EqualTo("GET /x HTTP/1.1\r\nHost: api.test\r\nX-Keep:   spaced  \r\nAuthorization: Bearer s3cr3t\r\n\r\n"));
        Assert.That(injection.ToString(), Does.Not.Contain("s3cr3t"));
    }

    [Test]
    public void RandomBytesNeverThrow()
    {
        var random = new Random(99);
        var seed = Encoding.ASCII.GetBytes("POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        for (int i = 0; i < 3000; i++)
        {
            var data = i % 2 == 0 ? new byte[random.Next(1, 300)] : (byte[])seed.Clone();
            if (i % 2 == 0)
            {
                random.NextBytes(data);
            }
            else
            {
                data[random.Next(data.Length)] = (byte)random.Next(256);
            }
            var status = HttpRequestHead.TryParse(data, 4096, out var head, out _);
            Assert.That(status == HttpHeadStatus.Complete ? head : new object(), Is.Not.Null);
        }
    }
}
