using System.Net;

namespace SandboxKit.Egress.Relay;

/// <summary>What the first bytes of a connection turned out to be.</summary>
internal enum TrafficKind
{
    /// <summary>Not TLS or HTTP (or nothing yet): decided on the dialed address alone.</summary>
    Opaque,

    /// <summary>A TLS ClientHello.</summary>
    Tls,

    /// <summary>An HTTP/1.x request.</summary>
    Http,

    /// <summary>An HTTP CONNECT request (the sandbox uses the gateway as its proxy).</summary>
    Connect,

    /// <summary>TLS or HTTP, but malformed, oversized, or incomplete in time: denied.</summary>
    Malformed,
}

/// <summary>What <see cref="TrafficSniffer"/> saw, and the bytes it took from the stream.</summary>
internal sealed class SniffResult
{
    /// <summary>The kind of traffic.</summary>
    public TrafficKind Kind { get; init; }

    /// <summary>The host name the traffic names (SNI, Host, CONNECT), normalised.</summary>
    public string? Name { get; init; }

    /// <summary>An IP literal the traffic names instead of a name (Host: 1.2.3.4, CONNECT [::1]:443).</summary>
    public IPAddress? Literal { get; init; }

    /// <summary>The port the traffic names (CONNECT, absolute-form request URIs).</summary>
    public int? Port { get; init; }

    /// <summary>Why it is <see cref="TrafficKind.Malformed"/>.</summary>
    public string? Error { get; init; }

    /// <summary>The request head for <see cref="TrafficKind.Http"/> and <see cref="TrafficKind.Connect"/>.</summary>
    public HttpRequestHead? Head { get; init; }

    /// <summary>The bytes read so far, from offset 0.</summary>
    public required byte[] Buffer { get; init; }

    /// <summary>How many bytes of <see cref="Buffer"/> were read.</summary>
    public int Length { get; init; }

    /// <summary>A read still in flight into <see cref="Buffer"/> at <see cref="Length"/> (first-byte timeout), or null.</summary>
    public Task<int>? PendingRead { get; init; }

    /// <summary>The protocol label used in decisions.</summary>
    public string Protocol => Kind switch
    {
        TrafficKind.Tls => "tls",
        TrafficKind.Http => "http",
        TrafficKind.Connect => "connect",
        TrafficKind.Malformed => "malformed",
        _ => "opaque",
    };

    /// <summary>The bytes read so far as a stream in front of <paramref name="stream"/>.</summary>
    public PrefixedStream Replay(Stream stream) => new(stream, Buffer, 0, Length, PendingRead);
}

/// <summary>
/// Reads just enough of a new connection to know what it is and which name it claims, within a byte bound and
/// a time bound, never parsing beyond what it read and never throwing on what the sandbox sends.
/// </summary>
internal static class TrafficSniffer
{
    /// <summary>Sniffs <paramref name="stream"/>; <paramref name="buffer"/> may already hold <paramref name="length"/> bytes of it.</summary>
    public static async Task<SniffResult> SniffAsync(Stream stream, byte[] buffer, int length, TimeSpan firstByteTimeout, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        if (length == 0)
        {
            var first = stream.ReadAsync(buffer.AsMemory(0), cancellationToken).AsTask();
            try
            {
                length = await first.WaitAsync(firstByteTimeout, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // A server-speaks-first protocol, probably. The read stays in flight and the relay takes it over.
                return new SniffResult { Kind = TrafficKind.Opaque, Buffer = buffer, PendingRead = first };
            }
            if (length == 0)
            {
                return new SniffResult { Kind = TrafficKind.Opaque, Buffer = buffer };
            }
        }

        while (true)
        {
            var data = buffer.AsSpan(0, length);
            bool tls = data[0] == 0x16;
            bool sawLineEnd = false;
            if (tls)
            {
                switch (TlsClientHello.TryParse(data, buffer.Length, out var sni, out var error))
                {
                    case ClientHelloStatus.Complete:
                        return new SniffResult { Kind = TrafficKind.Tls, Name = sni, Buffer = buffer, Length = length };
                    case ClientHelloStatus.Invalid:
                        return Malformed(buffer, length, error ?? "malformed ClientHello");
                }
            }
            else
            {
                switch (HttpRequestHead.TryParse(data, buffer.Length, out var head, out var error))
                {
                    case HttpHeadStatus.NotHttp:
                        return new SniffResult { Kind = TrafficKind.Opaque, Buffer = buffer, Length = length };
                    case HttpHeadStatus.Invalid or HttpHeadStatus.TooLarge:
                        return Malformed(buffer, length, error ?? "malformed HTTP request");
                    case HttpHeadStatus.Complete:
                        var authority = head!.Authority;
                        return new SniffResult
                        {
                            Kind = head.IsConnect ? TrafficKind.Connect : TrafficKind.Http,
                            Name = authority?.Name,
                            Literal = authority?.Address,
                            Port = head.IsConnect || head.IsAbsoluteForm ? authority?.Port : null,
                            Head = head,
                            Buffer = buffer,
                            Length = length,
                        };
                }
                sawLineEnd = data.Contains((byte)'\n');
            }

            if (length == buffer.Length)
            {
                return Malformed(buffer, length, "the first message is larger than the inspection bound");
            }
            var remaining = deadline - DateTime.UtcNow;
            var more = stream.ReadAsync(buffer.AsMemory(length), cancellationToken).AsTask();
            int read;
            try
            {
                read = remaining > TimeSpan.Zero
                    ? await more.WaitAsync(remaining, cancellationToken).ConfigureAwait(false)
                    : throw new TimeoutException();
            }
            catch (TimeoutException)
            {
                if (!tls && !sawLineEnd)
                {
                    // Letters without a line end for this long: not an HTTP client, so an opaque protocol.
                    return new SniffResult { Kind = TrafficKind.Opaque, Buffer = buffer, Length = length, PendingRead = more };
                }
                Observe(more);
                return Malformed(buffer, length, tls ? "the ClientHello did not arrive in time" : "the request head did not arrive in time");
            }
            if (read == 0)
            {
                if (!tls && !sawLineEnd)
                {
                    return new SniffResult { Kind = TrafficKind.Opaque, Buffer = buffer, Length = length };
                }
                return Malformed(buffer, length, tls ? "the connection closed inside the ClientHello" : "the connection closed inside the request head");
            }
            length += read;
        }
    }

    /// <summary>Keeps an abandoned read's eventual failure (the stream is disposed under it) from going unobserved.</summary>
    public static void Observe(Task? task) =>
        task?.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

    private static SniffResult Malformed(byte[] buffer, int length, string error) =>
        new() { Kind = TrafficKind.Malformed, Error = error, Buffer = buffer, Length = length };
}
