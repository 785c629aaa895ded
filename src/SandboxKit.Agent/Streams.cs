using System.Net;
using System.Net.Sockets;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// A TCP connection of the sandbox carried on a channel (loop thread only): <c>N</c> (the server connects to a port
/// in the sandbox; preview URLs) or <c>n</c> (the egress relay caught a connection the sandbox made). Either way
/// <c>I</c> is bytes into the sandbox's socket and <c>o</c> bytes out of it, both within credit: without credit the
/// socket is not read (the sandbox's side blocks in its writes), and <c>I</c> credit comes back as the socket takes the
/// bytes. <c>C</c> shuts the socket's write side once everything queued is written; the socket's EOF is <c>z</c>.
/// When both directions are done, or the socket fails, it is closed and <c>f</c> (<see cref="StreamResult"/>) ends the
/// channel; <c>K</c> resets it (then <c>f</c>). When the connection ends the socket is reset (the server side is gone).
/// </summary>
internal sealed unsafe class StreamChannel : Channel
{
    [ThreadStatic]
    private static byte[]? t_scratch;

    private readonly WatchedFd _socket;
    private readonly Queue<ReadOnlyMemory<byte>> _toSocket = new();
    private readonly Action<StreamChannel>? _closed;
    private int _headOffset;
    private bool _connecting;
    private bool _readDone;
    private bool _closeRequested;
    private bool _writeDone;
    private bool _finished;
    private long _bytesIn;
    private long _bytesOut;

    private ConnectRequest? _target;

    private StreamChannel(Connection connection, uint id, int fd, bool connecting, Action<StreamChannel>? closed)
        : base(connection, id)
    {
        _socket = new WatchedFd(connection.Loop, fd, OnSocket);
        _connecting = connecting;
        _closed = closed;
    }

    /// <summary>Stream channels open now (connections into the sandbox, relayed ones counted apart).</summary>
    internal static int OpenInbound { get; private set; }

    internal override bool AcceptsData => true;

    /// <summary>The socket is closed (the final frame is sent, or the connection is gone).</summary>
    internal bool Finished => _finished;

    // ---- N --------------------------------------------------------------------------------------------------

    internal const int MaxInbound = 256;

    /// <summary><c>N</c>: a non-blocking connect to the sandbox's own loopback; <c>s</c> once connected, <c>r refused</c> if
    /// nothing listens.</summary>
    internal static void Connect(Connection connection, uint id, ConnectRequest request)
    {
        if (request.Port is < 1 or > 65535)
        {
            throw RequestException.Invalid("'port' must be 1-65535");
        }
        var address = new Native.InetAddress { Port = request.Port };
        switch (request.Host ?? "127.0.0.1")
        {
            case "127.0.0.1":
                address.Family = Native.AfInet;
                address.Address[0] = 127;
                address.Address[3] = 1;
                break;
            case "::1":
                address.Family = Native.AfInet6;
                address.Address[15] = 1;
                break;
            default:
                // Only the sandbox's loopback: anything else could reach the egress relay's own listeners.
                throw RequestException.Invalid("'host' must be '127.0.0.1' or '::1'");
        }
        if (OpenInbound >= MaxInbound)
        {
            throw new RequestException(ErrorCodes.Busy, $"{MaxInbound} connections into the sandbox are open");
        }
        var fd = Native.InetSocket(address.Family, 1);
        if (fd < 0)
        {
            throw Failure(-fd, request);
        }
        var rc = Native.InetConnect(fd, &address);
        if (rc < 0 && rc != -Errno.EINPROGRESS)
        {
            _ = Native.Close(fd);
            throw Failure(-rc, request);
        }
        var channel = new StreamChannel(connection, id, fd, connecting: rc < 0, closed: null) { _target = request };
        OpenInbound++;
        try
        {
            if (rc == 0)
            {
                channel.Connected();
            }
            else
            {
                channel.UpdateWatch();
            }
        }
        catch (SysException e)
        {
            // The socket cannot be watched (epoll_ctl): the request fails (its channel is forgotten by the caller).
            channel._finished = true;
            channel.Closed();
            _ = Native.ResetClose(channel._socket.Release());
            throw new RequestException(ErrorCodes.Internal, $"cannot watch the connection: {e.Message}");
        }
    }

