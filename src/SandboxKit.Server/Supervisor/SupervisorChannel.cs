using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Server.Supervisor;

/// <summary>
/// One request on a supervisor connection and what comes back on it. The connection's read loop delivers frames
/// here without ever waiting for the consumer: flow control (the supervisor may send at most the window of data bytes
/// before this side grants more) bounds what a slow consumer can make the server hold, so a stalled reader stalls only
/// its own command. Consecutive data chunks of one stream are merged while queued, so a flood of tiny frames costs
/// bytes, not a queue entry each.
/// </summary>
internal sealed class SupervisorChannel : IAsyncDisposable
{
    /// <summary>Largest merged data chunk handed to the consumer.</summary>
    private const int MaxMergedChunk = FrameLimits.MaxDataPayload;

    /// <summary>Non-data messages a channel may have queued; more is a supervisor bug or an attack.</summary>
    private const int MaxQueuedControl = 256;

    private readonly SupervisorConnection _connection;
    private readonly object _gate = new();
    private readonly Queue<Queued> _queue = new();
    private readonly int _window;
    private TaskCompletionSource? _readable;
    private Queued? _last;
    private int _queuedControl;
    private long _unacknowledged;
    private int _creditToGrant;
    private long _sendCredit;
    private TaskCompletionSource? _sendCreditChanged;
    private bool _final;
    private bool _finalConsumed;
    private bool _abandoned;
    private bool _started;
    private Exception? _fault;

    internal SupervisorChannel(SupervisorConnection connection, uint id, byte requestType, int window)
    {
        _connection = connection;
        Id = id;
        RequestType = requestType;
        _window = window;
        _sendCredit = window;
    }

    /// <summary>The channel id.</summary>
    public uint Id { get; }

    /// <summary>The request that opened the channel.</summary>
    public byte RequestType { get; }

    /// <summary>True once the final frame has arrived (it may not have been read yet).</summary>
    public bool Completed
    {
        get
        {
            lock (_gate)
            {
                return _final;
            }
        }
    }

