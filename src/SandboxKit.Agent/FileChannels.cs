using System.Text.Json;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>Error reply for a failure of file work.</summary>
internal static class Failures
{
    internal static (string Code, string Message) Describe(Exception e) => e switch
    {
        RequestException r => (r.Code, r.Message),
        SysException s => (Errno.ToCode(s.Errno), s.Message),
        _ => (ErrorCodes.Internal, $"{e.GetType().Name}: {e.Message}"),
    };
}

/// <summary><c>L D M T</c>: one task on a file worker, one final frame.</summary>
internal sealed class FileOpChannel : Channel
{
    private readonly FileWorkers _workers;
    private volatile bool _cancelled;

    internal FileOpChannel(FileWorkers workers, Connection connection, uint id, byte type, string path, FileRequest request)
        : base(connection, id)
    {
        _workers = workers;
        _workers.Submit(new OpTask(this, type, path, request));
    }

    internal override void OnKill(int signal) => _cancelled = true;

    internal override void OnConnectionLost()
    {
        _cancelled = true;
        Abandon();
    }

    private sealed class OpTask(FileOpChannel channel, byte type, string path, FileRequest request) : FileTask
    {
        private FileResult? _result;

        internal override void Execute()
        {
            _result = type switch
            {
                FrameType.ListDirectory => FileOps.List(path),
                FrameType.Stat => FileOps.StatResult(path),
                FrameType.MakeDirectory => MakeDirectory(),
                FrameType.Delete => Delete(),
                _ => throw RequestException.Invalid("unknown file operation"),
            };
        }

        private FileResult MakeDirectory()
        {
            FileOps.MakeDirectory(path, request.Parents ?? true, request.Mode is { } mode ? mode & 0xFFF : 0x1FF);
            return new FileResult();
        }

        private FileResult Delete()
        {
            FileOps.Delete(path, request.Recursive ?? false, () => channel._cancelled);
            return new FileResult();
        }

        public override void Complete()
        {
            if (channel.Ended)
            {
                return;
            }
            if (Failure is not null)
            {
                var (code, message) = Failures.Describe(Failure);
                channel.EndWithError(code, message);
                return;
            }
            var result = _result!;
            var bytes = JsonSerializer.SerializeToUtf8Bytes(result, ProtocolJsonContext.Default.FileResult);
            if (bytes.Length > FrameLimits.MaxPayload && result.Entries is { Count: > 0 } entries)
            {
                // A listing of long names: keep as many as fit in one frame.
                var keep = entries.Count;
                while (bytes.Length > FrameLimits.MaxPayload && keep > 0)
                {
                    keep = (int)(keep * (FrameLimits.MaxPayload / (double)bytes.Length) * 0.95);
                    result = result with { Entries = entries.Take(keep).ToList(), Truncated = true };
                    bytes = JsonSerializer.SerializeToUtf8Bytes(result, ProtocolJsonContext.Default.FileResult);
                }
            }
            if (bytes.Length > FrameLimits.MaxPayload)
            {
                channel.EndWithError(ErrorCodes.TooLarge, $"result of {bytes.Length} bytes exceeds the frame limit");
                return;
            }
            channel.End(FrameType.Result, result, ProtocolJsonContext.Default.FileResult);
        }
    }
}

/// <summary><c>G</c>: <c>o</c> chunks within credit (one read in flight on a worker at a time), then <c>f {size}</c>; <c>K</c> cancels.</summary>
internal sealed class ReadFileChannel : Channel
{
    private readonly FileWorkers _workers;
    private readonly string _path;
    private int _fd = -1;
    private bool _busy;
    private bool _eof;
    private bool _cancelled;
    private long _sent;
    private byte[]? _pending;
    private int _pendingOffset;

    internal ReadFileChannel(FileWorkers workers, Connection connection, uint id, string path)
        : base(connection, id)
    {
        _workers = workers;
        _path = path;
        _busy = true;
        _workers.Submit(new OpenTask(this));
    }

