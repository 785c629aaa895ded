using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using SandboxKit.Client.Internal;
using SandboxKit.Contracts;

namespace SandboxKit.Client;

/// <summary>
/// A terminal in a session, attached: a shell (or a command) on a real pseudo-terminal. Read its output and write its
/// input as bytes (<see cref="ReadAsync"/>, <see cref="WriteAsync(ReadOnlyMemory{byte}, CancellationToken)"/>, or
/// <see cref="AsStream"/>), resize it, download its asciicast recording. Get one from
/// <see cref="SandboxSession.OpenTerminalAsync"/> or <see cref="SandboxSession.AttachTerminalAsync"/>.
/// </summary>
/// <remarks>
/// <para>The terminal lives on the server: a dropped connection is re-established on the next read, from the byte
/// offset reached, so no output is lost or repeated (as long as the server's replay buffer still holds it).</para>
/// <para><b>Disposal closes the terminal</b> (its process tree gets SIGHUP, then SIGKILL). Call <see cref="DetachAsync"/>
/// instead to leave it running for a later <see cref="SandboxSession.AttachTerminalAsync"/>.</para>
/// <para>Reads are for one reader at a time; writes and resizes may come from any thread.</para>
/// </remarks>
public sealed class SandboxTerminal : IAsyncDisposable
{
    private const int MaxReconnects = 5;

    private readonly SandboxConnection _connection;
    private readonly string _sessionId;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly Channel<ReadOnlyMemory<byte>> _output = Channel.CreateBounded<ReadOnlyMemory<byte>>(new BoundedChannelOptions(64) { SingleReader = true, SingleWriter = true });
    private readonly TaskCompletionSource<int?> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _closing = new();
    private ClientWebSocket? _socket;
    private Task _receiver = Task.CompletedTask;
    private ReadOnlyMemory<byte> _pending;
    private long _offset;
    private int _disposed;

    private SandboxTerminal(SandboxConnection connection, string sessionId, TerminalInfo info)
    {
        _connection = connection;
        _sessionId = sessionId;
        Info = info;
    }

    /// <summary>The terminal id.</summary>
    public string Id => Info.Id;

    /// <summary>The session it belongs to.</summary>
    public string SessionId => _sessionId;

    /// <summary>The terminal as last reported (at open, attach or <see cref="ResizeAsync"/>).</summary>
    public TerminalInfo Info { get; private set; }

    /// <summary>Output offset reached: bytes of output since the terminal started that this object has received.</summary>
    public long Offset => Interlocked.Read(ref _offset);

    /// <summary>True when output between <c>since</c> and what the server still had was lost (its replay buffer had dropped it).</summary>
    public bool OutputDropped { get; private set; }

    /// <summary>Completes with the exit code when the terminal's process ends (null when the terminal went away otherwise).</summary>
    public Task<int?> Exited => _exited.Task;

    internal static async Task<SandboxTerminal> AttachAsync(SandboxConnection connection, string sessionId, TerminalInfo info, long since, CancellationToken cancellationToken)
    {
        var terminal = new SandboxTerminal(connection, sessionId, info);
        await terminal.ConnectAsync(since, cancellationToken).ConfigureAwait(false);
        return terminal;
    }

    /// <summary>Reads output into <paramref name="buffer"/>; 0 when the terminal's process has exited and all output was read.</summary>
    /// <exception cref="SandboxException">The terminal is gone or the server cannot be reached.</exception>
    public async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        while (_pending.IsEmpty)
        {
            try
            {
                if (!await _output.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
                {
                    return 0;
                }
            }
            catch (ChannelClosedException e) when (e.InnerException is SandboxException inner)
            {
                throw inner;
            }
            _output.Reader.TryRead(out _pending);
        }
        var count = Math.Min(buffer.Length, _pending.Length);
        _pending[..count].CopyTo(buffer);
        _pending = _pending[count..];
        return count;
    }

