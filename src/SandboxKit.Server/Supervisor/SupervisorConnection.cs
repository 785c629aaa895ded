using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Server.Supervisor;

/// <summary>
/// One connection to a session's supervisor (docs/supervisor-protocol.md): the hello exchange and version check, one
/// read loop that checks every frame and hands it to its channel without ever waiting for a consumer, channel ids that
/// never repeat for the life of the container, and flow-control credit. Everything the supervisor sends is treated as
/// untrusted: a violation closes this connection (its requests fail with a clear error) and nothing else.
/// </summary>
internal sealed class SupervisorConnection : IAsyncDisposable
{
    /// <summary>Log lines per second a supervisor may have logged; more are counted and summarised.</summary>
    private const double LogLinesPerSecond = 5;

    private readonly Stream _stream;
    private readonly ILogger _logger;
    private readonly SupervisorConnectionSettings _settings;
    private readonly ConcurrentDictionary<uint, SupervisorChannel> _channels = new();
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource> _pings = new();
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly CancellationTokenSource _closed = new();
    private readonly TaskCompletionSource _capabilitiesProbed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task _readLoop = Task.CompletedTask;
    private Timer? _keepalive;
    private int _keepaliveInFlight;
    private long _lastInbound = Environment.TickCount64;
    private long _lastChannel;
    private long _lastIncomingChannel = FrameType.SupervisorChannelBit - 1L;
    private Func<SupervisorChannel, object, Task>? _incoming;
    private int _openIncoming;

    /// <summary>
    /// Most supervisor-opened channels handled at once. The supervisor bounds its own (256 connections, 256 DNS queries);
    /// the server does not rely on that, since what the sandbox sends decides how many the supervisor opens.
    /// </summary>
    internal const int MaxOpenIncoming = 1024;
    private long _nextPing;
    private string? _closeReason;
    private double _logTokens = 10;
    private long _logRefilledAt = Environment.TickCount64;
    private int _logsSuppressed;

    private SupervisorConnection(Stream stream, SupervisorConnectionSettings settings, SupervisorHello hello, ILogger logger)
    {
        _stream = stream;
        _settings = settings;
        _logger = logger;
        Hello = hello;
        Capabilities = hello.Capabilities;
        _lastChannel = (long)hello.NextChannel - 1;
        if (hello.Capabilities.Probed)
        {
            _capabilitiesProbed.TrySetResult();
        }
    }

    /// <summary>The supervisor's hello.</summary>
    public SupervisorHello Hello { get; }

    /// <summary>What the image offers: from the hello, then from the <c>c</c> frame once the probes are done.</summary>
    public ImageCapabilities Capabilities { get; private set; }

    /// <summary>True once the connection has closed, for any reason.</summary>
    public bool IsClosed => _closed.IsCancellationRequested;

    /// <summary>Why it closed.</summary>
    public string? CloseReason => Volatile.Read(ref _closeReason);

    /// <summary>
    /// Takes the channels the supervisor opens (the egress relay's DNS queries <c>q</c> and connections <c>n</c>), with the
    /// channel and its parsed opening message. Without a handler they are refused (a query goes unanswered, a
    /// connection is reset): the relay may run before a new connection's handler is set, which is no violation.
    /// </summary>
    public void HandleIncomingChannels(Func<SupervisorChannel, object, Task>? handler) => Volatile.Write(ref _incoming, handler);

    /// <summary>True when it closed because the supervisor stopped answering (not because the container or connection went away).</summary>
    public bool Unresponsive { get; private set; }

    /// <summary>Channels open now (for tests and diagnostics).</summary>
    public int OpenChannels => _channels.Count;

