using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// A job's output ring (docs: "Jobs"): records of one stream each, adjacent writes to the same stream coalesced (a
/// record holds at most 64 KiB), at most 4096 records and <c>ringBytes</c> bytes; the oldest bytes are dropped
/// first. Offsets count the bytes of both streams since the job started. Memory is bounded in bytes and records
/// whatever the write pattern.
/// </summary>
internal sealed class JobRing
{
    internal const int MaxRecords = 4096;
    internal const int MaxRecordBytes = 64 * 1024;

    private readonly LinkedList<Record> _records = new();
    private readonly int _capacity;
    private long _held;

    internal JobRing(int capacity)
    {
        _capacity = capacity;
    }

    private sealed class Record(byte type, long offset, byte[] data)
    {
        internal byte Type { get; } = type;
        internal long Offset { get; set; } = offset;
        internal byte[] Data { get; set; } = data;
        internal int Start { get; set; }
        internal int Length { get; set; }
        internal long End => Offset + Length;
    }

    /// <summary>The oldest offset still kept.</summary>
    internal long FirstOffset => _records.First is { } first ? first.Value.Offset : NextOffset;

    /// <summary>The offset the next byte gets.</summary>
    internal long NextOffset { get; private set; }

    internal int RecordCount => _records.Count;

    internal long HeldBytes => _held;

    internal void Append(byte type, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            var last = _records.Last?.Value;
            if (last is null || last.Type != type || last.Start + last.Length >= MaxRecordBytes)
            {
                if (_records.Count >= MaxRecords)
                {
                    DropOldestRecord();
                }
                last = new Record(type, NextOffset, new byte[Math.Clamp(data.Length, 64, MaxRecordBytes)]);
                _records.AddLast(last);
            }
            var room = MaxRecordBytes - (last.Start + last.Length);
            var n = Math.Min(room, data.Length);
            var needed = last.Start + last.Length + n;
            if (needed > last.Data.Length)
            {
                var size = last.Data.Length;
                while (size < needed)
                {
                    size *= 2;
                }
                var grown = new byte[Math.Min(size, MaxRecordBytes)];
                last.Data.AsSpan(last.Start, last.Length).CopyTo(grown);
                last.Data = grown;
                last.Start = 0;
            }
            data[..n].CopyTo(last.Data.AsSpan(last.Start + last.Length));
            last.Length += n;
            _held += n;
            NextOffset += n;
            data = data[n..];
        }
        while (_held > _capacity && _records.First is { } first)
        {
            var excess = _held - _capacity;
            var record = first.Value;
            if (excess >= record.Length)
            {
                DropOldestRecord();
            }
            else
            {
                record.Start += (int)excess;
                record.Length -= (int)excess;
                record.Offset += excess;
                _held -= excess;
            }
        }
    }

    private void DropOldestRecord()
    {
        if (_records.First is { } first)
        {
            _held -= first.Value.Length;
            _records.RemoveFirst();
        }
    }

    /// <summary>Calls <paramref name="emit"/> with (type, bytes) from <paramref name="since"/> (raised to the oldest kept) up to <paramref name="max"/> bytes; returns the first offset sent and the next.</summary>
    internal (long From, long Next) Read(long since, long max, Func<byte, ReadOnlySpan<byte>, int> emit)
    {
        var from = Math.Max(since, FirstOffset);
        var position = from;
        var budget = max;
        foreach (var record in _records)
        {
            if (budget <= 0)
            {
                break;
            }
            if (record.End <= position)
            {
                continue;
            }
            var skip = (int)(position - record.Offset);
            var n = (int)Math.Min(record.Length - skip, budget);
            var sent = emit(record.Type, record.Data.AsSpan(record.Start + skip, n));
            position += sent;
            budget -= sent;
            if (sent < n)
            {
                break;
            }
        }
        return (from, position);
    }
}

/// <summary>A job: a command owned by the supervisor, outliving every connection, its output kept in a ring.</summary>
internal sealed class Job
{
    private readonly List<AttachChannel> _attached = [];

    internal Job(string id, string command, int ringBytes)
    {
        Id = id;
        CommandText = command;
        Ring = new JobRing(ringBytes);
        StartedAtMs = Native.RealtimeMs();
        StartNs = EventLoop.NowNs;
    }

    internal string Id { get; }

    internal string CommandText { get; }

    internal JobRing Ring { get; }

    internal long StartedAtMs { get; }

    /// <summary>Monotonic start (a terminal recording's times count from here).</summary>
    internal long StartNs { get; }

    /// <summary>The pseudo-terminal of a terminal job (its window size and recording), else null.</summary>
    internal Terminal? Terminal { get; set; }

    internal Command? Command { get; set; }

    /// <summary>The reaper's owner of the job's shell: after the exit it says the pid was reaped.</summary>
    internal IChildOwner? Owner { get; set; }

    internal int Pid { get; set; }

    internal ExitEvent? Exit { get; private set; }

    internal bool Running => Exit is null;

    internal long ExitedAtNs { get; private set; }

    internal bool StdinOpen => Command?.Stdin is { Closing: false };

    internal JobInfo Info() => new()
    {
        Id = Id,
        Command = CommandText,
        Pid = Pid,
        Status = Running ? "running" : "exited",
        StartedAtMs = StartedAtMs,
        StdinOpen = StdinOpen,
        FirstOffset = Ring.FirstOffset,
        NextOffset = Ring.NextOffset,
        Exit = Exit,
        Pty = Terminal?.Size,
    };