    private void Next()
    {
        if (Ended || _busy)
        {
            return;
        }
        if (_cancelled)
        {
            CloseFile();
            EndWithError(ErrorCodes.Invalid, "read cancelled");
            return;
        }
        if (_pending is not null)
        {
            _pendingOffset += SendData(FrameType.Stdout, _pending.AsSpan(_pendingOffset));
            if (_pendingOffset < _pending.Length)
            {
                return; // waits for credit
            }
            _pending = null;
        }
        if (_eof)
        {
            CloseFile();
            End(FrameType.Result, new FileResult { Size = _sent }, ProtocolJsonContext.Default.FileResult);
            return;
        }
        if (SendCredit <= 0)
        {
            return;
        }
        _busy = true;
        _workers.Submit(new ReadTask(this, (int)Math.Min(SendCredit, FrameLimits.MaxDataPayload)));
    }

    protected override void OnCreditAdded() => Next();

    internal override void OnKill(int signal)
    {
        _cancelled = true;
        Next();
    }

    internal override void OnConnectionLost()
    {
        _cancelled = true;
        Abandon();
        if (!_busy)
        {
            CloseFile();
        }
    }

    private void CloseFile() => Native.CloseQuietly(ref _fd);

    private void Failed(Exception e)
    {
        CloseFile();
        if (!Ended)
        {
            var (code, message) = Failures.Describe(e);
            EndWithError(code, message);
        }
    }

    private sealed class OpenTask(ReadFileChannel channel) : FileTask
    {
        private int _fd = -1;

        internal override void Execute() => _fd = FileOps.OpenForRead(channel._path, out _);

        public override void Complete()
        {
            channel._busy = false;
            channel._fd = _fd;
            if (Failure is not null)
            {
                channel.Failed(Failure);
                return;
            }
            if (channel.Ended)
            {
                channel.CloseFile();
                return;
            }
            channel.Next();
        }
    }

    private sealed class ReadTask(ReadFileChannel channel, int max) : FileTask
    {
        private readonly int _fd = channel._fd;
        private byte[] _data = [];

        internal override void Execute() => _data = FileOps.ReadChunk(_fd, max, channel._path);

        public override void Complete()
        {
            channel._busy = false;
            if (Failure is not null)
            {
                channel.Failed(Failure);
                return;
            }
            if (channel.Ended)
            {
                channel.CloseFile();
                return;
            }
            if (_data.Length == 0)
            {
                channel._eof = true;
            }
            else
            {
                channel._sent += _data.Length;
                channel._pending = _data;
                channel._pendingOffset = 0;
            }
            channel.Next();
        }
    }
}

/// <summary>
/// <c>W</c>: the data goes to a temporary file in the target directory (one worker task at a time, in order), renamed
/// over the target on <c>C</c>; <c>K</c>, <c>maxBytes</c>, a full disk or the end of the connection discard it (the
/// temporary is gone before the final frame is sent). Credit comes back as chunks are written.
/// </summary>
internal sealed class UploadChannel : Channel
{
    private readonly FileWorkers _workers;
    private readonly string _path;
    private readonly FileRequest _request;
    private readonly Queue<ReadOnlyMemory<byte>> _queued = new();
    private FileOps.Upload? _upload;
    private bool _busy;
    private bool _commitRequested;
    private bool _discarding;
    private (string Code, string Message)? _discardReply;

    internal UploadChannel(FileWorkers workers, Connection connection, uint id, string path, FileRequest request)
        : base(connection, id)
    {
        _workers = workers;
        _path = path;
        _request = request;
        _busy = true;
        _workers.Submit(new BeginTask(this));
    }

    internal override bool AcceptsData => true;

    internal override void OnData(ReadOnlyMemory<byte> data)
    {
        if (_commitRequested || _discarding)
        {
            ReturnCredit(data.Length, now: true);
            return;
        }
        _queued.Enqueue(data);
        Next();
    }

    internal override void OnCloseFrame()
    {
        _commitRequested = true;
        Next();
    }