    /// <summary>
    /// Sends the hello, reads and checks the supervisor's, and starts the read loop. The stream is owned by the
    /// connection from here on (disposed on failure too).
    /// </summary>
    /// <exception cref="SupervisorUnavailableException">No valid hello in time.</exception>
    /// <exception cref="SupervisorMismatchException">Another protocol or build.</exception>
    public static async Task<SupervisorConnection> OpenAsync(Stream stream, SupervisorConnectionSettings settings, ILogger logger, CancellationToken cancellationToken)
    {
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(settings.HelloTimeout);
            var hello = new ServerHello
            {
                Protocol = FrameLimits.ProtocolVersion,
                ServerVersion = ServerInfo.Version,
                Window = settings.Window,
                KeyTtlMs = (long)settings.KeyTtl.TotalMilliseconds,
            };
            var payload = JsonSerializer.SerializeToUtf8Bytes(hello, ProtocolJsonContext.Default.ServerHello);
            await stream.WriteAsync(FrameEncoder.Encode(FrameType.Hello, 0, payload), deadline.Token).ConfigureAwait(false);
            await stream.FlushAsync(deadline.Token).ConfigureAwait(false);

            // Grows to a maximal frame only when one comes: hundreds of idle connections stay small.
            var decoder = new FrameDecoder(FrameLimits.MaxPayload, initialBuffer: 16 * 1024);
            Frame frame;
            while (!decoder.TryRead(out frame))
            {
                var read = await stream.ReadAsync(decoder.GetReadBuffer(), deadline.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    throw new SupervisorUnavailableException("The supervisor closed the connection before its hello.");
                }
                decoder.Advance(read);
            }
            if (frame.Type != FrameType.HelloReply || frame.Channel != 0)
            {
                throw new SupervisorUnavailableException($"The supervisor's first frame was '{FrameType.Name(frame.Type)}' on channel {frame.Channel}, not its hello.");
            }
            var reply = Parse(frame.Payload.Span, ProtocolJsonContext.Default.SupervisorHello)
                ?? throw new SupervisorUnavailableException("The supervisor's hello is malformed.");
            if (reply.Protocol != FrameLimits.ProtocolVersion)
            {
                throw new SupervisorMismatchException($"The session's supervisor speaks protocol {reply.Protocol}; this server speaks {FrameLimits.ProtocolVersion}. Recreate the session.");
            }
            if (!string.Equals(reply.Build, settings.ExpectedBuild, StringComparison.Ordinal))
            {
                throw new SupervisorMismatchException(
                    $"The session runs supervisor {Clip(reply.Version, 32)} (build {Clip(reply.Build, 32)}) but this server brings build {settings.ExpectedBuild}; " +
                    "it was created by another SandboxKit version. Recreate the session.");
            }
            if (reply.NextChannel == 0 || reply.NextChannel > uint.MaxValue / 2)
            {
                throw new SupervisorUnavailableException($"The supervisor's hello has an unusable nextChannel {reply.NextChannel}.");
            }
            var connection = new SupervisorConnection(stream, settings, reply, logger);
            // Frames that arrived right behind the hello are in the decoder already: the loop starts from it.
            connection._readLoop = Task.Run(() => connection.ReadLoopAsync(decoder));
            connection.StartKeepalive();
            return connection;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new SupervisorUnavailableException($"The supervisor did not answer the hello within {settings.HelloTimeout.TotalSeconds:0.#} s.");
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or ProtocolViolationException or JsonException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new SupervisorUnavailableException("The supervisor connection failed during the hello: " + e.Message, e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Opens a channel with its request frame.</summary>
    /// <exception cref="SupervisorUnavailableException">The connection is closed or the write failed.</exception>
    public async Task<SupervisorChannel> OpenAsync(byte requestType, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length > FrameLimits.MaxPayload)
        {
            throw new ArgumentOutOfRangeException(nameof(payload), "Request payloads are bounded by the caller.");
        }
        SupervisorChannel? channel = null;
        try
        {
            // The id is taken under the write lock: requests must reach the supervisor in increasing id order,
            // and two callers could otherwise write in the opposite order of their ids.
            await WriteFrameAsync(requestType, () =>
            {
                var id = (uint)Interlocked.Increment(ref _lastChannel);
                channel = new SupervisorChannel(this, id, requestType, _settings.Window);
                _channels[id] = channel;
                return id;
            }, payload, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            if (channel is not null)
            {
                _channels.TryRemove(channel.Id, out _);
            }
            throw;
        }
        if (IsClosed)
        {
            // Closed between the write and now: Close() failed every channel it saw, maybe not this one.
            channel!.Fail(Unavailable());
        }
        return channel!;
    }

    /// <summary>Opens a channel with a JSON request.</summary>
    public Task<SupervisorChannel> OpenAsync<T>(byte requestType, T request, JsonTypeInfo<T> type, CancellationToken cancellationToken) =>
        OpenAsync(requestType, JsonSerializer.SerializeToUtf8Bytes(request, type), cancellationToken);

    /// <summary>A ping round trip.</summary>
    public async Task PingAsync(CancellationToken cancellationToken)
    {
        var id = (ulong)Interlocked.Increment(ref _nextPing);
        var pong = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _pings[id] = pong;
        try
        {
            var payload = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(payload, id);
            await SendAsync(FrameType.Ping, 0, payload, cancellationToken).ConfigureAwait(false);
            await pong.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _pings.TryRemove(id, out _);
        }
    }

    /// <summary>
    /// Keeps requests from hanging on a supervisor that stopped answering (stopped, starved or wedged; its socket still
    /// accepts writes, so nothing else would notice): while a request is open and nothing has come for
    /// <see cref="SupervisorConnectionSettings.KeepaliveInterval"/>, a ping goes out; no answer within
    /// <see cref="SupervisorConnectionSettings.KeepaliveTimeout"/> closes the connection, failing its requests. Idle
    /// connections are not pinged: hundreds of idle sessions cost no wake-ups, and the next request starts the watch.
    /// </summary>
    private void StartKeepalive()
    {
        var period = TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond * 50, Math.Min(_settings.KeepaliveInterval.Ticks, _settings.KeepaliveTimeout.Ticks) / 2));
        _keepalive = new Timer(static state => ((SupervisorConnection)state!).CheckLiveness(), this, period, period);
    }

