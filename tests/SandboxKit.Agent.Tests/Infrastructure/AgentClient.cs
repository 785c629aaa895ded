using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent.Tests.Infrastructure;

/// <summary>A byte stream to the supervisor.</summary>
public interface ITransport : IDisposable
{
    Stream Input { get; }
    Stream Output { get; }

    /// <summary>Ends our sending side (the supervisor sees EOF).</summary>
    void CloseOutput();
}

public sealed class UnixTransport : ITransport
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;

    public UnixTransport(string path)
    {
        _socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _socket.Connect(new UnixDomainSocketEndPoint(path));
        _stream = new NetworkStream(_socket, ownsSocket: false);
    }

    public Stream Input => _stream;
    public Stream Output => _stream;

    public void CloseOutput()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
        }
    }

    public void Dispose()
    {
        _stream.Dispose();
        _socket.Dispose();
    }
}

/// <summary><c>docker exec -i -u 0 C /.sandboxkit/sandboxkit-agent relay</c>: its stdin/stdout carry the frames.</summary>
public sealed class RelayTransport : ITransport
{
    private readonly Process _process;

    public RelayTransport(string container)
    {
        var info = new ProcessStartInfo("docker")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "exec", "-i", "-u", "0", container, "/.sandboxkit/sandboxkit-agent", "relay" })
        {
            info.ArgumentList.Add(a);
        }
        _process = Process.Start(info)!;
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginErrorReadLine();
    }

    public Stream Input => _process.StandardOutput.BaseStream;
    public Stream Output => _process.StandardInput.BaseStream;

    public void CloseOutput()
    {
        try
        {
            _process.StandardInput.Close();
        }
        catch (IOException)
        {
        }
    }

    public void Dispose()
    {
        CloseOutput();
        if (!_process.WaitForExit(5000))
        {
            _process.Kill(entireProcessTree: true);
        }
        _process.Dispose();
    }
}

/// <summary>What a channel produced.</summary>
public sealed class Result
{
    public uint Channel { get; init; }
    public List<Frame> Frames { get; } = [];
    public MemoryStream StdoutBuffer { get; } = new();
    public MemoryStream StderrBuffer { get; } = new();
    public StartedEvent? Started { get; set; }
    public ExitEvent? Exit { get; set; }
    public ErrorReply? Error { get; set; }
    public FileResult? File { get; set; }
    public JobResult? Job { get; set; }
    public List<DroppedEvent> Dropped { get; } = [];
    public TimeSpan Elapsed { get; set; }

    /// <summary>Interpreter events (<c>v</c> chunks up to each <c>w</c>), parsed, in order.</summary>
    public List<JsonElement> Events { get; } = [];

    /// <summary>Frame types in arrival order with <c>v</c>…<c>w</c> runs shown as one <c>E</c> (for ordering checks).</summary>
    public System.Text.StringBuilder Order { get; } = new();

    /// <summary>The final frame's payload.</summary>
    public byte[]? Final { get; set; }

    /// <summary>The final <c>f</c> of a context operation.</summary>
    public ContextResult? Context { get; set; }

    public CellOutcome? Cell => Context?.Cell;

    /// <summary>The final <c>f</c> as another shared type (stream results, configure results).</summary>
    public T As<T>() where T : class =>
        JsonSerializer.Deserialize(Final ?? throw new AssertionException($"no final frame: {this}"), typeof(T), ProtocolJsonContext.Default) as T
        ?? throw new AssertionException($"final frame is not a {typeof(T).Name}");

    /// <summary>Results of the cell (<c>result</c> events) as (mime bundle, main result?).</summary>
    public IEnumerable<JsonElement> Results => Events.Where(e => e.GetProperty("type").GetString() == "result");

    public byte[] Stdout => StdoutBuffer.ToArray();
    public byte[] Stderr => StderrBuffer.ToArray();
    public string Out => Encoding.UTF8.GetString(Stdout);
    public string Err => Encoding.UTF8.GetString(Stderr);
    public int? Pid => Started?.Pid;
    public int Code => Exit?.ExitCode ?? throw new AssertionException($"no exit: {Error?.Code} {Error?.Message}");
    public string Types => new(Frames.Select(f => (char)f.Type).ToArray());

    public override string ToString() =>
        $"channel {Channel} [{Types}] exit={Exit?.ExitCode} signal={Exit?.Signal} error={Error?.Code}:{Error?.Message} out={Out.Length}B err={Err}" +
        (Final is { } final ? $" final={Encoding.UTF8.GetString(final)}" : "");
}