    internal override void OnKill(int signal) => Discard((ErrorCodes.Invalid, "write cancelled"));

    internal override void OnConnectionLost()
    {
        Abandon();
        Discard(null);
    }

    private void Discard((string Code, string Message)? reply)
    {
        if (_discarding)
        {
            return;
        }
        _discarding = true;
        _discardReply = reply;
        _queued.Clear();
        Next();
    }

    private void Next()
    {
        if (_busy)
        {
            return;
        }
        if (_discarding)
        {
            if (_upload is { } upload)
            {
                _upload = null;
                _busy = true;
                _workers.Submit(new AbortTask(this, upload));
            }
            else
            {
                Discarded();
            }
            return;
        }
        if (_upload is null)
        {
            return;
        }
        if (_queued.Count > 0)
        {
            var chunks = new List<ReadOnlyMemory<byte>>();
            while (_queued.TryDequeue(out var chunk))
            {
                chunks.Add(chunk);
            }
            _busy = true;
            _workers.Submit(new WriteTask(this, _upload, chunks));
            return;
        }
        if (_commitRequested)
        {
            _busy = true;
            _workers.Submit(new CommitTask(this, _upload));
        }
    }

    private void Discarded()
    {
        if (_discardReply is { } reply && !Ended)
        {
            EndWithError(reply.Code, reply.Message);
        }
    }

    private void Failed(Exception e)
    {
        var (code, message) = Failures.Describe(e);
        if (!_discarding)
        {
            Discard((code, message));
        }
        else
        {
            Next();
        }
    }

    private sealed class BeginTask(UploadChannel channel) : FileTask
    {
        private FileOps.Upload? _upload;

        internal override void Execute()
        {
            var mode = channel._request.Mode;
            if (mode is < 0 or > 0xFFF)
            {
                throw RequestException.Invalid("'mode' must be 0..0o7777");
            }
            _upload = FileOps.BeginUpload(channel._path, mode, channel._request.Append ?? false, channel._request.Parents ?? true, channel._request.MaxBytes);
        }

        public override void Complete()
        {
            channel._busy = false;
            if (Failure is not null)
            {
                channel._upload = null;
                channel.Failed(Failure);
                return;
            }
            channel._upload = _upload;
            channel.Next();
        }
    }

    private sealed class WriteTask(UploadChannel channel, FileOps.Upload upload, List<ReadOnlyMemory<byte>> chunks) : FileTask
    {
        private int _written;

        internal override void Execute()
        {
            foreach (var chunk in chunks)
            {
                FileOps.WriteChunk(upload, chunk.Span, channel._request.MaxBytes);
                _written += chunk.Length;
            }
        }

        public override void Complete()
        {
            channel._busy = false;
            var total = 0;
            foreach (var chunk in chunks)
            {
                total += chunk.Length;
            }
            channel.ReturnCredit(total, now: channel._queued.Count == 0);
            if (Failure is not null)
            {
                channel.Failed(Failure);
                return;
            }
            channel.Next();
        }
    }

    private sealed class CommitTask(UploadChannel channel, FileOps.Upload upload) : FileTask
    {
        private long _size;

        internal override void Execute()
        {
            try
            {
                _size = FileOps.CommitUpload(upload);
            }
            catch
            {
                FileOps.AbortUpload(upload);
                throw;
            }
        }

        public override void Complete()
        {
            channel._busy = false;
            channel._upload = null;
            if (Failure is not null)
            {
                var (code, message) = Failures.Describe(Failure);
                channel._discarding = true;
                channel._discardReply = (code, message);
                channel.Discarded();
                return;
            }
            if (!channel.Ended)
            {
                channel.End(FrameType.Result, new FileResult { Size = _size }, ProtocolJsonContext.Default.FileResult);
            }
        }
    }

    private sealed class AbortTask(UploadChannel channel, FileOps.Upload upload) : FileTask
    {
        internal override void Execute() => FileOps.AbortUpload(upload);

        public override void Complete()
        {
            channel._busy = false;
            channel.Discarded();
        }
    }
}
