namespace SandboxKit.Server;

/// <summary>A configuration the server refuses to start with; <c>Program</c> prints its message as one line.</summary>
public sealed class StartupException(string message) : Exception(message);