    /// <summary>Reads output as text until <paramref name="predicate"/> holds for everything read so far, or the terminal exits.</summary>
    /// <returns>The text read (UTF-8; a character split across reads is kept whole).</returns>
    public async Task<string> ReadUntilAsync(Func<string, bool> predicate, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        var decoder = Encoding.UTF8.GetDecoder();
        var text = new StringBuilder();
        var bytes = new byte[4096];
        var chars = new char[Encoding.UTF8.GetMaxCharCount(bytes.Length)];
        while (!predicate(text.ToString()))
        {
            var read = await ReadAsync(bytes, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                break;
            }
            var decoded = decoder.GetChars(bytes, 0, read, chars, 0);
            text.Append(chars, 0, decoded);
        }
        return text.ToString();
    }

    /// <summary>Sends input bytes (keystrokes) to the terminal.</summary>
    public async Task WriteAsync(ReadOnlyMemory<byte> input, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        await SendAsync(input, WebSocketMessageType.Binary, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sends text (UTF-8) to the terminal, e.g. <c>"ls\r"</c> (a terminal's Enter is a carriage return).</summary>
    public Task WriteAsync(string text, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        return WriteAsync(Encoding.UTF8.GetBytes(text), cancellationToken);
    }

    /// <summary>Sets the terminal's size; the program in it gets SIGWINCH.</summary>
    /// <exception cref="SandboxException">Out of range (400) or the call failed.</exception>
    public async Task<TerminalInfo> ResizeAsync(int cols, int rows, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var info = await _connection.CallAsync(
            (api, ct) => api.ResizeTerminalAsync(_sessionId, Id, new ResizeTerminalRequest { Cols = cols, Rows = rows }, ct), cancellationToken).ConfigureAwait(false);
        Info = info;
        return info;
    }

    /// <summary>The terminal's recording so far: asciicast v2 text (a JSON header line, then one JSON event per line), playable with asciinema.</summary>
    public async Task<string> GetRecordingAsync(CancellationToken cancellationToken = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, $"v1/sessions/{Uri.EscapeDataString(_sessionId)}/terminals/{Uri.EscapeDataString(Id)}/recording");
        using var response = await _connection.SendAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken).ConfigureAwait(false);
        return await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A <see cref="Stream"/> over this terminal: reads are output, writes are input.</summary>
    public Stream AsStream() => new TerminalStream(this);

    /// <summary>Ends this attachment and leaves the terminal running on the server.</summary>
    public async Task DetachAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await DisconnectAsync().ConfigureAwait(false);
    }

    /// <summary>Closes the terminal on the server (never throws: failures are logged) and ends this attachment.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            await _connection.CallAsync((api, ct) => api.CloseTerminalAsync(_sessionId, Id, ct), CancellationToken.None).ConfigureAwait(false);
        }
        catch (SandboxException e) when (e.Status == System.Net.HttpStatusCode.NotFound)
        {
        }
        catch (SandboxException e)
        {
            Log.TerminalCloseFailed(_connection.Logger, e, Id, _sessionId);
        }
        await DisconnectAsync().ConfigureAwait(false);
    }

    private async Task DisconnectAsync()
    {
        await _closing.CancelAsync().ConfigureAwait(false);
        if (_socket is { State: WebSocketState.Open } socket)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "detached", timeout.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is WebSocketException or OperationCanceledException)
            {
            }
        }
        await _receiver.ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
        _socket?.Dispose();
        _output.Writer.TryComplete();
        _exited.TrySetResult(null);
    }

    private async Task ConnectAsync(long since, CancellationToken cancellationToken)
    {
        var socket = new ClientWebSocket();
        if (_connection.Options.ApiKey is { Length: > 0 } key)
        {
            socket.Options.SetRequestHeader("Authorization", "Bearer " + key);
        }
        var baseAddress = SandboxConnection.NormalizeBaseAddress(_connection.BaseAddress);
        var uri = new UriBuilder(new Uri(baseAddress, $"v1/sessions/{Uri.EscapeDataString(_sessionId)}/terminals/{Uri.EscapeDataString(Id)}/ws?since={since}"))
        {
            Scheme = baseAddress.Scheme == Uri.UriSchemeHttps ? "wss" : "ws",
        }.Uri;
        try
        {
            await socket.ConnectAsync(uri, cancellationToken).ConfigureAwait(false);
        }
        catch (WebSocketException e)
        {
            socket.Dispose();
            throw new SandboxException($"Could not attach to terminal {Id} of session {_sessionId}: {e.Message}", status: null, SandboxErrorCodes.StreamError, innerException: e);
        }
        var old = _socket;
        _socket = socket;
        old?.Dispose();
        _receiver = Task.Run(() => ReceiveLoopAsync(socket));
    }

    private async Task ReceiveLoopAsync(ClientWebSocket socket)
    {
        var buffer = new byte[64 * 1024];
        var reconnects = 0;
        try
        {
            while (true)
            {
                WebSocketReceiveResult result;
                try
                {
                    result = await socket.ReceiveAsync(buffer, _closing.Token).ConfigureAwait(false);
                }
                catch (WebSocketException) when (!_closing.IsCancellationRequested && reconnects < MaxReconnects)
                {
                    // A network blip: attach again from the offset reached.
                    reconnects++;
                    await Task.Delay(TimeSpan.FromMilliseconds(250 * reconnects), _closing.Token).ConfigureAwait(false);
                    await ConnectAsync(Offset, _closing.Token).ConfigureAwait(false);
                    return;
                }
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    if (socket.CloseStatus == (WebSocketCloseStatus)4404)
                    {
                        throw new SandboxException($"Terminal {Id} of session {_sessionId} no longer exists.", System.Net.HttpStatusCode.NotFound, SandboxErrorCodes.NotFound);
                    }
                    _output.Writer.TryComplete();
                    _exited.TrySetResult(null);
                    return;
                }
                if (result.MessageType == WebSocketMessageType.Binary)
                {
                    var chunk = buffer.AsSpan(0, result.Count).ToArray();
                    Interlocked.Add(ref _offset, chunk.Length);
                    await _output.Writer.WriteAsync(chunk, _closing.Token).ConfigureAwait(false);
                    continue;
                }
                using var text = new MemoryStream();
                text.Write(buffer, 0, result.Count);
                while (!result.EndOfMessage)
                {
                    result = await socket.ReceiveAsync(buffer, _closing.Token).ConfigureAwait(false);
                    text.Write(buffer, 0, result.Count);
                }
                var message = JsonSerializer.Deserialize(text.ToArray(), SandboxJsonContext.Default.TerminalMessage);
                switch (message?.Type)
                {
                    case TerminalMessageTypes.Attached:
                        Interlocked.Exchange(ref _offset, message.Offset ?? 0);
                        OutputDropped |= message.Dropped == true;
                        break;
                    case TerminalMessageTypes.Exit:
                        _exited.TrySetResult(message.ExitCode);
                        break;
                    case TerminalMessageTypes.Error:
                        throw new SandboxException($"Terminal {Id} of session {_sessionId} failed: {message.Message}", status: null, SandboxErrorCodes.StreamError,
                            detail: message.Message);
                }
            }
        }
        catch (OperationCanceledException) when (_closing.IsCancellationRequested)
        {
        }
        catch (SandboxException e)
        {
            _output.Writer.TryComplete(e);
            _exited.TrySetResult(null);
        }
        catch (Exception e) when (e is WebSocketException or JsonException)
        {
            _output.Writer.TryComplete(new SandboxException($"The connection to terminal {Id} of session {_sessionId} failed: {e.Message}", status: null,
                SandboxErrorCodes.StreamError, innerException: e));
            _exited.TrySetResult(null);
        }
    }

    private async Task SendAsync(ReadOnlyMemory<byte> payload, WebSocketMessageType type, CancellationToken cancellationToken)
    {
        await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var socket = _socket ?? throw new InvalidOperationException("Not attached.");
            await socket.SendAsync(payload, type, true, cancellationToken).ConfigureAwait(false);
        }
        catch (WebSocketException e)
        {
            throw new SandboxException($"Could not send to terminal {Id} of session {_sessionId}: {e.Message}", status: null, SandboxErrorCodes.StreamError, innerException: e);
        }
        finally
        {
            _sendLock.Release();
        }
    }

    private sealed class TerminalStream(SandboxTerminal terminal) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => terminal.Offset; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count).GetAwaiter().GetResult();
        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            terminal.ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => terminal.ReadAsync(buffer, cancellationToken);
        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer, offset, count).GetAwaiter().GetResult();
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            terminal.WriteAsync(buffer.AsMemory(offset, count), cancellationToken);
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
            new(terminal.WriteAsync(buffer, cancellationToken));
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
