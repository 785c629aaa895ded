namespace SandboxKit.Contracts;

/// <summary>Paths inside a sandbox as the server reads them: relative paths are under <c>/workspace</c>.</summary>
public static class SandboxPath
{
    /// <summary>The sandbox's working directory, where relative paths start.</summary>
    public const string Workspace = "/workspace";

    /// <summary>
    /// The absolute, normalised form of <paramref name="path"/>: <c>.</c> and empty segments dropped, <c>..</c> applied
    /// (never above <c>/</c>). Purely textual: symbolic links inside the sandbox are the sandbox's business.
    /// </summary>
    /// <param name="path">An absolute path, or one relative to <see cref="Workspace"/>.</param>
    /// <returns>An absolute path such as <c>/workspace/data/a.txt</c>; <c>/</c> for the root.</returns>
    public static string Normalize(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var absolute = path.StartsWith('/') ? path : Workspace + "/" + path;
        var parts = new List<string>();
        foreach (var part in absolute.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (part == ".")
            {
                continue;
            }
            if (part == "..")
            {
                if (parts.Count > 0)
                {
                    parts.RemoveAt(parts.Count - 1);
                }
                continue;
            }
            parts.Add(part);
        }
        return "/" + string.Join('/', parts);
    }
}