    internal void Append(byte type, ReadOnlySpan<byte> data)
    {
        Ring.Append(type, data);
        Terminal?.Recording.Output(data);
        foreach (var channel in _attached.ToArray())
        {
            channel.Pump();
        }
    }

    internal void Finished(ExitEvent exit)
    {
        Exit = exit;
        ExitedAtNs = EventLoop.NowNs;
        Command = null;
        Terminal?.Finished();
        foreach (var channel in _attached.ToArray())
        {
            channel.Pump();
        }
    }

    /// <summary>
    /// <c>J signal</c>: the job's tree. After the shell exited, what is left of it (its session's and group's other
    /// members: a terminal's background processes after a SIGHUP ended the shell) still gets the signal; the shell's
    /// own number is never signalled once reaped, and the kernel does not reuse a session's number while a member is left.
    /// </summary>
    internal void Signal(Supervisor supervisor, int signal)
    {
        if (Command is { } command)
        {
            command.Kill(signal);
        }
        else if (Pid > 0 && Owner is { } owner)
        {
            supervisor.SignalTree(Pid, owner, signal);
        }
    }

    internal void Attach(AttachChannel channel) => _attached.Add(channel);

    internal void Detach(AttachChannel channel) => _attached.Remove(channel);
}

/// <summary>The session's jobs (at most 64; exited ones are forgotten, oldest first, when room is needed).</summary>
internal sealed class JobTable
{
    internal const int MaxJobs = 64;

    private readonly Dictionary<string, Job> _jobs = new(StringComparer.Ordinal);
    private readonly List<Job> _order = [];

    internal Job? Find(string id) => _jobs.TryGetValue(id, out var job) ? job : null;

    internal IEnumerable<Job> All => _order;

    /// <summary>Room for one more job: false when all 64 run.</summary>
    internal bool MakeRoom()
    {
        while (_jobs.Count >= MaxJobs)
        {
            var oldest = _order.Where(j => !j.Running).OrderBy(j => j.ExitedAtNs).FirstOrDefault();
            if (oldest is null)
            {
                return false;
            }
            Remove(oldest);
        }
        return true;
    }

    internal void Add(Job job)
    {
        _jobs[job.Id] = job;
        _order.Add(job);
    }

    internal void Remove(Job job)
    {
        if (_jobs.TryGetValue(job.Id, out var current) && ReferenceEquals(current, job))
        {
            _jobs.Remove(job.Id);
        }
        _order.Remove(job);
    }
}

/// <summary>
/// <c>J attach</c>: the job's output from <c>since</c> as it comes, within credit. When credit ran out long enough
/// that the ring dropped bytes not yet sent, a <c>d</c> tells how many; <c>x</c> when the job exits; <c>K</c> or
/// <c>C</c> detaches (<c>f</c>). <c>I</c> frames are the job's input (a terminal's keystrokes).
/// </summary>
internal sealed class AttachChannel : Channel
{
    private readonly Job _job;
    private long _cursor;

    internal AttachChannel(Connection connection, uint id, Job job, long since)
        : base(connection, id)
    {
        _job = job;
        _cursor = since;
        job.Attach(this);
        Pump();
    }

    internal void Pump()
    {
        if (Ended)
        {
            return;
        }
        var first = _job.Ring.FirstOffset;
        if (_cursor < first)
        {
            SendEvent(FrameType.Dropped, new DroppedEvent { Offset = first, Bytes = first - _cursor }, ProtocolJsonContext.Default.DroppedEvent);
            _cursor = first;
        }
        if (SendCredit > 0 && _cursor < _job.Ring.NextOffset)
        {
            var (_, next) = _job.Ring.Read(_cursor, SendCredit, (type, data) => SendData(type, data));
            _cursor = next;
        }
        if (!_job.Running && _cursor >= _job.Ring.NextOffset)
        {
            _job.Detach(this);
            End(FrameType.Exited, _job.Exit!, ProtocolJsonContext.Default.ExitEvent);
        }
    }

    protected override void OnCreditAdded() => Pump();

    internal override bool AcceptsData => true;

    /// <summary>Input for the job: to its terminal or its stdin pipe, credit coming back as it is written; with
    /// neither open the bytes go nowhere and their credit comes back at once.</summary>
    internal override void OnData(ReadOnlyMemory<byte> data)
    {
        if (_job.Command?.Stdin is { Closing: false } stdin)
        {
            stdin.Enqueue(data, (bytes, drained) => ReturnCredit(bytes, drained));
        }
        else
        {
            ReturnCredit(data.Length, now: true);
        }
    }

    internal override void OnKill(int signal) => DetachWithResult();

    internal override void OnCloseFrame() => DetachWithResult();

    private void DetachWithResult()
    {
        _job.Detach(this);
        End(FrameType.Result, new JobResult { Job = _job.Info(), Next = _cursor }, ProtocolJsonContext.Default.JobResult);
    }

    internal override void OnConnectionLost()
    {
        _job.Detach(this);
        Abandon();
    }
}

/// <summary>A channel answered at once (file results, job ops other than attach): only its final frame is sent.</summary>
internal sealed class ImmediateChannel(Connection connection, uint id) : Channel(connection, id)
{
    internal void Finish<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) => End(FrameType.Result, value, info);

    internal void Fail(string code, string message) => EndWithError(code, message);

    internal int Data(byte type, ReadOnlySpan<byte> data) => SendData(type, data);

    internal override void OnConnectionLost() => Abandon();
}