    /// <summary>
    /// The next message, or null after the final one was returned. A <see cref="SupervisorUnavailableException"/> when the
    /// connection closed first. Data is acknowledged (credit returned) when the consumer asks for the next message, so a
    /// consumer that stops reading stops the supervisor from sending more.
    /// </summary>
    public async ValueTask<SupervisorMessage?> ReadAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            int grant;
            SupervisorMessage? message = null;
            var end = false;
            lock (_gate)
            {
                // What the consumer took last time is processed now: return its credit.
                grant = TakeGrantLocked();
                if (_queue.TryDequeue(out var item))
                {
                    if (ReferenceEquals(item, _last))
                    {
                        _last = null;
                    }
                    if (item.IsData)
                    {
                        _creditToGrant += item.Length;
                    }
                    else
                    {
                        _queuedControl--;
                    }
                    if (item.IsFinal)
                    {
                        _finalConsumed = true;
                    }
                    message = item.ToMessage();
                    wait = Task.CompletedTask;
                }
                else if (_fault is not null)
                {
                    wait = Task.FromException(_fault);
                }
                else if (_finalConsumed || _final)
                {
                    end = true;
                    wait = Task.CompletedTask;
                }
                else
                {
                    // Continuations run on the read loop, inline: a thread-pool hop per message was most of a
                    // command's server CPU. A consumer holds the loop only until its next real await (its writes to
                    // a slow client are asynchronous), never for the time a client takes to read.
                    _readable ??= new TaskCompletionSource();
                    wait = _readable.Task;
                }
            }
            if (grant > 0)
            {
                _connection.GrantCredit(this, grant);
            }
            if (message is not null)
            {
                return message;
            }
            if (end)
            {
                return null;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Sends a frame on this channel (<c>K</c>, <c>C</c>, or a data frame counted by <see cref="SendDataAsync"/>).</summary>
    public Task SendAsync(byte type, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken) =>
        _connection.SendAsync(type, Id, payload, cancellationToken);

    /// <summary>Sends <c>K</c> with a signal.</summary>
    public Task SignalAsync(int signal, CancellationToken cancellationToken) =>
        SendAsync(FrameType.Kill, JsonSerializer.SerializeToUtf8Bytes(new KillRequest { Signal = signal }, ProtocolJsonContext.Default.KillRequest), cancellationToken);

    /// <summary>Sends data (stdin or file bytes) in frames of at most 64 KiB, waiting for the supervisor's credit.</summary>
    public async Task SendDataAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        while (!data.IsEmpty)
        {
            int chunk;
            Task? wait = null;
            lock (_gate)
            {
                if (_fault is not null)
                {
                    throw _fault;
                }
                if (_final)
                {
                    throw new SupervisorUnavailableException("The request has already ended.");
                }
                chunk = (int)Math.Min(Math.Min(_sendCredit, FrameLimits.MaxDataPayload), data.Length);
                if (chunk > 0)
                {
                    _sendCredit -= chunk;
                }
                else
                {
                    _sendCreditChanged ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    wait = _sendCreditChanged.Task;
                }
            }
            if (wait is not null)
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
                continue;
            }
            await _connection.SendAsync(FrameType.Data, Id, data[..chunk], cancellationToken).ConfigureAwait(false);
            data = data[chunk..];
        }
    }

    /// <summary>
    /// The consumer leaves before the end: whatever still arrives is dropped (and its credit returned at once so the
    /// supervisor can finish), the id stays reserved until the final frame. Callers that want the work stopped send
    /// <c>K</c> first.
    /// </summary>
    public void Abandon()
    {
        int grant;
        lock (_gate)
        {
            if (_abandoned)
            {
                return;
            }
            _abandoned = true;
            foreach (var item in _queue)
            {
                if (item.IsData)
                {
                    _creditToGrant += item.Length;
                }
            }
            _queue.Clear();
            _last = null;
            _queuedControl = 0;
            grant = TakeGrantLocked(force: true);
        }
        if (grant > 0)
        {
            _connection.GrantCredit(this, grant);
        }
        if (Completed)
        {
            _connection.Forget(this);
        }
    }

    /// <summary>For a channel the server ends itself (a DNS answer): nothing more is expected on it.</summary>
    internal void MarkAnsweredByServer()
    {
        lock (_gate)
        {
            _final = true;
            _finalConsumed = true;
        }
    }

    /// <summary>Abandons the channel unless its final frame was read.</summary>
    public ValueTask DisposeAsync()
    {
        bool done;
        lock (_gate)
        {
            done = _finalConsumed || _fault is not null;
        }
        if (!done)
        {
            Abandon();
        }
        return ValueTask.CompletedTask;
    }

    // ---- called by the connection's read loop ------------------------------------------------

    /// <summary>
    /// Takes one frame. Returns a violation message when the frame breaks the protocol (the connection then closes),
    /// null when it was accepted. Never blocks.
    /// </summary>
    internal string? Deliver(in Frame frame, object? body)
    {
        int grant = 0;
        TaskCompletionSource? wake = null;
        lock (_gate)
        {
            if (_final)
            {
                return $"frame '{FrameType.Name(frame.Type)}' after the final frame of channel {Id}";
            }
            if (!Allowed(frame.Type))
            {
                return $"frame '{FrameType.Name(frame.Type)}' is not an answer to '{FrameType.Name(RequestType)}' (channel {Id})";
            }
            if (frame.Type is FrameType.Stdout or FrameType.Stderr or FrameType.EventChunk)
            {
                var length = frame.Payload.Length;
                if (length == 0 || length > FrameLimits.MaxDataPayload)
                {
                    return $"data frame of {length} bytes on channel {Id} (1..{FrameLimits.MaxDataPayload} allowed)";
                }
                _unacknowledged += length;
                if (_unacknowledged > _window)
                {
                    return $"channel {Id} received {_unacknowledged} data bytes with a window of {_window}";
                }
                if (RequestType == FrameType.Run && !_started)
                {
                    return $"output before 'started' on channel {Id}";
                }
                if (_abandoned)
                {
                    _creditToGrant += length;
                    grant = TakeGrantLocked(force: true);
                }
                else
                {
                    Enqueue(frame.Type, frame.Payload);
                    wake = TakeWaiterLocked();
                }
            }
            else if (frame.Type == FrameType.Credit)
            {
                var credit = (CreditGrant)body!;
                _sendCredit = Math.Min(_sendCredit + credit.Bytes, int.MaxValue);
                var changed = _sendCreditChanged;
                _sendCreditChanged = null;
                changed?.TrySetResult();
                return null;
            }
            else
            {
                if (frame.Type == FrameType.Started)
                {
                    if (_started)
                    {
                        return $"second 'started' on channel {Id}";
                    }
                    _started = true;
                }
                if (FrameType.IsFinal(frame.Type))
                {
                    _final = true;
                    var changed = _sendCreditChanged;
                    _sendCreditChanged = null;
                    changed?.TrySetResult();
                }
                if (!_abandoned)
                {
                    if (++_queuedControl > MaxQueuedControl)
                    {
                        return $"more than {MaxQueuedControl} unread control frames on channel {Id}";
                    }
                    _last = new Queued(frame.Type, null, 0, body);
                    _queue.Enqueue(_last);
                    wake = TakeWaiterLocked();
                }
            }
        }
        wake?.TrySetResult();
        if (grant > 0)
        {
            _connection.GrantCredit(this, grant);
        }
        return null;
    }

    /// <summary>The connection closed: readers and senders get <paramref name="error"/>.</summary>
    internal void Fail(Exception error)
    {
        TaskCompletionSource? wake;
        TaskCompletionSource? credit;
        lock (_gate)
        {
            if (_finalConsumed || (_final && _abandoned))
            {
                return;
            }
            _fault ??= error;
            wake = TakeWaiterLocked();
            credit = _sendCreditChanged;
            _sendCreditChanged = null;
        }
        wake?.TrySetResult();
        credit?.TrySetResult();
    }

    /// <summary>Queued messages (merged data chunks count once); for tests and diagnostics.</summary>
    internal int QueuedItems
    {
        get
        {
            lock (_gate)
            {
                return _queue.Count;
            }
        }
    }

    /// <summary>Data bytes queued and not yet read.</summary>
    internal long QueuedBytes
    {
        get
        {
            lock (_gate)
            {
                return _queue.Where(q => q.IsData).Sum(q => (long)q.Length);
            }
        }
    }

    internal bool IsAbandoned
    {
        get
        {
            lock (_gate)
            {
                return _abandoned;
            }
        }
    }

    private bool Allowed(byte type) => RequestType switch
    {
        FrameType.Run => type is FrameType.Started or FrameType.Stdout or FrameType.Stderr or FrameType.Exited or FrameType.Error
            or FrameType.Credit or FrameType.Result,
        FrameType.WriteFile => type is FrameType.Result or FrameType.Error or FrameType.Credit,
        FrameType.ReadFile => type is FrameType.Stdout or FrameType.Result or FrameType.Error,
        // Credit: input to an attached terminal (or piped job) flows within the supervisor's window.
        FrameType.Job => type is FrameType.Stdout or FrameType.Stderr or FrameType.Dropped or FrameType.Exited or FrameType.Result or FrameType.Error or FrameType.Credit,
        // Interpreter output, the driver's events in chunks (v … w), the cell's outcome.
        FrameType.Context => type is FrameType.Stdout or FrameType.Stderr or FrameType.EventChunk or FrameType.EventEnd or FrameType.Result or FrameType.Error
            or FrameType.Credit,
        // A byte stream into the sandbox: connected, bytes out, the sandbox's half-close, the end.
        FrameType.Connect => type is FrameType.Started or FrameType.Stdout or FrameType.HalfClose or FrameType.Result or FrameType.Error or FrameType.Credit,
        // A DNS query of the egress relay: the server's answer ends it; the supervisor sends nothing more.
        FrameType.DnsQuery => false,
        // A connection out of the sandbox (egress relay), opened by the supervisor.
        FrameType.Outbound => type is FrameType.Stdout or FrameType.HalfClose or FrameType.Result or FrameType.Error or FrameType.Credit,
        _ => type is FrameType.Result or FrameType.Error,
    };

    private void Enqueue(byte type, ReadOnlyMemory<byte> payload)
    {
        // Merge into the newest queued chunk of the same stream when it has room: memory then follows bytes, not frames.
        if (_last is { } last && last.Type == type && last.Buffer is not null && last.Length + payload.Length <= MaxMergedChunk)
        {
            last.Append(payload.Span);
            return;
        }
        _last = Queued.Data(type, payload);
        _queue.Enqueue(_last);
    }

    private TaskCompletionSource? TakeWaiterLocked()
    {
        var waiter = _readable;
        _readable = null;
        return waiter;
    }

    /// <summary>Credit is returned in batches (a quarter of the window), or all at once when forced.</summary>
    private int TakeGrantLocked(bool force = false)
    {
        if (_creditToGrant == 0 || (!force && _creditToGrant < Math.Min(_window / 4, 64 * 1024)))
        {
            return 0;
        }
        var grant = _creditToGrant;
        _creditToGrant = 0;
        _unacknowledged -= grant;
        return grant;
    }

    /// <summary>A queued message; data chunks own a buffer that later chunks of the same stream can be appended to.</summary>
    private sealed class Queued(byte type, byte[]? buffer, int length, object? body)
    {
        public byte Type { get; } = type;
        public byte[]? Buffer { get; private set; } = buffer;
        public int Length { get; private set; } = length;
        public object? Body { get; } = body;
        public bool IsData => Buffer is not null;
        public bool IsFinal => FrameType.IsFinal(Type);

        public static Queued Data(byte type, ReadOnlyMemory<byte> payload)
        {
            // The decoder hands each frame its own array: keep it as is unless a later chunk is merged in.
            var array = System.Runtime.InteropServices.MemoryMarshal.TryGetArray(payload, out var segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length
                ? segment.Array
                : payload.ToArray();
            return new Queued(type, array, payload.Length, null);
        }

        public void Append(ReadOnlySpan<byte> more)
        {
            if (Buffer!.Length < Length + more.Length)
            {
                var grown = new byte[Math.Min(MaxMergedChunk, Math.Max(Length + more.Length, Buffer.Length * 2))];
                Buffer.AsSpan(0, Length).CopyTo(grown);
                Buffer = grown;
            }
            more.CopyTo(Buffer.AsSpan(Length));
            Length += more.Length;
        }

        public SupervisorMessage ToMessage() => new(Type, Buffer is null ? ReadOnlyMemory<byte>.Empty : Buffer.AsMemory(0, Length), Body);
    }
}
