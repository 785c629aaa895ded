using Microsoft.Extensions.Options;

namespace SandboxKit.Client.Internal;

/// <summary>Checks <see cref="SandboxClientOptions"/>; used by DI (on start) and by the direct constructors.</summary>
internal sealed class SandboxClientOptionsValidator : IValidateOptions<SandboxClientOptions>
{
    // Polly's timeout strategy accepts at most one day.
    private static readonly TimeSpan MaxTimeout = TimeSpan.FromDays(1);

    public ValidateOptionsResult Validate(string? name, SandboxClientOptions options)
    {
        var failures = GetFailures(options);
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    public static List<string> GetFailures(SandboxClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();
        var prefix = nameof(SandboxClientOptions);

        if (options.BaseAddress is null)
        {
            failures.Add($"{prefix}.{nameof(options.BaseAddress)} is required (e.g. http://127.0.0.1:5000).");
        }
        else if (!options.BaseAddress.IsAbsoluteUri)
        {
            failures.Add($"{prefix}.{nameof(options.BaseAddress)} must be an absolute URI; got '{options.BaseAddress}'.");
        }
        else if (options.BaseAddress.Scheme != Uri.UriSchemeHttp && options.BaseAddress.Scheme != Uri.UriSchemeHttps)
        {
            failures.Add($"{prefix}.{nameof(options.BaseAddress)} must use http or https; got '{options.BaseAddress.Scheme}'.");
        }
        else if (!string.IsNullOrEmpty(options.BaseAddress.Query) || !string.IsNullOrEmpty(options.BaseAddress.Fragment))
        {
            failures.Add($"{prefix}.{nameof(options.BaseAddress)} must not have a query or fragment; got '{options.BaseAddress}'.");
        }

        if (options.ApiKey is { } key && (key.Trim().Length != key.Length || key.Any(char.IsControl)))
        {
            failures.Add($"{prefix}.{nameof(options.ApiKey)} must not have surrounding whitespace or control characters.");
        }

        CheckTimeout(failures, nameof(options.AttemptTimeout), options.AttemptTimeout, allowZero: false);
        CheckTimeout(failures, nameof(options.TotalTimeout), options.TotalTimeout, allowZero: false);
        CheckTimeout(failures, nameof(options.DefaultCommandTimeout), options.DefaultCommandTimeout, allowZero: false);
        CheckTimeout(failures, nameof(options.CommandTimeoutMargin), options.CommandTimeoutMargin, allowZero: true);
        CheckTimeout(failures, nameof(options.FileTransferTimeout), options.FileTransferTimeout, allowZero: false);
        CheckTimeout(failures, nameof(options.RetryDelay), options.RetryDelay, allowZero: true);
        CheckTimeout(failures, nameof(options.MaxRetryAfter), options.MaxRetryAfter, allowZero: true);

        if (options.TotalTimeout < options.AttemptTimeout)
        {
            failures.Add($"{prefix}.{nameof(options.TotalTimeout)} ({options.TotalTimeout}) must not be shorter than {nameof(options.AttemptTimeout)} ({options.AttemptTimeout}).");
        }

        if (options.MaxRetryAttempts is < 0 or > 10)
        {
            failures.Add($"{prefix}.{nameof(options.MaxRetryAttempts)} must be between 0 and 10; got {options.MaxRetryAttempts}.");
        }

        return failures;

        void CheckTimeout(List<string> list, string property, TimeSpan value, bool allowZero)
        {
            if (value < TimeSpan.Zero || (!allowZero && value == TimeSpan.Zero) || value > MaxTimeout)
            {
                list.Add($"{prefix}.{property} must be {(allowZero ? "zero or more" : "more than zero")} and at most one day; got {value}.");
            }
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem; for the direct constructors.</summary>
    public static void ThrowIfInvalid(SandboxClientOptions options)
    {
        var failures = GetFailures(options);
        if (failures.Count > 0)
        {
            throw new ArgumentException("Invalid SandboxClientOptions: " + string.Join(" ", failures), nameof(options));
        }
    }
}
