namespace SandboxKit.TestEngines;

/// <summary>A private engine (or the Redis helper) could not be started, controlled or fully removed.</summary>
public sealed class PrivateEngineException : Exception
{
    /// <summary>Creates the exception.</summary>
    public PrivateEngineException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    public PrivateEngineException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and its cause.</summary>
    public PrivateEngineException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
