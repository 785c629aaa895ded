using Microsoft.Extensions.Logging;

namespace SandboxKit.Client.Internal;

internal static partial class Log
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Debug, Message = "Sandbox session {SessionId} was already gone when disposed")]
    public static partial void SessionAlreadyGone(ILogger logger, string sessionId);

    [LoggerMessage(EventId = 2, Level = LogLevel.Warning,
        Message = "Could not delete sandbox session {SessionId} on dispose; the server will remove it when it idles out")]
    public static partial void DisposeDeleteFailed(ILogger logger, string sessionId, Exception exception);

    [LoggerMessage(EventId = 3, Level = LogLevel.Debug, Message = "Created sandbox session {SessionId}")]
    public static partial void SessionCreated(ILogger logger, string sessionId);

    [LoggerMessage(EventId = 4, Level = LogLevel.Debug, Message = "Reusing sandbox session {SessionId} of user {UserId}")]
    public static partial void SessionReused(ILogger logger, string sessionId, string userId);

    [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "Could not close terminal {TerminalId} of session {SessionId} on disposal; the session's end closes it")]
    public static partial void TerminalCloseFailed(ILogger logger, Exception exception, string terminalId, string sessionId);

    // Code interpreter: event ids 20-29.
    [LoggerMessage(EventId = 20, Level = LogLevel.Warning, Message = "Could not delete code context {ContextId} of session {SessionId} on disposal; the session's end removes it")]
    public static partial void CodeContextDeleteFailed(ILogger logger, Exception exception, string contextId, string sessionId);
}
