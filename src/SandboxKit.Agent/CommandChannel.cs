using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// The channel of an <c>R</c> (loop thread): <c>s</c>, output within credit, <c>x</c>. Stdin frames go to the
/// command's pipe and their credit comes back as the pipe takes them. A code run is briefly pending while its
/// source file is written; frames that arrive meanwhile are kept and applied when the command starts.
/// </summary>
internal sealed class CommandChannel : Channel
{
    private readonly Supervisor _supervisor;
    private List<ReadOnlyMemory<byte>>? _earlyStdin;
    private bool _earlyClose;
    private int? _earlySignal;

    internal CommandChannel(Supervisor supervisor, Connection connection, uint id)
        : base(connection, id)
    {
        _supervisor = supervisor;
    }

    internal Command? Command { get; private set; }

    /// <summary>A code run whose file is being written: the command does not exist yet.</summary>
    internal bool Pending { get; set; }

    internal override bool AcceptsData => true;

    /// <summary>The command started (cold or warm): <c>s</c>, then any frames that arrived before.</summary>
    internal void Attach(Command command)
    {
        Pending = false;
        Command = command;
        command.Channel = this;
        if (command.Stdin is { } stdin)
        {
            stdin.Consumed = (bytes, drained) => ReturnCredit(bytes, drained);
        }
        SendEvent(FrameType.Started, new StartedEvent { Pid = command.Pid, Warm = command.Warm }, ProtocolJsonContext.Default.StartedEvent);
        if (_earlyStdin is not null)
        {
            foreach (var data in _earlyStdin)
            {
                OnData(data);
            }
            _earlyStdin = null;
        }
        if (_earlyClose)
        {
            OnCloseFrame();
        }
        if (_earlySignal is { } signal)
        {
            command.Kill(signal);
        }
    }

    internal override void OnData(ReadOnlyMemory<byte> data)
    {
        if (Pending)
        {
            (_earlyStdin ??= []).Add(data);
            return;
        }
        if (Command?.Stdin is { } stdin)
        {
            stdin.Enqueue(data);
        }
        else
        {
            ReturnCredit(data.Length, now: true); // stdin is not a pipe: the bytes go nowhere
        }
    }

    internal override void OnCloseFrame()
    {
        if (Pending)
        {
            _earlyClose = true;
            return;
        }
        Command?.Stdin?.RequestClose();
    }

    internal override void OnKill(int signal)
    {
        if (Pending)
        {
            _earlySignal = signal;
            return;
        }
        Command?.Kill(signal);
    }

    protected override void OnCreditAdded() => Command?.ResumeOutput();

    internal void SendOutput(byte type, ReadOnlySpan<byte> data) => SendData(type, data);

    internal void SendExit(ExitEvent exit) => End(FrameType.Exited, exit, ProtocolJsonContext.Default.ExitEvent);

    /// <summary>A request error before or at the start (the command never ran).</summary>
    internal void Fail(string code, string message) => EndWithError(code, message);

    internal override void OnConnectionLost()
    {
        Abandon();
        Pending = false;
        if (Command is not { } command)
        {
            return;
        }
        command.Channel = null;
        if (command.Keyed is null)
        {
            // Unkeyed: nobody can ever get its result. Keyed ones run on and keep their output.
            if (command.Running)
            {
                command.Kill(Native.SigKill);
            }
        }
        command.ResumeOutput(); // read freely now (into the kept result, or just to let it end)
    }
}
