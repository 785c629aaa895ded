using System.Collections.Concurrent;
using System.Threading.Channels;
using SandboxKit.Server.Engine;

namespace SandboxKit.Server.Agent;

/// <summary>
/// The one long-lived control channel to a session's in-sandbox agent: the container's attached main process.
/// Requests are multiplexed by channel id; a single read loop dispatches the agent's frames to them.
/// </summary>
internal sealed class AgentConnection : IAsyncDisposable
{
    private readonly IAttachedStream _stream;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<uint, AgentChannel> _channels = new();
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly CancellationTokenSource _closed = new();
    private readonly Task _readLoop;
    private int _nextChannel;

    private AgentConnection(IAttachedStream stream, ILogger logger)
    {
        _stream = stream;
        _logger = logger;
        _readLoop = Task.Run(ReadLoopAsync);
    }

    /// <summary>Set when the stream ended (container stopped, engine lost).</summary>
    public bool IsClosed => _closed.IsCancellationRequested;

    /// <summary>Why the connection closed, when it did.</summary>
    public Exception? Fault { get; private set; }

    /// <summary>Attaches to the container and waits until the agent answers a ping.</summary>
    public static async Task<AgentConnection> ConnectAsync(IContainerEngine engine, string containerId, ILogger logger, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var stream = await engine.AttachAsync(containerId, cancellationToken).ConfigureAwait(false);
        var connection = new AgentConnection(stream, logger);
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(timeout);
            await connection.PingAsync(deadline.Token).ConfigureAwait(false);
            return connection;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw new AgentUnavailableException($"The sandbox agent in container {containerId[..12]} did not answer within {timeout.TotalSeconds:0.#} s.");
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async Task PingAsync(CancellationToken cancellationToken)
    {
        await using var channel = await OpenAsync(FrameType.Ping, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        await foreach (var frame in channel.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (frame.Type == FrameType.Pong)
            {
                return;
            }
        }
        throw new AgentUnavailableException("The sandbox agent closed the channel before answering a ping.", Fault);
    }

    /// <summary>Opens a channel with its first request frame. Dispose the channel when done with it.</summary>
    public async Task<AgentChannel> OpenAsync(byte requestType, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var id = (uint)Interlocked.Increment(ref _nextChannel);
        var channel = new AgentChannel(this, id);
        _channels[id] = channel;
        if (IsClosed)
        {
            _channels.TryRemove(id, out _);
            throw new AgentUnavailableException("The sandbox agent connection is closed.", Fault);
        }
        try
        {
            await SendAsync(requestType, id, payload, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _channels.TryRemove(id, out _);
            throw;
        }
        return channel;
    }

    public async Task SendAsync(byte type, uint channel, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var frame = AgentFrame.Encode(type, channel, payload.Span);
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(frame, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new AgentUnavailableException("Writing to the sandbox agent failed: " + e.Message, e);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    internal void Release(uint id) => _channels.TryRemove(id, out _);

    private async Task ReadLoopAsync()
    {
        var reader = new FrameReader();
        try
        {
            while (!_closed.IsCancellationRequested)
            {
                var read = await _stream.ReadAsync(reader.GetReadBuffer(), _closed.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }
                reader.Advance(read);
                while (reader.TryRead(out var frame))
                {
                    if (frame.Channel != 0 && _channels.TryGetValue(frame.Channel, out var channel))
                    {
                        // Awaiting a slow consumer is the backpressure: the agent blocks on its pipe, not our memory.
                        await channel.DeliverAsync(frame, _closed.Token).ConfigureAwait(false);
                    }
                }
            }
        }
        catch (Exception) when (_closed.IsCancellationRequested)
        {
            // Closed on purpose: whatever the torn-down stream threw is not a fault.
        }
        catch (Exception e)
        {
            Fault = e;
            _logger.LogWarning(e, "Agent connection failed");
        }
        finally
        {
            _closed.Cancel();
            foreach (var channel in _channels.Values)
            {
                channel.Fail(new AgentUnavailableException("The sandbox agent connection closed (the container stopped or the engine went away).", Fault));
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_closed.IsCancellationRequested)
        {
            await _closed.CancelAsync().ConfigureAwait(false);
        }
        await _stream.DisposeAsync().ConfigureAwait(false);
        try
        {
            await _readLoop.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            _logger.LogDebug(e, "Agent read loop ended with an error during dispose");
        }
    }
}

/// <summary>One request on the agent connection and the frames the agent sends back for it.</summary>
internal sealed class AgentChannel : IAsyncDisposable
{
    // 64 frames of up to 64 KiB: the most one slow consumer holds before the agent is made to wait.
    private readonly Channel<AgentFrame> _frames = Channel.CreateBounded<AgentFrame>(new BoundedChannelOptions(64)
    {
        SingleReader = true,
        SingleWriter = true,
        FullMode = BoundedChannelFullMode.Wait,
    });
    private readonly AgentConnection _connection;
    private volatile bool _abandoned;

    public AgentChannel(AgentConnection connection, uint id)
    {
        _connection = connection;
        Id = id;
    }

    public uint Id { get; }

    public IAsyncEnumerable<AgentFrame> ReadAllAsync(CancellationToken cancellationToken) => _frames.Reader.ReadAllAsync(cancellationToken);

    public Task SendAsync(byte type, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken) =>
        _connection.SendAsync(type, Id, payload, cancellationToken);

    internal async ValueTask DeliverAsync(AgentFrame frame, CancellationToken cancellationToken)
    {
        if (_abandoned)
        {
            return;
        }
        try
        {
            await _frames.Writer.WriteAsync(frame, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
        }
        if (frame.Type is FrameType.Exited or FrameType.Error or FrameType.FileResult or FrameType.Pong)
        {
            _frames.Writer.TryComplete();
        }
    }

    internal void Fail(Exception error) => _frames.Writer.TryComplete(error);

    /// <summary>Stops delivery (later frames are dropped) and frees the channel id.</summary>
    public ValueTask DisposeAsync()
    {
        _abandoned = true;
        _frames.Writer.TryComplete();
        // Drain so a read loop blocked on a full buffer moves on.
        while (_frames.Reader.TryRead(out _))
        {
        }
        _connection.Release(Id);
        return ValueTask.CompletedTask;
    }
}

/// <summary>The agent in a session's container cannot be reached.</summary>
internal sealed class AgentUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
