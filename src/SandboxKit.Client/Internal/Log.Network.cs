using Microsoft.Extensions.Logging;

namespace SandboxKit.Client.Internal;

// Events of the session's network features (egress, previews); ids 40-49.
internal static partial class Log
{
    [LoggerMessage(EventId = 40, Level = LogLevel.Warning,
        Message = "Could not revoke the preview URL of port {Port} of session {SessionId} on disposal; it ends when it expires or the session ends")]
    public static partial void PreviewRevokeFailed(ILogger logger, Exception exception, int port, string sessionId);
}
