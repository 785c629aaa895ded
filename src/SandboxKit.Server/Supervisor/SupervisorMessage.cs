using SandboxKit.Agent.Protocol;

namespace SandboxKit.Server.Supervisor;

/// <summary>
/// One frame of a channel as its consumer sees it, already checked and parsed by the connection's read loop:
/// <see cref="Data"/> for <c>o</c>/<c>e</c>/<c>v</c> (consecutive chunks of one stream may arrive merged), otherwise the parsed
/// <see cref="Body"/> (<see cref="StartedEvent"/>, <see cref="ExitEvent"/>, <see cref="ErrorReply"/>, <see cref="FileResult"/>,
/// <see cref="JobResult"/>, <see cref="DroppedEvent"/>).
/// </summary>
internal readonly record struct SupervisorMessage(byte Type, ReadOnlyMemory<byte> Data, object? Body)
{
    public bool IsData => Type is FrameType.Stdout or FrameType.Stderr or FrameType.EventChunk;

    public bool IsFinal => FrameType.IsFinal(Type);
}

/// <summary>Settings of a connection, from <see cref="SandboxOptions"/>.</summary>
internal sealed record SupervisorConnectionSettings
{
    /// <summary>Flow-control window per channel and direction.</summary>
    public int Window { get; init; } = FrameLimits.DefaultWindow;

    /// <summary>How long the supervisor keeps keyed results.</summary>
    public TimeSpan KeyTtl { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>Longest wait for the supervisor's hello.</summary>
    public TimeSpan HelloTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Longest a single frame write may take before the connection is considered dead.</summary>
    public TimeSpan WriteTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>While requests are open, how long the supervisor may stay silent before it is pinged.</summary>
    public TimeSpan KeepaliveInterval { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a keepalive ping may go unanswered before the supervisor is taken for unresponsive and the connection closed.</summary>
    public TimeSpan KeepaliveTimeout { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>The bundle build the supervisor must report.</summary>
    public required string ExpectedBuild { get; init; }

    /// <summary>Who the connection is for, in log lines.</summary>
    public required string SessionLabel { get; init; }
}

/// <summary>The supervisor connection closed or cannot be opened; the message says why.</summary>
internal sealed class SupervisorUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The supervisor in the container is not the build this server brought.</summary>
internal sealed class SupervisorMismatchException(string message) : Exception(message);