/// <summary>
/// A small synchronous client of the supervisor protocol, on the shared <see cref="FrameDecoder"/> and
/// <see cref="FrameEncoder"/>. One reader thread sorts frames into per-channel queues, returns output credit as it
/// arrives (unless a channel is set to manual credit) and tracks the supervisor's credit for our <c>I</c> frames.
/// It can also send anything at all (<see cref="SendRaw"/>), for hostile-server tests.
/// </summary>
public sealed class AgentClient : IDisposable
{
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    private readonly ITransport _transport;
    private readonly Sandbox? _sandbox;
    private readonly ConcurrentDictionary<uint, BlockingCollection<Frame>> _queues = new();
    private readonly ConcurrentDictionary<uint, long> _inputCredit = new();
    private readonly ConcurrentDictionary<uint, bool> _manualCredit = new();
    private readonly ConcurrentDictionary<uint, long> _outputAllowance = new();
    private readonly object _writeLock = new();
    private readonly object _creditGate = new();
    private readonly Thread _reader;
    private readonly ManualResetEventSlim _closed = new();
    private uint _nextChannel;

    private AgentClient(ITransport transport, Sandbox? sandbox)
    {
        _transport = transport;
        _sandbox = sandbox;
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "agent-client" };
        _reader.Start();
    }

    public SupervisorHello? Hello { get; private set; }
    public int Window { get; private set; } = FrameLimits.DefaultWindow;
    public ConcurrentQueue<SupervisorLog> Logs { get; } = new();
    public ConcurrentQueue<ImageCapabilities> CapabilityFrames { get; } = new();
    public ConcurrentQueue<(byte Type, uint Channel, int Length)> AllFrames { get; } = new();
    public bool Closed => _closed.IsSet;

    /// <summary>Data frames (<c>o e v</c>) the supervisor sent beyond the credit this client had given: must stay empty.</summary>
    public ConcurrentQueue<string> CreditViolations { get; } = new();

    /// <summary>Channels the supervisor opened (<c>q</c>, <c>n</c>: the high bit set), with their opening frame.</summary>
    public BlockingCollection<Frame> Opened { get; } = [];

    public static AgentClient Open(ITransport transport, int? window, Sandbox? sandbox)
    {
        var client = new AgentClient(transport, sandbox);
        if (window is { } w)
        {
            client.SayHello(w);
        }
        return client;
    }

    public SupervisorHello SayHello(int window, int protocol = FrameLimits.ProtocolVersion, long keyTtlMs = 600_000)
    {
        Window = window;
        SendJson(FrameType.Hello, 0, new ServerHello { Protocol = protocol, Window = window, KeyTtlMs = keyTtlMs, ServerVersion = "tests" });
        var frame = Next(0);
        Assert.That((char)frame.Type, Is.EqualTo('h'), "the first frame must be h");
        Hello = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.SupervisorHello)!;
        _nextChannel = Hello.NextChannel - 1;
        return Hello;
    }

    private BlockingCollection<Frame> Queue(uint channel) => _queues.GetOrAdd(channel, _ => []);

    private void ReadLoop()
    {
        var decoder = new FrameDecoder();
        try
        {
            while (true)
            {
                var buffer = decoder.GetReadBuffer();
                var n = _transport.Input.Read(buffer.Span);
                if (n <= 0)
                {
                    break;
                }
                decoder.Advance(n);
                while (decoder.TryRead(out var frame))
                {
                    AllFrames.Enqueue((frame.Type, frame.Channel, frame.Payload.Length));
                    switch (frame.Type)
                    {
                        case FrameType.Log:
                            Logs.Enqueue(JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.SupervisorLog)!);
                            continue;
                        case FrameType.Capabilities:
                            CapabilityFrames.Enqueue(JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.ImageCapabilities)!);
                            continue;
                        case FrameType.Credit:
                            var grant = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.CreditGrant)!;
                            lock (_creditGate)
                            {
                                _inputCredit.AddOrUpdate(frame.Channel, Window + grant.Bytes, (_, c) => c + grant.Bytes);
                                Monitor.PulseAll(_creditGate);
                            }
                            continue;
                        case FrameType.Stdout or FrameType.Stderr or FrameType.EventChunk:
                            var allowance = _outputAllowance.AddOrUpdate(frame.Channel, Window - frame.Payload.Length, (_, a) => a - frame.Payload.Length);
                            if (allowance < 0)
                            {
                                CreditViolations.Enqueue($"{(char)frame.Type} of {frame.Payload.Length} bytes on channel {frame.Channel}: {-allowance} beyond the credit");
                            }
                            if (!_manualCredit.ContainsKey(frame.Channel) && frame.Payload.Length > 0)
                            {
                                Grant(frame.Channel, frame.Payload.Length);
                            }
                            break;
                        case FrameType.DnsQuery or FrameType.Outbound when (frame.Channel & FrameType.SupervisorChannelBit) != 0:
                            Opened.Add(frame);
                            continue;
                    }
                    Queue(frame.Channel).Add(frame);
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException or ProtocolViolationException)
        {
        }
        finally
        {
            _closed.Set();
            foreach (var q in _queues.Values)
            {
                q.CompleteAdding();
            }
            Opened.CompleteAdding();
            lock (_creditGate)
            {
                Monitor.PulseAll(_creditGate);
            }
        }
    }

    /// <summary>The supervisor closed the connection within <paramref name="seconds"/>.</summary>
    public bool WaitClosed(double seconds = 10) => _closed.Wait(TimeSpan.FromSeconds(seconds));

    public uint NewChannel() => Interlocked.Increment(ref _nextChannel);

    /// <summary>Our output credit for <paramref name="channel"/> is returned by the test itself (<see cref="Grant"/>).</summary>
    public void ManualCredit(uint channel) => _manualCredit[channel] = true;

    public void Grant(uint channel, int bytes)
    {
        // Counted before it is sent: the supervisor may use it as soon as it arrives.
        _outputAllowance.AddOrUpdate(channel, Window + bytes, (_, a) => a + bytes);
        SendJson(FrameType.Credit, channel, new CreditGrant { Bytes = bytes });
    }

    public void Send(byte type, uint channel, ReadOnlySpan<byte> payload = default) => SendRaw(FrameEncoder.Encode(type, channel, payload));

    public void SendRaw(byte[] bytes)
    {
        lock (_writeLock)
        {
            _transport.Output.Write(bytes);
            _transport.Output.Flush();
        }
    }

    public void SendJson<T>(byte type, uint channel, T value) where T : class =>
        Send(type, channel, JsonSerializer.SerializeToUtf8Bytes(value, typeof(T), ProtocolJsonContext.Default));

    public void SendText(byte type, uint channel, string json) => Send(type, channel, Encoding.UTF8.GetBytes(json));

    /// <summary>Sends <c>I</c> frames within the supervisor's credit, waiting for <c>A</c> when it runs out.</summary>
    public void SendData(uint channel, ReadOnlySpan<byte> data, int chunk = 64 * 1024)
    {
        while (!data.IsEmpty)
        {
            int n;
            lock (_creditGate)
            {
                var deadline = Stopwatch.StartNew();
                while (_inputCredit.GetOrAdd(channel, Window) <= 0)
                {
                    if (Closed || deadline.Elapsed > Wait)
                    {
                        throw new AssertionException($"no input credit on channel {channel}");
                    }
                    Monitor.Wait(_creditGate, 100);
                }
                n = (int)Math.Min(Math.Min(chunk, data.Length), _inputCredit[channel]);
                _inputCredit[channel] -= n;
            }
            Send(FrameType.Data, channel, data[..n]);
            data = data[n..];
        }
    }

    public long InputCredit(uint channel) => _inputCredit.GetOrAdd(channel, Window);

    public Frame Next(uint channel, TimeSpan? timeout = null)
    {
        var wait = timeout ?? Wait;
        try
        {
            if (Queue(channel).TryTake(out var frame, wait))
            {
                return frame;
            }
        }
        catch (InvalidOperationException)
        {
        }
        if (Queue(channel).IsCompleted)
        {
            throw new AssertionException($"connection closed while waiting on channel {channel}; logs: {LogText()}");
        }
        throw new AssertionException($"no frame on channel {channel} within {wait.TotalSeconds} s; supervisor logs: {LogText()} {_sandbox?.Logs()}");
    }

    public bool TryNext(uint channel, TimeSpan timeout, out Frame frame)
    {
        try
        {
            return Queue(channel).TryTake(out frame, timeout);
        }
        catch (InvalidOperationException)
        {
            frame = default;
            return false;
        }
    }

    public int Pending(uint channel) => Queue(channel).Count;

    public string LogText() => string.Join(" | ", Logs.Select(l => $"{l.Level}: {l.Message}"));

    public uint Start(RunRequest request)
    {
        var channel = NewChannel();
        SendJson(FrameType.Run, channel, request);
        return channel;
    }

    public uint Start(string command, long timeoutMs = 0) => Start(new RunRequest { Command = command, TimeoutMs = timeoutMs });

    /// <summary>Collects a channel's frames up to its final one.</summary>
    public Result Collect(uint channel, TimeSpan? timeout = null)
    {
        var result = new Result { Channel = channel };
        var clock = Stopwatch.StartNew();
        var chunks = new MemoryStream();
        while (true)
        {
            var frame = Next(channel, timeout);
            result.Frames.Add(frame);
            var span = frame.Payload.Span;
            if (frame.Type != FrameType.EventChunk && frame.Type != FrameType.EventEnd)
            {
                result.Order.Append((char)frame.Type);
            }
            switch (frame.Type)
            {
                case FrameType.EventChunk:
                    chunks.Write(span);
                    break;
                case FrameType.EventEnd:
                    result.Events.Add(JsonDocument.Parse(chunks.ToArray()).RootElement.Clone());
                    chunks.SetLength(0);
                    result.Order.Append('E');
                    break;
                case FrameType.Started:
                    result.Started = JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.StartedEvent);
                    break;
                case FrameType.Stdout:
                    result.StdoutBuffer.Write(span);
                    break;
                case FrameType.Stderr:
                    result.StderrBuffer.Write(span);
                    break;
                case FrameType.Dropped:
                    result.Dropped.Add(JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.DroppedEvent)!);
                    break;
                case FrameType.Exited:
                    result.Exit = JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.ExitEvent);
                    break;
                case FrameType.Error:
                    result.Final = span.ToArray();
                    result.Error = JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.ErrorReply);
                    break;
                case FrameType.Result:
                    result.Final = span.ToArray();
                    if (span.IndexOf("\"cell\""u8) >= 0 || span.IndexOf("\"context"u8) >= 0 || span.SequenceEqual("{}"u8))
                    {
                        result.Context = JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.ContextResult);
                    }
                    if (span.IndexOf("\"job"u8) >= 0 || span.IndexOf("\"from\""u8) >= 0 || span.SequenceEqual("{}"u8))
                    {
                        result.Job = JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.JobResult);
                    }
                    result.File = JsonSerializer.Deserialize(span, ProtocolJsonContext.Default.FileResult);
                    break;
            }
            if (FrameType.IsFinal(frame.Type))
            {
                result.Elapsed = clock.Elapsed;
                return result;
            }
        }
    }

    public Result Run(RunRequest request, TimeSpan? timeout = null)
    {
        var clock = Stopwatch.StartNew();
        var result = Collect(Start(request), timeout);
        result.Elapsed = clock.Elapsed;
        return result;
    }

    public Result Run(string command, long timeoutMs = 0) => Run(new RunRequest { Command = command, TimeoutMs = timeoutMs });

    /// <summary>A file request (<c>W</c> with data: <c>I</c> frames within credit, then <c>C</c>).</summary>
    public Result File(byte type, FileRequest request, byte[]? data = null)
    {
        var channel = NewChannel();
        SendJson(type, channel, request);
        if (data is not null)
        {
            SendData(channel, data, 50_000);
            Send(FrameType.Close, channel);
        }
        return Collect(channel);
    }

    public Result Job(JobRequest request) => Collect(StartJob(request));

    /// <summary>An <c>X</c> operation, collected to its final frame.</summary>
    public Result Context(ContextRequest request, TimeSpan? timeout = null) => Collect(StartContext(request), timeout);

    public uint StartContext(ContextRequest request)
    {
        var channel = NewChannel();
        SendJson(FrameType.Context, channel, request);
        return channel;
    }

    /// <summary>Runs one cell in a context.</summary>
    public Result Cell(string context, string code, long timeoutMs = 0, long? graceMs = null, string? cellId = null) =>
        Context(new ContextRequest { Op = "run", Id = context, Code = code, TimeoutMs = timeoutMs, GraceMs = graceMs, CellId = cellId });

    public uint StartJob(JobRequest request)
    {
        var channel = NewChannel();
        SendJson(FrameType.Job, channel, request);
        return channel;
    }

    public void Ping(byte[]? payload = null)
    {
        payload ??= "ping"u8.ToArray();
        Send(FrameType.Ping, 0, payload);
        var frame = Next(0);
        Assert.That((char)frame.Type, Is.EqualTo('p'));
        Assert.That(frame.Payload.ToArray(), Is.EqualTo(payload));
    }

    /// <summary>Ends our side (EOF for the supervisor).</summary>
    public void CloseOutput() => _transport.CloseOutput();

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _transport.CloseOutput();
        _transport.Dispose();
        _reader.Join(TimeSpan.FromSeconds(5));
    }
}