    private static RequestException Failure(int errno, ConnectRequest request) => errno switch
    {
        // Nothing there to talk to: nothing listens, or (::1 without IPv6 in the sandbox) no such address.
        Errno.ECONNREFUSED or Errno.ENETUNREACH or Errno.EHOSTUNREACH or Errno.EADDRNOTAVAIL or Errno.EAFNOSUPPORT or Errno.ETIMEDOUT =>
            new RequestException(ErrorCodes.Refused, $"{request.Host ?? "127.0.0.1"}:{request.Port}: {Errno.Describe(errno)}"),
        _ => new RequestException(ErrorCodes.Internal, $"connect to {request.Host ?? "127.0.0.1"}:{request.Port}: {Errno.Describe(errno)}"),
    };

    private void Connected()
    {
        _connecting = false;
        SendEvent(FrameType.Started, new StartedEvent { Pid = 0 }, ProtocolJsonContext.Default.StartedEvent, urgent: true);
        Flush();
        UpdateWatch();
    }

    // ---- n ----------------------------------------------------------------------------------------------------

    /// <summary><c>n</c>: a connection the relay accepted, announced on a channel the supervisor opens.</summary>
    internal static StreamChannel Outbound(Connection connection, uint id, int fd, OutboundConnection announcement, Action<StreamChannel> closed)
    {
        var channel = new StreamChannel(connection, id, fd, connecting: false, closed);
        channel.SendEvent(FrameType.Outbound, announcement, ProtocolJsonContext.Default.OutboundConnection, urgent: true);
        try
        {
            channel.UpdateWatch();
        }
        catch (SysException e)
        {
            Log.Warn($"relayed connection: {e.Message}");
            channel.Finish(reset: true); // the sandbox sees a reset, the server the channel's end
        }
        return channel;
    }

    /// <summary>The relay is turned off: the sandbox's socket is reset, <c>f</c> ends the channel.</summary>
    internal void Reset() => Finish(reset: true);

    // ---- both ---------------------------------------------------------------------------------------------

    private void OnSocket(uint events)
    {
        if (_finished)
        {
            return;
        }
        if (_connecting)
        {
            if ((events & (Native.EpollOut | Native.EpollErr | Native.EpollHup)) == 0)
            {
                return;
            }
            var error = Native.SocketError(_socket.Fd);
            if (error != 0)
            {
                var fd = _socket.Release();
                _ = Native.Close(fd);
                _finished = true;
                OpenInbound--;
                var failure = Failure(-error, _target!);
                EndWithError(failure.Code, failure.Message);
                return;
            }
            Connected();
            return;
        }
        if ((events & Native.EpollErr) != 0 && Native.SocketError(_socket.Fd) != 0)
        {
            Finish(reset: false);
            return;
        }
        if ((events & Native.EpollOut) != 0 || (events & Native.EpollHup) != 0)
        {
            Flush();
        }
        if (!_finished && !_readDone && (events & (Native.EpollIn | Native.EpollHup | Native.EpollRdHup)) != 0)
        {
            Read();
        }
        if (!_finished)
        {
            UpdateWatch();
        }
    }

    private void Read()
    {
        var scratch = t_scratch ??= new byte[FrameLimits.MaxDataPayload];
        for (var round = 0; round < 4 && !_finished && !_readDone; round++)
        {
            var capacity = (int)Math.Min(SendCredit, scratch.Length);
            if (capacity <= 0)
            {
                return;
            }
            nint n;
            fixed (byte* p = scratch)
            {
                n = Native.Read(_socket.Fd, p, capacity);
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n < 0)
            {
                Finish(reset: false); // ECONNRESET and the like: the sandbox's side is gone
                return;
            }
            if (n == 0)
            {
                _readDone = true;
                Connection.Send(FrameType.HalfClose, Id, default, urgent: true);
                CheckDone();
                return;
            }
            _bytesOut += n;
            SendData(FrameType.Stdout, scratch.AsSpan(0, (int)n));
            if (n < capacity)
            {
                return;
            }
        }
    }

