using System.IO.Pipelines;
using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Tests.Unit;

/// <summary>
/// The supervisor's end of an in-memory connection, scripted by a test: it reads what the server sends and writes
/// whatever frames the test wants, well-formed or hostile. No engine, no container.
/// </summary>
internal sealed class FakeSupervisor : IAsyncDisposable
{
    private readonly Pipe _toServer = new(new PipeOptions(pauseWriterThreshold: 0));
    private readonly Pipe _toSupervisor = new(new PipeOptions(pauseWriterThreshold: 0));
    private readonly FrameDecoder _decoder = new();
    private readonly Stream _reader;
    private readonly Stream _writer;

    public FakeSupervisor()
    {
        ServerStream = new DuplexStream(_toServer.Reader.AsStream(), _toSupervisor.Writer.AsStream());
        _reader = _toSupervisor.Reader.AsStream();
        _writer = _toServer.Writer.AsStream();
    }

    /// <summary>The stream the server's connection uses.</summary>
    public Stream ServerStream { get; }

    public static SupervisorHello Hello(string build = "testbuild", uint nextChannel = 100, int protocol = FrameLimits.ProtocolVersion) => new()
    {
        Protocol = protocol,
        Version = "0.0.0-test",
        Build = build,
        Pid = 1,
        BootId = "boot",
        Connection = 1,
        NextChannel = nextChannel,
        Uid = 1000,
        Gid = 1000,
        Capabilities = new ImageCapabilities { Probed = true, Bash = new ToolInfo { Path = "/.sandboxkit/bin/bash", Version = "5.2.15" } },
    };

    /// <summary>The next frame the server sent.</summary>
    public async Task<Frame> ReadAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(10));
        while (true)
        {
            if (_decoder.TryRead(out var frame))
            {
                return frame;
            }
            var read = await _reader.ReadAsync(_decoder.GetReadBuffer(), cts.Token);
            if (read == 0)
            {
                throw new EndOfStreamException("The server closed the connection.");
            }
            _decoder.Advance(read);
        }
    }

    /// <summary>Reads the server's hello and answers with <paramref name="hello"/>.</summary>
    public async Task<ServerHello> AcceptAsync(SupervisorHello? hello = null)
    {
        var frame = await ReadAsync();
        Assert.That(frame.Type, Is.EqualTo(FrameType.Hello));
        var server = JsonSerializer.Deserialize(frame.Payload.Span, ProtocolJsonContext.Default.ServerHello)!;
        await SendJsonAsync(FrameType.HelloReply, 0, hello ?? Hello(), ProtocolJsonContext.Default.SupervisorHello);
        return server;
    }

    public Task SendAsync(byte type, uint channel, ReadOnlySpan<byte> payload) => WriteRawAsync(FrameEncoder.Encode(type, channel, payload));

    public Task SendJsonAsync<T>(byte type, uint channel, T body, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        SendAsync(type, channel, JsonSerializer.SerializeToUtf8Bytes(body, info));

    public async Task WriteRawAsync(byte[] bytes)
    {
        await _writer.WriteAsync(bytes);
        await _writer.FlushAsync();
    }

    /// <summary>Many frames in one write, the way a flood arrives.</summary>
    public async Task SendManyAsync(byte type, uint channel, byte[] payload, int count)
    {
        using var buffer = new MemoryStream();
        var frame = FrameEncoder.Encode(type, channel, payload);
        for (var i = 0; i < count; i++)
        {
            buffer.Write(frame);
        }
        await WriteRawAsync(buffer.ToArray());
    }

    public async ValueTask DisposeAsync()
    {
        await _toServer.Writer.CompleteAsync();
        await _toSupervisor.Reader.CompleteAsync();
    }

    private sealed class DuplexStream(Stream read, Stream write) : Stream
    {
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => read.ReadAsync(buffer, cancellationToken);
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await write.WriteAsync(buffer, cancellationToken);
            await write.FlushAsync(cancellationToken);
        }
        public override int Read(byte[] buffer, int offset, int count) => read.Read(buffer, offset, count);
        public override void Write(byte[] buffer, int offset, int count) => write.Write(buffer, offset, count);
        public override void Flush() => write.Flush();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                read.Dispose();
                write.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
