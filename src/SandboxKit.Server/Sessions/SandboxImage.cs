namespace SandboxKit.Server.Sessions;

/// <summary>The resolved default sandbox image and the allow-list.</summary>
internal sealed class SandboxImage(Microsoft.Extensions.Options.IOptions<SandboxOptions> options)
{
    public string Default { get; } = string.IsNullOrWhiteSpace(options.Value.Image) ? ServerInfo.DefaultImage : options.Value.Image!;

    public bool IsAllowed(string image) =>
        string.Equals(image, Default, StringComparison.Ordinal) || options.Value.AllowedImages.Contains(image, StringComparer.Ordinal);
}