    private void Flush()
    {
        while (!_finished && !_connecting && _toSocket.TryPeek(out var head))
        {
            var rest = head[_headOffset..];
            nint n;
            fixed (byte* p = rest.Span)
            {
                n = Native.Send(_socket.Fd, p, rest.Length);
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n < 0)
            {
                Finish(reset: false); // EPIPE, ECONNRESET: nobody reads any more
                return;
            }
            _bytesIn += n;
            ReturnCredit((int)n, now: _toSocket.Count == 1 && n == rest.Length);
            if (n < rest.Length)
            {
                _headOffset += (int)n;
                continue;
            }
            _toSocket.Dequeue();
            _headOffset = 0;
        }
        if (!_finished && !_connecting && _closeRequested && !_writeDone && _toSocket.Count == 0)
        {
            _ = Native.ShutdownWrite(_socket.Fd);
            _writeDone = true;
            CheckDone();
        }
    }

    private void UpdateWatch()
    {
        if (_finished)
        {
            return;
        }
        uint events = 0;
        if (_connecting || _toSocket.Count > 0)
        {
            events |= Native.EpollOut;
        }
        if (!_connecting && !_readDone && SendCredit > 0)
        {
            events |= Native.EpollIn | Native.EpollRdHup;
        }
        _socket.Watch(events);
    }

    private void CheckDone()
    {
        if (_readDone && _writeDone)
        {
            Finish(reset: false);
        }
    }

    private void Finish(bool reset)
    {
        if (_finished)
        {
            return;
        }
        _finished = true;
        var fd = _socket.Release();
        if (reset)
        {
            _ = Native.ResetClose(fd);
        }
        else
        {
            _ = Native.Close(fd);
        }
        _toSocket.Clear();
        Closed();
        End(FrameType.Result, new StreamResult { BytesIn = _bytesIn, BytesOut = _bytesOut }, ProtocolJsonContext.Default.StreamResult);
    }

    private void Closed()
    {
        if (_closed is null)
        {
            OpenInbound--;
        }
        else
        {
            _closed(this);
        }
    }

    internal override void OnData(ReadOnlyMemory<byte> data)
    {
        if (_finished || _closeRequested)
        {
            ReturnCredit(data.Length, now: true); // nowhere to go
            return;
        }
        _toSocket.Enqueue(data);
        Flush();
        UpdateWatch();
    }

    internal override void OnCloseFrame()
    {
        if (_finished || _closeRequested)
        {
            return;
        }
        _closeRequested = true;
        Flush();
        UpdateWatch();
    }

    internal override void OnKill(int signal) => Finish(reset: true);

    protected override void OnCreditAdded()
    {
        if (_finished)
        {
            return;
        }
        Read();
        UpdateWatch();
    }

    internal override void OnConnectionLost()
    {
        if (!_finished)
        {
            _finished = true;
            _ = Native.ResetClose(_socket.Release());
            _toSocket.Clear();
            Closed();
        }
        Abandon();
    }

    /// <summary>An address as text (<c>a.b.c.d</c>, or IPv6's canonical form).</summary>
    internal static string Format(in Native.InetAddress address)
    {
        fixed (byte* p = address.Address)
        {
            var bytes = new ReadOnlySpan<byte>(p, address.Family == Native.AfInet ? 4 : 16);
            return new IPAddress(bytes).ToString();
        }
    }

    /// <summary>Parses an IPv4 or IPv6 literal; false for anything else.</summary>
    internal static bool TryParse(string text, out Native.InetAddress address)
    {
        address = default;
        if (!IPAddress.TryParse(text, out var ip) || ip.AddressFamily is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
        {
            return false;
        }
        var bytes = ip.GetAddressBytes();
        address.Family = bytes.Length == 4 ? Native.AfInet : Native.AfInet6;
        fixed (byte* p = address.Address)
        {
            bytes.CopyTo(new Span<byte>(p, 16));
        }
        return true;
    }
}
