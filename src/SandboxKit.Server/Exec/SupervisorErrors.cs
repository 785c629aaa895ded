using SandboxKit.Agent.Protocol;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;
using SandboxKit.Server.Supervisor;

namespace SandboxKit.Server.Exec;

/// <summary>Turns a supervisor's <c>r</c> answer into a domain error (its message is the supervisor's, escaped and clipped).</summary>
internal static class SupervisorErrors
{
    public static SandboxError ToDomain(ErrorReply error, string? subject = null)
    {
        var message = SupervisorConnection.Sanitize(error.Message, 500);
        if (subject is not null && message.Length == 0)
        {
            message = subject;
        }
        return error.Code switch
        {
            ErrorCodes.NotFound => SandboxError.NotFound("Not found", message),
            ErrorCodes.IsDirectory => SandboxError.Invalid("Is a directory: " + message),
            ErrorCodes.NotDirectory => SandboxError.Invalid("Not a directory: " + message),
            ErrorCodes.PermissionDenied => SandboxError.Forbidden(message),
            ErrorCodes.Exists or ErrorCodes.NotEmpty or ErrorCodes.Busy or ErrorCodes.Conflict => SandboxError.Conflict("Conflict", message),
            ErrorCodes.TooLarge => SandboxError.TooLarge("Too large", message),
            ErrorCodes.NoSpace => SandboxError.NoSpace(message),
            ErrorCodes.NotInstalled => SandboxError.Unprocessable(ProblemCodes.LanguageUnavailable, "Language not available in this image", message),
            ErrorCodes.Invalid => SandboxError.Invalid(message),
            _ => SandboxError.Internal("The sandbox supervisor reported an error: " + message),
        };
    }

    /// <summary>The answer a channel ended with instead of the one expected.</summary>
    public static SandboxError Unexpected(SupervisorMessage message, string expected) =>
        message.Body is ErrorReply error
            ? ToDomain(error)
            : SandboxError.SupervisorUnavailable($"The sandbox supervisor answered '{FrameType.Name(message.Type)}' where {expected} was expected.");
}
