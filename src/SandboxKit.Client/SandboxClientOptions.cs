namespace SandboxKit.Client;

/// <summary>
/// Settings of a <see cref="SandboxClient"/>. Bind them from configuration
/// (<c>services.AddSandboxClient(configuration.GetSection("SandboxKit"))</c>), set them in code, or pass them to
/// <see cref="SandboxClient(SandboxClientOptions, Microsoft.Extensions.Logging.ILoggerFactory?)"/>.
/// </summary>
/// <remarks>
/// <para>Timeouts work in two tiers:</para>
/// <list type="bullet">
/// <item><description>Ordinary calls (sessions, files, processes): each attempt may take <see cref="AttemptTimeout"/>,
/// and the call with all its retries <see cref="TotalTimeout"/>.</description></item>
/// <item><description>Calls that run a command (<c>ExecuteAsync</c>, <c>RunCodeAsync</c>): an attempt may take the
/// command's own timeout (or <see cref="DefaultCommandTimeout"/> when it has none) plus
/// <see cref="CommandTimeoutMargin"/>, and the call that plus <see cref="TotalTimeout"/>.
/// A long command is therefore never cut short by the client.</description></item>
/// </list>
/// </remarks>
public sealed class SandboxClientOptions
{
    /// <summary>Configuration section name conventionally used for these options: <c>SandboxKit</c>.</summary>
    public const string SectionName = "SandboxKit";

    /// <summary>Absolute <c>http</c> or <c>https</c> address of the SandboxKit server, e.g. <c>http://127.0.0.1:5000</c>. Required.</summary>
    public Uri? BaseAddress { get; set; }

    /// <summary>API key sent as <c>Authorization: Bearer &lt;key&gt;</c>. Leave empty when the server has no keys.</summary>
    public string? ApiKey { get; set; }

    /// <summary>Longest time one attempt of an ordinary call may take. Default 30 seconds.</summary>
    public TimeSpan AttemptTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Longest time an ordinary call may take, retries and their delays included. Default 100 seconds.
    /// Command calls get this much on top of their own attempt timeout.</summary>
    public TimeSpan TotalTimeout { get; set; } = TimeSpan.FromSeconds(100);

    /// <summary>The command timeout assumed when a command call does not set one; match the server's default
    /// command timeout. Default 120 seconds.</summary>
    public TimeSpan DefaultCommandTimeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>Extra time a command call waits beyond the command's timeout, for the server to kill the process tree
    /// and answer. Default 30 seconds.</summary>
    public TimeSpan CommandTimeoutMargin { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How many times a call that failed transiently (connection refused or reset, 408, 429, 502, 503, 504,
    /// an attempt timeout) is tried again. 0 disables retries. Default 3.</summary>
    public int MaxRetryAttempts { get; set; } = 3;

    /// <summary>Base delay of the exponential, jittered back-off between retries when the server gives no
    /// <c>Retry-After</c>. Default 500 milliseconds.</summary>
    public TimeSpan RetryDelay { get; set; } = TimeSpan.FromMilliseconds(500);

    /// <summary>The longest <c>Retry-After</c> the client waits out by itself. A longer one is not retried: the call
    /// fails at once (for a 429 with <see cref="SandboxQuotaExceededException.RetryAfter"/> set). Default 30 seconds.</summary>
    public TimeSpan MaxRetryAfter { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Longest time one attempt of a file upload may take (the body is sent within the attempt).
    /// Default 10 minutes.</summary>
    public TimeSpan FileTransferTimeout { get; set; } = TimeSpan.FromMinutes(10);

    internal SandboxClientOptions Clone() => (SandboxClientOptions)MemberwiseClone();

    /// <summary>The attempt timeout of a call that runs a command with the given timeout.</summary>
    internal TimeSpan CommandAttemptTimeout(TimeSpan? commandTimeout) =>
        (commandTimeout ?? DefaultCommandTimeout) + CommandTimeoutMargin;
}
