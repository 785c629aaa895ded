namespace SandboxKit.TestEngines;

/// <summary>Reads the mount table of this process's mount namespace (the host's: engines only get their own network).</summary>
internal static class Mounts
{
    /// <summary>Mount points equal to or below any of <paramref name="roots"/>, deepest first.</summary>
    public static IReadOnlyList<string> Under(params string[] roots)
    {
        var found = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ');
            if (fields.Length < 5)
            {
                continue;
            }
            var mountPoint = Unescape(fields[4]);
            if (roots.Any(root => mountPoint == root || mountPoint.StartsWith(root + "/", StringComparison.Ordinal)))
            {
                found.Add(mountPoint);
            }
        }
        return found.OrderByDescending(m => m.Length).ToList();
    }

    /// <summary>mountinfo escapes space, tab, newline and backslash as \ooo octal.</summary>
    private static string Unescape(string field)
    {
        if (!field.Contains('\\', StringComparison.Ordinal))
        {
            return field;
        }
        var builder = new System.Text.StringBuilder(field.Length);
        for (var i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && i + 3 < field.Length)
            {
                builder.Append((char)Convert.ToInt32(field.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                builder.Append(field[i]);
            }
        }
        return builder.ToString();
    }
}
