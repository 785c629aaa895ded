using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// One stream of a keyed command's kept output: the first half of the budget (head) and a ring of the last half
/// (tail). Buffers grow as output comes, so a small command keeps little.
/// </summary>
internal sealed class KeptStream
{
    private readonly int _headCapacity;
    private readonly int _tailCapacity;
    private byte[] _head = [];
    private int _headLength;
    private byte[] _tail = [];
    private int _tailStart;
    private int _tailLength;

    internal KeptStream(int budget)
    {
        _headCapacity = (budget + 1) / 2;
        _tailCapacity = budget - _headCapacity;
    }

    internal long Total { get; private set; }

    internal bool Truncated => Total > _headLength + _tailLength;

    /// <summary>Bytes held (memory accounted against the 64 MiB of kept output).</summary>
    internal long Held => _head.Length + _tail.Length;

    internal void Append(ReadOnlySpan<byte> data)
    {
        Total += data.Length;
        if (_headLength < _headCapacity)
        {
            var n = Math.Min(data.Length, _headCapacity - _headLength);
            Grow(ref _head, _headLength + n, _headCapacity);
            data[..n].CopyTo(_head.AsSpan(_headLength));
            _headLength += n;
            data = data[n..];
        }
        if (data.IsEmpty || _tailCapacity == 0)
        {
            return;
        }
        if (data.Length >= _tailCapacity)
        {
            Grow(ref _tail, _tailCapacity, _tailCapacity);
            data[^_tailCapacity..].CopyTo(_tail);
            _tailStart = 0;
            _tailLength = _tailCapacity;
            return;
        }
        if (_tailLength + data.Length <= _tailCapacity && _tailStart == 0)
        {
            Grow(ref _tail, _tailLength + data.Length, _tailCapacity);
            data.CopyTo(_tail.AsSpan(_tailLength));
            _tailLength += data.Length;
            return;
        }
        // Ring mode: full capacity, overwrite the oldest bytes.
        if (_tail.Length < _tailCapacity)
        {
            var linear = new byte[_tailCapacity];
            CopyTail(linear);
            _tail = linear;
            _tailStart = 0;
        }
        while (!data.IsEmpty)
        {
            int n;
            if (_tailLength < _tailCapacity)
            {
                var end = (_tailStart + _tailLength) % _tailCapacity;
                n = Math.Min(data.Length, Math.Min(_tailCapacity - _tailLength, _tailCapacity - end));
                data[..n].CopyTo(_tail.AsSpan(end));
                _tailLength += n;
            }
            else
            {
                n = Math.Min(data.Length, _tailCapacity - _tailStart);
                data[..n].CopyTo(_tail.AsSpan(_tailStart));
                _tailStart = (_tailStart + n) % _tailCapacity;
            }
            data = data[n..];
        }
    }

    private void CopyTail(Span<byte> destination)
    {
        if (_tailLength == 0)
        {
            return;
        }
        var first = Math.Min(_tailLength, _tail.Length - _tailStart);
        _tail.AsSpan(_tailStart, first).CopyTo(destination);
        _tail.AsSpan(0, _tailLength - first).CopyTo(destination[first..]);
    }

    private static void Grow(ref byte[] buffer, int needed, int capacity)
    {
        if (buffer.Length >= needed)
        {
            return;
        }
        var size = Math.Max(256, buffer.Length);
        while (size < needed)
        {
            size *= 2;
        }
        Array.Resize(ref buffer, Math.Min(size, capacity));
    }

    /// <summary>The kept bytes in order (head, then tail).</summary>
    internal byte[] ToArray()
    {
        var result = new byte[_headLength + _tailLength];
        _head.AsSpan(0, _headLength).CopyTo(result);
        CopyTail(result.AsSpan(_headLength));
        return result;
    }
}

/// <summary>A keyed command: its fingerprint, the command while it runs, its kept output and result, and channels waiting for it.</summary>
internal sealed class KeyedEntry
{
    internal KeyedEntry(string key, string? fingerprint, int keepBytes)
    {
        Key = key;
        Fingerprint = fingerprint;
        Stdout = new KeptStream(keepBytes);
        Stderr = new KeptStream(keepBytes);
        Reserved = 2L * keepBytes;
    }

    internal string Key { get; }

    internal string? Fingerprint { get; }

    internal Command? Command { get; set; }

    /// <summary>The shell's pid (what joiners are told).</summary>
    internal int Pid { get; set; }

    internal KeptStream Stdout { get; }

    internal KeptStream Stderr { get; }

    /// <summary>Bytes of the 64 MiB budget this entry may use (its keep budget while running, what it holds after).</summary>
    internal long Reserved { get; set; }

    internal ExitEvent? Exit { get; private set; }

    internal long FinishedAtNs { get; private set; }

    internal List<JoinChannel> Joiners { get; } = [];

    internal KeyedResults? Owner { get; set; }

    internal void Keep(byte type, ReadOnlySpan<byte> data) => (type == FrameType.Stdout ? Stdout : Stderr).Append(data);

    internal void Finished(Command command, ExitEvent exit)
    {
        Exit = exit;
        FinishedAtNs = EventLoop.NowNs;
        Command = null;
        Reserved = Stdout.Held + Stderr.Held;
        foreach (var joiner in Joiners.ToArray())
        {
            joiner.Replay(this);
        }
        Joiners.Clear();
        Owner?.EntryFinished(this);
        _ = command;
    }
}

