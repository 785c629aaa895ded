namespace SandboxKit.Agents;

/// <summary>
/// Limits applied to tool arguments (which come from a model and are untrusted) and to what goes back to the model.
/// The server enforces its own limits as well; these keep calls and model context small.
/// </summary>
public sealed class SandboxToolOptions
{
    /// <summary>Longest command text, in characters. Default 64 Ki.</summary>
    public int MaxCommandLength { get; set; } = 64 * 1024;

    /// <summary>Longest program for <c>run_code</c>, in characters. Default 256 Ki.</summary>
    public int MaxCodeLength { get; set; } = 256 * 1024;

    /// <summary>Longest sandbox path, in characters. Default 1024.</summary>
    public int MaxPathLength { get; set; } = 1024;

    /// <summary>Largest text <c>write_file</c> accepts, in UTF-8 bytes. Default 1 MiB.</summary>
    public int MaxWriteBytes { get; set; } = 1 << 20;

    /// <summary>Most bytes of a file <c>read_file</c> returns; a larger file comes back truncated. Default 64 KiB.</summary>
    public int MaxReadBytes { get; set; } = 64 * 1024;

    /// <summary>Most characters of stdout and of stderr returned to the model; the middle of longer output is dropped. Default 16 Ki.</summary>
    public int MaxOutputChars { get; set; } = 16 * 1024;

    /// <summary>Most directory entries <c>list_files</c> returns. Default 500.</summary>
    public int MaxListEntries { get; set; } = 500;

    /// <summary>Timeout of a command when the model gives none. Default 60 s.</summary>
    public TimeSpan DefaultTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Longest timeout a model may ask for. Default 10 min (the server's own maximum applies too).</summary>
    public TimeSpan MaxTimeout { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>
    /// Host directories from which <c>upload_file_from_host</c> may copy files. Empty (the default) turns uploads from the host off:
    /// the function is then not offered to the model, and refuses every call. Paths are compared after full normalisation and
    /// symbolic-link resolution, so a link inside an allowed directory that points outside it is refused.
    /// </summary>
    public IList<string> AllowedUploadDirectories { get; } = new List<string>();

    /// <summary>Largest file <c>upload_file_from_host</c> copies, in bytes. Default 10 MiB.</summary>
    public long MaxUploadBytes { get; set; } = 10L << 20;

    /// <summary>
    /// Attach the images <c>run_code</c> displays (matplotlib figures, PNG and JPEG results) to its result: MCP image blocks,
    /// Microsoft.Extensions.AI <c>DataContent</c>, Semantic Kernel <c>ImageContent</c>. Default true. The JSON result always
    /// carries each result's text form, and it is all that clients which take tool results as text send (never the base64);
    /// turn images off to keep them from the model altogether (the results then say why they were not attached).
    /// </summary>
    public bool AttachImages { get; set; } = true;

    /// <summary>Most images one <c>run_code</c> result attaches; later ones are listed but not attached. Default 4.</summary>
    public int MaxImages { get; set; } = 4;

    /// <summary>Largest image <c>run_code</c> attaches, in bytes; a larger one is listed but not attached. Default 2 MiB.</summary>
    public int MaxImageBytes { get; set; } = 2 << 20;

    /// <summary>True when <see cref="AllowedUploadDirectories"/> has at least one entry.</summary>
    public bool UploadsFromHostEnabled => AllowedUploadDirectories.Count > 0;

    internal void Validate()
    {
        Positive(MaxCommandLength, nameof(MaxCommandLength));
        Positive(MaxCodeLength, nameof(MaxCodeLength));
        Positive(MaxPathLength, nameof(MaxPathLength));
        Positive(MaxWriteBytes, nameof(MaxWriteBytes));
        Positive(MaxReadBytes, nameof(MaxReadBytes));
        Positive(MaxListEntries, nameof(MaxListEntries));
        Positive(MaxImages, nameof(MaxImages));
        Positive(MaxImageBytes, nameof(MaxImageBytes));
        if (MaxOutputChars < 64)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxOutputChars), MaxOutputChars, "MaxOutputChars must be at least 64.");
        }
        if (DefaultTimeout <= TimeSpan.Zero || MaxTimeout < DefaultTimeout)
        {
            throw new ArgumentOutOfRangeException(nameof(DefaultTimeout), DefaultTimeout, "DefaultTimeout must be positive and at most MaxTimeout.");
        }
        if (MaxUploadBytes <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxUploadBytes), MaxUploadBytes, "MaxUploadBytes must be positive.");
        }
    }

    private static void Positive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive.");
        }
    }
}
