namespace SandboxKit.Client.Internal;

/// <summary>Per-request settings carried in <see cref="HttpRequestMessage.Options"/> and read by the handler chain.</summary>
internal static class SandboxRequestOptions
{
    /// <summary>Header that makes a retried POST safe: the server answers a repeat with the first answer.</summary>
    public const string IdempotencyKeyHeader = "Idempotency-Key";

    /// <summary>Option name of <see cref="AttemptTimeout"/>; Refit's <c>[Property]</c> uses the name.</summary>
    public const string AttemptTimeoutName = "SandboxKit.AttemptTimeout";

    /// <summary>Option name of <see cref="NoRetry"/>.</summary>
    public const string NoRetryName = "SandboxKit.NoRetry";

    /// <summary>Overrides <see cref="SandboxClientOptions.AttemptTimeout"/> for one call (a command's timeout plus the
    /// margin); the total timeout of that call grows by the same amount.</summary>
    public static readonly HttpRequestOptionsKey<TimeSpan> AttemptTimeout = new(AttemptTimeoutName);

    /// <summary>When true the call is tried once: a health probe, or an upload whose body cannot be replayed.</summary>
    public static readonly HttpRequestOptionsKey<bool> NoRetry = new(NoRetryName);
}
