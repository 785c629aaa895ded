namespace SandboxKit.Contracts;

/// <summary>One entry of a sandbox directory, or the result of a file write.</summary>
public sealed record FileEntry
{
    /// <summary>Name within its directory.</summary>
    public required string Name { get; init; }

    /// <summary>Absolute path inside the sandbox.</summary>
    public required string Path { get; init; }

    /// <summary><c>file</c>, <c>dir</c>, <c>symlink</c> or <c>other</c>.</summary>
    public required string Type { get; init; }

    /// <summary>Size in bytes.</summary>
    public required long Size { get; init; }

    /// <summary>Permission bits (e.g. 420 for 0644).</summary>
    public int Mode { get; init; }

    /// <summary>Last modification time.</summary>
    public DateTimeOffset? ModifiedAt { get; init; }
}

/// <summary>Listing of a sandbox directory.</summary>
public sealed record FileList
{
    /// <summary>Absolute path of the directory.</summary>
    public required string Path { get; init; }

    /// <summary>Its entries, sorted by name.</summary>
    public required IReadOnlyList<FileEntry> Entries { get; init; }

    /// <summary>True when the directory has more entries than the listing limit (10 000) and the rest were left out.</summary>
    public bool Truncated { get; init; }
}
