using System.Text;
using System.Text.Json;
using SandboxKit.Contracts;
using SandboxKit.Server.Agent;

namespace SandboxKit.Server.Exec;

/// <summary>
/// A command started detached: its agent channel is pumped in the background into a bounded buffer of output
/// events that callers read by cursor. The oldest events are dropped past the cap (and the reader is told).
/// </summary>
internal sealed class BackgroundProcess
{
    private readonly object _gate = new();
    private readonly LinkedList<(long Seq, CommandEvent Event, int Bytes)> _events = new();
    private readonly AgentChannel _channel;
    private readonly int _capBytes;
    private long _nextSeq = 1;
    private long _droppedThrough;
    private int _bufferedBytes;
    private long _stdoutBytes;
    private long _stderrBytes;

    public BackgroundProcess(string id, string command, AgentChannel channel, int capBytes, DateTimeOffset startedAt)
    {
        Id = id;
        Command = command;
        _channel = channel;
        _capBytes = capBytes;
        StartedAt = startedAt;
        Completion = Task.Run(PumpAsync);
    }

    public string Id { get; }
    public string Command { get; }
    public DateTimeOffset StartedAt { get; }
    public int? Pid { get; private set; }
    public ExecuteResult? Result { get; private set; }
    public Task Completion { get; }

    public ProcessInfo ToInfo() => new()
    {
        Id = Id,
        Command = Command,
        Status = Result is null ? "running" : "exited",
        Pid = Pid,
        StartedAt = StartedAt,
        Result = Result,
    };

    public ProcessOutput ReadSince(long cursor)
    {
        lock (_gate)
        {
            var events = _events.Where(e => e.Seq > cursor).Select(e => e.Event).ToList();
            return new ProcessOutput
            {
                Events = events,
                NextCursor = _nextSeq - 1,
                Dropped = cursor < _droppedThrough,
                Process = ToInfo(),
            };
        }
    }

    public Task SendStdinAsync(string? text, bool close, CancellationToken cancellationToken) =>
        SendStdinCoreAsync(text is null ? null : Encoding.UTF8.GetBytes(text), close, cancellationToken);

    public Task KillAsync(CancellationToken cancellationToken) =>
        Result is not null ? Task.CompletedTask : _channel.SendAsync(FrameType.Kill, "{\"signal\":9}"u8.ToArray(), cancellationToken);

    private async Task SendStdinCoreAsync(byte[]? data, bool close, CancellationToken cancellationToken)
    {
        if (data is { Length: > 0 })
        {
            for (var offset = 0; offset < data.Length; offset += 64 * 1024)
            {
                await _channel.SendAsync(FrameType.StdinData, data.AsMemory(offset, Math.Min(64 * 1024, data.Length - offset)), cancellationToken).ConfigureAwait(false);
            }
        }
        if (close)
        {
            await _channel.SendAsync(FrameType.StdinClose, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task PumpAsync()
    {
        var stdoutDecoder = Encoding.UTF8.GetDecoder();
        var stderrDecoder = Encoding.UTF8.GetDecoder();
        try
        {
            await foreach (var frame in _channel.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                switch (frame.Type)
                {
                    case FrameType.Started:
                        Pid = JsonSerializer.Deserialize(frame.Payload.Span, AgentJsonContext.Default.AgentStarted)?.Pid;
                        break;
                    case FrameType.Stdout:
                        _stdoutBytes += frame.Payload.Length;
                        Add(new CommandEvent { Type = CommandEventTypes.Stdout, Data = CommandService.Decode(stdoutDecoder, frame.Payload.Span) }, frame.Payload.Length);
                        break;
                    case FrameType.Stderr:
                        _stderrBytes += frame.Payload.Length;
                        Add(new CommandEvent { Type = CommandEventTypes.Stderr, Data = CommandService.Decode(stderrDecoder, frame.Payload.Span) }, frame.Payload.Length);
                        break;
                    case FrameType.Exited:
                        var exit = JsonSerializer.Deserialize(frame.Payload.Span, AgentJsonContext.Default.AgentExit) ?? new AgentExit { ExitCode = -1 };
                        Finish(exit.ExitCode, exit.TimedOut, exit.OomKilled, exit.DurationMs, exit.WorkingDirectory);
                        return;
                    case FrameType.Error:
                        Add(new CommandEvent { Type = CommandEventTypes.Error, Error = CommandService.ToProblem(frame).Detail }, 0);
                        Finish(-1, false, false, 0, null);
                        return;
                }
            }
            Finish(-1, false, false, 0, null);
        }
        catch (Exception e)
        {
            Add(new CommandEvent { Type = CommandEventTypes.Error, Error = e.Message }, 0);
            Finish(-1, false, false, 0, null);
        }
        finally
        {
            await _channel.DisposeAsync().ConfigureAwait(false);
        }
    }

    private void Finish(int exitCode, bool timedOut, bool oomKilled, double durationMs, string? cwd)
    {
        lock (_gate)
        {
            Result = new ExecuteResult
            {
                ExitCode = exitCode,
                Stdout = "",
                Stderr = "",
                TimedOut = timedOut,
                OomKilled = oomKilled,
                Truncated = _droppedThrough > 0,
                StdoutBytes = _stdoutBytes,
                StderrBytes = _stderrBytes,
                DurationMs = durationMs,
                WorkingDirectory = cwd,
            };
        }
    }

    private void Add(CommandEvent e, int bytes)
    {
        lock (_gate)
        {
            _events.AddLast((_nextSeq++, e, bytes));
            _bufferedBytes += bytes;
            while (_bufferedBytes > _capBytes && _events.First is { } first)
            {
                _droppedThrough = first.Value.Seq;
                _bufferedBytes -= first.Value.Bytes;
                _events.RemoveFirst();
            }
        }
    }
}