/// <summary>
/// Results of keyed commands (docs: "Idempotency across server restarts"): at most 256 keys and 64 MiB of kept
/// output; finished entries expire <c>keyTtlMs</c> after they end, and the oldest finished ones are forgotten first
/// when room is needed. Loop thread only.
/// </summary>
internal sealed class KeyedResults
{
    internal const int MaxKeys = 256;
    internal const long MaxKeptBytes = 64L * 1024 * 1024;

    private readonly Dictionary<string, KeyedEntry> _entries = new(StringComparer.Ordinal);
    private readonly LinkedList<KeyedEntry> _finishedOrder = new();

    internal long TtlMs { get; set; } = 600_000;

    internal int Count => _entries.Count;

    internal KeyedEntry? Find(string key)
    {
        ExpireOld();
        return _entries.TryGetValue(key, out var entry) ? entry : null;
    }

    /// <summary>A new entry, making room by forgetting the oldest finished ones; null when every entry is running.</summary>
    internal KeyedEntry? Create(string key, string? fingerprint, int keepBytes)
    {
        ExpireOld();
        while (_entries.Count >= MaxKeys)
        {
            if (!ForgetOldestFinished())
            {
                return null;
            }
        }
        long reserved = 0;
        foreach (var e in _entries.Values)
        {
            reserved += e.Reserved;
        }
        while (reserved + 2L * keepBytes > MaxKeptBytes && _finishedOrder.First is { } oldest)
        {
            reserved -= oldest.Value.Reserved;
            Forget(oldest.Value);
        }
        // Still no room (running entries hold the budget): this one keeps what is left.
        var available = Math.Max(0, MaxKeptBytes - reserved);
        var budget = (int)Math.Min(keepBytes, available / 2);
        var entry = new KeyedEntry(key, fingerprint, budget) { Owner = this };
        _entries[key] = entry;
        return entry;
    }

    internal void EntryFinished(KeyedEntry entry) => _finishedOrder.AddLast(entry);

    /// <summary>Forgets an entry whose command never started.</summary>
    internal void Remove(KeyedEntry entry)
    {
        if (_entries.TryGetValue(entry.Key, out var current) && ReferenceEquals(current, entry))
        {
            _entries.Remove(entry.Key);
        }
        _finishedOrder.Remove(entry);
    }

    internal void ExpireOld()
    {
        var cutoff = EventLoop.NowNs - TtlMs * 1_000_000;
        while (_finishedOrder.First is { } oldest && oldest.Value.FinishedAtNs < cutoff)
        {
            Forget(oldest.Value);
        }
    }

    private bool ForgetOldestFinished()
    {
        if (_finishedOrder.First is not { } oldest)
        {
            return false;
        }
        Forget(oldest.Value);
        return true;
    }

    private void Forget(KeyedEntry entry)
    {
        _finishedOrder.Remove(entry);
        if (_entries.TryGetValue(entry.Key, out var current) && ReferenceEquals(current, entry))
        {
            _entries.Remove(entry.Key);
        }
    }
}

/// <summary>
/// A channel that joined a keyed command (<c>s</c> with <c>joined: true</c>): when the command has ended, its kept
/// output is replayed as <c>o</c>/<c>e</c> within credit, then <c>x</c> with <c>replayed: true</c>.
/// </summary>
internal sealed class JoinChannel : Channel
{
    private KeyedEntry? _entry;
    private byte[]? _out;
    private byte[]? _err;
    private int _outSent;
    private int _errSent;
    private ExitEvent? _exit;

    internal JoinChannel(Connection connection, uint id, KeyedEntry entry, int pid)
        : base(connection, id)
    {
        _entry = entry;
        SendEvent(FrameType.Started, new StartedEvent { Pid = pid, Joined = true }, ProtocolJsonContext.Default.StartedEvent);
        if (entry.Exit is not null)
        {
            Replay(entry);
        }
        else
        {
            entry.Joiners.Add(this);
        }
    }

    /// <summary>The command has ended: send what was kept.</summary>
    internal void Replay(KeyedEntry entry)
    {
        _out = entry.Stdout.ToArray();
        _err = entry.Stderr.ToArray();
        _exit = entry.Exit! with
        {
            Replayed = true,
            Truncated = entry.Stdout.Truncated || entry.Stderr.Truncated,
        };
        Pump();
    }

    private void Pump()
    {
        if (Ended || _exit is null)
        {
            return;
        }
        if (_out is not null && _outSent < _out.Length)
        {
            _outSent += SendData(FrameType.Stdout, _out.AsSpan(_outSent));
            if (_outSent < _out.Length)
            {
                return;
            }
        }
        if (_err is not null && _errSent < _err.Length)
        {
            _errSent += SendData(FrameType.Stderr, _err.AsSpan(_errSent));
            if (_errSent < _err.Length)
            {
                return;
            }
        }
        End(FrameType.Exited, _exit, ProtocolJsonContext.Default.ExitEvent);
        _out = _err = null;
        _entry = null;
    }

    protected override void OnCreditAdded() => Pump();

    /// <summary>K signals the keyed command (while it runs): a restarted server may cancel what it started.</summary>
    internal override void OnKill(int signal) => _entry?.Command?.Kill(signal);

    internal override void OnConnectionLost()
    {
        Abandon();
        _entry?.Joiners.Remove(this);
        _entry = null;
        _out = _err = null;
    }
}
