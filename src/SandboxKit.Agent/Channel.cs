using System.Text.Json.Serialization.Metadata;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// One open request channel of a connection (loop thread only). Tracks credit both ways: <see cref="SendCredit"/>
/// bytes of <c>o</c>/<c>e</c> may still be sent; the server may still send <see cref="ReceiveCredit"/> bytes of
/// <c>I</c>. A channel ends with exactly one final frame (<see cref="End"/>), after which it is forgotten.
/// </summary>
internal abstract class Channel
{
    private const long MaxCredit = 1L << 40;

    private long _creditToReturn;

    protected Channel(Connection connection, uint id)
    {
        Connection = connection;
        Id = id;
        SendCredit = connection.Window;
        ReceiveCredit = connection.Window;
        connection.Channels[id] = this;
    }

    internal Connection Connection { get; }

    internal uint Id { get; }

    internal long SendCredit { get; private set; }

    internal long ReceiveCredit { get; private set; }

    internal bool Ended { get; private set; }

    /// <summary>Whether <c>I</c> frames belong to this channel (else they are a violation).</summary>
    internal virtual bool AcceptsData => false;

    /// <summary>An <c>I</c> frame within credit.</summary>
    internal virtual void OnData(ReadOnlyMemory<byte> data)
    {
    }

    /// <summary>A <c>C</c> frame.</summary>
    internal virtual void OnCloseFrame()
    {
    }

    /// <summary>A <c>K</c> frame with its signal (SIGKILL when absent or invalid).</summary>
    internal virtual void OnKill(int signal)
    {
    }

    /// <summary>A <c>Q</c> frame: only a DNS query's channel takes one.</summary>
    internal virtual void OnDnsAnswer(DnsAnswerMessage answer) =>
        throw new ProtocolViolationException($"Q for channel {Id}, which is not a DNS query");

    /// <summary>Credit was added; senders waiting for it go on.</summary>
    protected virtual void OnCreditAdded()
    {
    }

    /// <summary>The connection ended before the channel did.</summary>
    internal abstract void OnConnectionLost();

    internal void AddCredit(int bytes)
    {
        SendCredit = Math.Min(MaxCredit, SendCredit + bytes);
        OnCreditAdded();
    }

    /// <summary>Accounts an incoming data frame; false when it exceeds the credit (a violation).</summary>
    internal bool TakeReceiveCredit(int bytes)
    {
        if (bytes > ReceiveCredit)
        {
            return false;
        }
        ReceiveCredit -= bytes;
        return true;
    }

    /// <summary>Data bytes were consumed (written to the pipe or file): the server may send as many again.</summary>
    protected void ReturnCredit(int bytes, bool now)
    {
        _creditToReturn += bytes;
        if (_creditToReturn > 0 && !Ended && !Connection.Closed && (now || _creditToReturn >= Math.Min(64 * 1024, Connection.Window / 4)))
        {
            var grant = (int)Math.Min(_creditToReturn, 16 * 1024 * 1024);
            _creditToReturn -= grant;
            ReceiveCredit += grant;
            Connection.SendJson(FrameType.Credit, Id, new CreditGrant { Bytes = grant }, ProtocolJsonContext.Default.CreditGrant, urgent: false);
        }
    }

    /// <summary>Sends as much of <paramref name="data"/> as the credit allows, in frames of at most 64 KiB; returns the count sent.</summary>
    protected int SendData(byte type, ReadOnlySpan<byte> data)
    {
        if (Ended || Connection.Closed)
        {
            return 0;
        }
        var sent = 0;
        while (sent < data.Length && SendCredit > 0)
        {
            var n = (int)Math.Min(Math.Min(data.Length - sent, FrameLimits.MaxDataPayload), SendCredit);
            Connection.Send(type, Id, data.Slice(sent, n), urgent: false);
            SendCredit -= n;
            sent += n;
        }
        return sent;
    }

    /// <summary>Sends a non-final JSON frame.</summary>
    protected void SendEvent<T>(byte type, T value, JsonTypeInfo<T> info, bool urgent = false)
    {
        if (!Ended)
        {
            Connection.SendJson(type, Id, value, info, urgent);
        }
    }

    /// <summary>Sends the final frame and forgets the channel.</summary>
    protected void End<T>(byte type, T value, JsonTypeInfo<T> info)
    {
        if (Ended)
        {
            return;
        }
        Ended = true;
        Connection.Channels.Remove(Id);
        Connection.SendJson(type, Id, value, info, urgent: true);
    }

    protected void EndWithError(string code, string message) =>
        End(FrameType.Error, new ErrorReply { Code = code, Message = message }, ProtocolJsonContext.Default.ErrorReply);

    /// <summary>Forgets the channel without a final frame (its connection is gone).</summary>
    protected void Abandon()
    {
        Ended = true;
        Connection.Channels.Remove(Id);
    }
}

/// <summary>An error that ends a request with <c>r</c>.</summary>
internal sealed class RequestException(string code, string message) : Exception(message)
{
    internal string Code { get; } = code;

    internal static RequestException Invalid(string message) => new(ErrorCodes.Invalid, message);

    internal static RequestException FromErrno(int errno, string what) => new(Errno.ToCode(errno), $"{what}: {Errno.Describe(errno)}");
}
