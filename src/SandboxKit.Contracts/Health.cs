namespace SandboxKit.Contracts;

/// <summary>What <c>GET /healthz</c> reports: whether the container engine answers and the sandbox image is present.</summary>
public sealed record HealthReport
{
    /// <summary><c>healthy</c> when the engine answers and the image is present, otherwise <c>unhealthy</c>.</summary>
    public required string Status { get; init; }

    /// <summary>State of the container engine.</summary>
    public required EngineHealth Engine { get; init; }

    /// <summary>State of the default sandbox image.</summary>
    public required ImageHealth Image { get; init; }

    /// <summary>Server version.</summary>
    public required string Version { get; init; }
}

/// <summary>Container engine state as seen by the server.</summary>
public sealed record EngineHealth
{
    /// <summary>True when the engine answered a version request.</summary>
    public required bool Reachable { get; init; }

    /// <summary>Engine endpoint the server talks to.</summary>
    public required string Endpoint { get; init; }

    /// <summary>Engine version when reachable.</summary>
    public string? Version { get; init; }

    /// <summary>API version when reachable.</summary>
    public string? ApiVersion { get; init; }

    /// <summary>Runtimes the engine offers (e.g. <c>runc</c>, <c>runsc</c>).</summary>
    public IReadOnlyList<string>? Runtimes { get; init; }

    /// <summary>Why the engine is not reachable.</summary>
    public string? Error { get; init; }
}

/// <summary>Sandbox image state.</summary>
public sealed record ImageHealth
{
    /// <summary>Image reference the server creates sessions from.</summary>
    public required string Name { get; init; }

    /// <summary>True when the image exists on the engine.</summary>
    public required bool Present { get; init; }
}