    private void CheckLiveness()
    {
        if (IsClosed || _channels.IsEmpty)
        {
            return;
        }
        var quiet = Environment.TickCount64 - Volatile.Read(ref _lastInbound);
        if (quiet < _settings.KeepaliveInterval.TotalMilliseconds || Interlocked.CompareExchange(ref _keepaliveInFlight, 1, 0) != 0)
        {
            return;
        }
        _ = KeepaliveAsync();
    }

    private async Task KeepaliveAsync()
    {
        try
        {
            using var timeout = new CancellationTokenSource(_settings.KeepaliveTimeout);
            await PingAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            if (!IsClosed)
            {
                Unresponsive = true;
                _logger.LogWarning("Supervisor of {Session} did not answer a ping within {Seconds} s; closing its connection", _settings.SessionLabel, _settings.KeepaliveTimeout.TotalSeconds);
                Close($"the supervisor did not answer for {_settings.KeepaliveTimeout.TotalSeconds:0.#} s (stopped, starved or wedged)");
            }
        }
        catch (SupervisorUnavailableException)
        {
            // Closed meanwhile, with its own reason.
        }
        finally
        {
            Volatile.Write(ref _keepaliveInFlight, 0);
        }
    }

    /// <summary>Waits until the image probes are done (or the timeout passes) and returns the capabilities known then.</summary>
    public async Task<ImageCapabilities> GetProbedCapabilitiesAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            await _capabilitiesProbed.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        return Capabilities;
    }

    /// <summary>Writes one frame; writes never interleave. A write that fails or stalls closes the connection.</summary>
    public Task SendAsync(byte type, uint channel, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken) =>
        WriteFrameAsync(type, () => channel, payload, cancellationToken);

    /// <summary>Writes one frame under the write lock; <paramref name="channel"/> is evaluated inside it.</summary>
    private async Task WriteFrameAsync(byte type, Func<uint> channel, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (IsClosed)
        {
            throw Unavailable();
        }
        var length = FrameLimits.HeaderSize + payload.Length;
        var buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            payload.Span.CopyTo(buffer.AsSpan(FrameLimits.HeaderSize));
            await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (IsClosed)
                {
                    throw Unavailable();
                }
                FrameEncoder.WriteHeader(buffer, type, channel(), payload.Length);
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_closed.Token);
                deadline.CancelAfter(_settings.WriteTimeout);
                await _stream.WriteAsync(buffer.AsMemory(0, length), deadline.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
            {
                // A frame may be half written: the stream is unusable from here.
                Close(e is OperationCanceledException && !_closed.IsCancellationRequested
                    ? $"a write did not complete within {_settings.WriteTimeout.TotalSeconds:0} s" : "writing to the supervisor failed: " + e.Message);
                throw Unavailable(e);
            }
            finally
            {
                _writeLock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Returns flow-control credit for a channel without waiting (a failure closes the connection anyway).</summary>
    internal void GrantCredit(SupervisorChannel channel, int bytes)
    {
        if (IsClosed || channel.Completed)
        {
            return;
        }
        var payload = JsonSerializer.SerializeToUtf8Bytes(new CreditGrant { Bytes = bytes }, ProtocolJsonContext.Default.CreditGrant);
        _ = SendAsync(FrameType.Credit, channel.Id, payload, CancellationToken.None).ContinueWith(
            t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>Drops an abandoned channel whose final frame has arrived.</summary>
    internal void Forget(SupervisorChannel channel) => _channels.TryRemove(new KeyValuePair<uint, SupervisorChannel>(channel.Id, channel));

    /// <summary>Closes the connection (idempotent): every open request fails with <paramref name="reason"/>.</summary>
    public void Close(string reason)
    {
        if (Interlocked.CompareExchange(ref _closeReason, reason, null) is not null)
        {
            return;
        }
        _closed.Cancel();
        _keepalive?.Dispose();
        try
        {
            _stream.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
        }
        var error = Unavailable();
        foreach (var channel in _channels.Values)
        {
            channel.Fail(error);
        }
        _channels.Clear();
        foreach (var pong in _pings.Values)
        {
            pong.TrySetException(error);
        }
        _capabilitiesProbed.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        Close("closed by the server");
        try
        {
            await _readLoop.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            _logger.LogDebug(e, "Supervisor read loop of {Session} ended with an error during dispose", _settings.SessionLabel);
        }
        _writeLock.Dispose();
        _closed.Dispose();
    }

    private SupervisorUnavailableException Unavailable(Exception? inner = null) =>
        new($"The connection to the sandbox supervisor closed: {CloseReason ?? "it is closing"}.", inner);

    private async Task ReadLoopAsync(FrameDecoder decoder)
    {
        try
        {
            while (true)
            {
                while (decoder.TryRead(out var frame))
                {
                    if (Dispatch(frame) is { } violation)
                    {
                        Violation(violation);
                        return;
                    }
                }
                var read = await _stream.ReadAsync(decoder.GetReadBuffer(), _closed.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    Close("the supervisor ended the connection");
                    return;
                }
                Volatile.Write(ref _lastInbound, Environment.TickCount64);
                decoder.Advance(read);
            }
        }
        catch (ProtocolViolationException e)
        {
            Violation(e.Message);
        }
        catch (Exception) when (_closed.IsCancellationRequested)
        {
            // Closed on purpose: whatever the torn-down stream threw is not news.
        }
        catch (Exception e)
        {
            Close("reading from the supervisor failed: " + e.Message);
        }
    }

    private void Violation(string what)
    {
        _logger.LogWarning("Supervisor of {Session} broke the protocol ({Violation}); closing its connection", _settings.SessionLabel, Sanitize(what, 200));
        Close("the supervisor broke the protocol: " + what);
    }

    /// <summary>Checks and routes one frame; returns a violation, or null.</summary>
    private string? Dispatch(in Frame frame)
    {
        if (frame.Channel == 0)
        {
            return DispatchControl(frame);
        }
        if ((frame.Channel & FrameType.SupervisorChannelBit) != 0 && !_channels.ContainsKey(frame.Channel))
        {
            return OpenIncoming(frame);
        }
        if (!_channels.TryGetValue(frame.Channel, out var channel))
        {
            return frame.Channel > (ulong)Interlocked.Read(ref _lastChannel)
                ? $"frame '{FrameType.Name(frame.Type)}' for channel {frame.Channel}, which was never opened"
                : $"frame '{FrameType.Name(frame.Type)}' for channel {frame.Channel}, which has ended";
        }
        object? body;
        try
        {
            body = frame.Type switch
            {
                FrameType.Stdout or FrameType.Stderr or FrameType.EventChunk or FrameType.EventEnd or FrameType.HalfClose => null,
                FrameType.Started => Parse(frame.Payload.Span, ProtocolJsonContext.Default.StartedEvent),
                FrameType.Exited => Parse(frame.Payload.Span, ProtocolJsonContext.Default.ExitEvent),
                FrameType.Error => Parse(frame.Payload.Span, ProtocolJsonContext.Default.ErrorReply),
                FrameType.Credit => Parse(frame.Payload.Span, ProtocolJsonContext.Default.CreditGrant) is { Bytes: > 0 and <= 16 << 20 } c ? c : null,
                FrameType.Dropped => Parse(frame.Payload.Span, ProtocolJsonContext.Default.DroppedEvent),
                FrameType.Result => channel.RequestType switch
                {
                    FrameType.Job or FrameType.Run => Parse(frame.Payload.Span, ProtocolJsonContext.Default.JobResult),
                    FrameType.Context => Parse(frame.Payload.Span, ProtocolJsonContext.Default.ContextResult),
                    FrameType.Configure => Parse(frame.Payload.Span, ProtocolJsonContext.Default.ConfigureResult),
                    FrameType.Connect or FrameType.Outbound => Parse(frame.Payload.Span, ProtocolJsonContext.Default.StreamResult),
                    _ => Parse(frame.Payload.Span, ProtocolJsonContext.Default.FileResult),
                },
                _ => throw new ProtocolViolationException($"unknown frame type '{FrameType.Name(frame.Type)}' on channel {frame.Channel}"),
            };
        }
        catch (JsonException e)
        {
            return $"malformed '{FrameType.Name(frame.Type)}' payload on channel {frame.Channel}: {e.Message}";
        }
        if (body is null && frame.Type is not (FrameType.Stdout or FrameType.Stderr or FrameType.EventChunk or FrameType.EventEnd or FrameType.HalfClose))
        {
            return $"empty or invalid '{FrameType.Name(frame.Type)}' payload on channel {frame.Channel}";
        }
        if (channel.Deliver(frame, body) is { } violation)
        {
            return violation;
        }
        if (FrameType.IsFinal(frame.Type))
        {
            // The id is spent: later frames for it are violations. Its consumer still reads the rest through the
            // channel object it holds.
            _channels.TryRemove(frame.Channel, out _);
        }
        return null;
    }

    /// <summary>A channel the supervisor opens: ids with the high bit, increasing; only <c>q</c> and <c>n</c>.</summary>
    private string? OpenIncoming(in Frame frame)
    {
        if (frame.Channel <= (ulong)Interlocked.Read(ref _lastIncomingChannel))
        {
            return $"supervisor channel {frame.Channel} opened again or out of order";
        }
        object? body;
        try
        {
            body = frame.Type switch
            {
                FrameType.DnsQuery => Parse(frame.Payload.Span, ProtocolJsonContext.Default.DnsQueryMessage),
                FrameType.Outbound => Parse(frame.Payload.Span, ProtocolJsonContext.Default.OutboundConnection),
                _ => throw new ProtocolViolationException($"frame '{FrameType.Name(frame.Type)}' cannot open supervisor channel {frame.Channel}"),
            };
        }
        catch (JsonException e)
        {
            return $"malformed '{FrameType.Name(frame.Type)}' opening channel {frame.Channel}: {e.Message}";
        }
        if (body is null)
        {
            return $"empty '{FrameType.Name(frame.Type)}' opening channel {frame.Channel}";
        }
        Interlocked.Exchange(ref _lastIncomingChannel, frame.Channel);
        var channel = new SupervisorChannel(this, frame.Channel, frame.Type, _settings.Window);
        _channels[frame.Channel] = channel;
        var handler = Volatile.Read(ref _incoming);
        if (handler is null || Interlocked.Increment(ref _openIncoming) > MaxOpenIncoming)
        {
            if (handler is not null)
            {
                Interlocked.Decrement(ref _openIncoming);
            }
            _ = RefuseIncomingAsync(channel);
            return null;
        }
        // Off the read loop: a handler dials upstreams and relays for minutes.
        _ = Task.Run(async () =>
        {
            try
            {
                await handler(channel, body).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SupervisorUnavailableException or OperationCanceledException or IOException)
            {
            }
            catch (Exception e)
            {
                _logger.LogWarning(e, "Egress channel {Channel} of {Session} failed", channel.Id, _settings.SessionLabel);
            }
            finally
            {
                Interlocked.Decrement(ref _openIncoming);
                await channel.DisposeAsync().ConfigureAwait(false);
            }
        });
        return null;
    }

    private async Task RefuseIncomingAsync(SupervisorChannel channel)
    {
        try
        {
            if (channel.RequestType == FrameType.DnsQuery)
            {
                await AnswerDnsAsync(channel, new DnsAnswerMessage()).ConfigureAwait(false);
            }
            else
            {
                channel.Abandon();
                await channel.SendAsync(FrameType.Kill, ReadOnlyMemory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (SupervisorUnavailableException)
        {
        }
    }

    /// <summary>Answers a supervisor's DNS query; that ends its channel (the supervisor sends nothing more on it).</summary>
    public async Task AnswerDnsAsync(SupervisorChannel channel, DnsAnswerMessage answer)
    {
        try
        {
            await SendAsync(FrameType.DnsAnswer, channel.Id, JsonSerializer.SerializeToUtf8Bytes(answer, ProtocolJsonContext.Default.DnsAnswerMessage), CancellationToken.None)
                .ConfigureAwait(false);
        }
        finally
        {
            channel.MarkAnsweredByServer();
            _channels.TryRemove(new KeyValuePair<uint, SupervisorChannel>(channel.Id, channel));
        }
    }

    private string? DispatchControl(in Frame frame)
    {
        switch (frame.Type)
        {
            case FrameType.Pong:
                if (frame.Payload.Length == 8 && _pings.TryGetValue(BinaryPrimitives.ReadUInt64BigEndian(frame.Payload.Span), out var pong))
                {
                    pong.TrySetResult();
                }
                return null;
            case FrameType.Log:
                try
                {
                    if (Parse(frame.Payload.Span, ProtocolJsonContext.Default.SupervisorLog) is { } line)
                    {
                        LogLine(line);
                    }
                }
                catch (JsonException)
                {
                    // A log line is not worth a connection.
                }
                return null;
            case FrameType.Capabilities:
                try
                {
                    if (Parse(frame.Payload.Span, ProtocolJsonContext.Default.ImageCapabilities) is { } capabilities)
                    {
                        Capabilities = capabilities;
                        if (capabilities.Probed)
                        {
                            _capabilitiesProbed.TrySetResult();
                        }
                        return null;
                    }
                }
                catch (JsonException e)
                {
                    return "malformed capabilities: " + e.Message;
                }
                return "empty capabilities";
            default:
                return $"unexpected frame '{FrameType.Name(frame.Type)}' on the control channel";
        }
    }

    /// <summary>Supervisor log lines reach the server log escaped, clipped and rate-limited, never verbatim.</summary>
    private void LogLine(SupervisorLog line)
    {
        var now = Environment.TickCount64;
        _logTokens = Math.Min(10, _logTokens + (now - _logRefilledAt) / 1000.0 * LogLinesPerSecond);
        _logRefilledAt = now;
        if (_logTokens < 1)
        {
            _logsSuppressed++;
            return;
        }
        _logTokens--;
        var suppressed = _logsSuppressed + Math.Max(0, line.Suppressed);
        _logsSuppressed = 0;
        var level = line.Level switch
        {
            "error" => LogLevel.Warning,
            "warn" => LogLevel.Information,
            "info" => LogLevel.Debug,
            _ => LogLevel.Trace,
        };
        _logger.Log(level, "supervisor {Session}: {Line}{Suppressed}", _settings.SessionLabel, Sanitize(line.Message, 512),
            suppressed > 0 ? $" ({suppressed} lines suppressed)" : "");
    }

    private static T? Parse<T>(ReadOnlySpan<byte> payload, JsonTypeInfo<T> type) where T : class =>
        payload.IsEmpty ? null : JsonSerializer.Deserialize(payload, type);

    /// <summary>Escapes control characters and clips, so a hostile string cannot forge or flood log lines.</summary>
    internal static string Sanitize(string? text, int max)
    {
        if (string.IsNullOrEmpty(text))
        {
            return "";
        }
        var builder = new StringBuilder(Math.Min(text.Length, max) + 8);
        foreach (var c in text)
        {
            if (builder.Length >= max)
            {
                builder.Append('…');
                break;
            }
            if (char.IsControl(c) || char.IsSurrogate(c))
            {
                builder.Append(c switch { '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", _ => $"\\u{(int)c:x4}" });
            }
            else
            {
                builder.Append(c);
            }
        }
        return builder.ToString();
    }

    private static string Clip(string? text, int max) => Sanitize(text, max);
}
