using System.Text;

namespace SandboxKit.Agent;

/// <summary>
/// An immutable set of environment variables. Names and values are bytes (keys are the names' bytes as Latin-1
/// characters, a lossless mapping), so values that are not UTF-8 survive every round trip.
/// </summary>
internal sealed class EnvSnapshot
{
    /// <summary>Variables whose presence makes a warm shell start differently from <c>bash -c</c> (docs: "Warm shells").</summary>
    private static readonly string[] WarmUnsafe = ["BASH_ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT", "SECONDS", "TMOUT"];

    internal EnvSnapshot(Dictionary<string, byte[]> variables)
    {
        Variables = variables;
        var safe = true;
        foreach (var name in variables.Keys)
        {
            if (name.StartsWith("BASH_FUNC_", StringComparison.Ordinal) || Array.IndexOf(WarmUnsafe, name) >= 0)
            {
                safe = false;
                break;
            }
        }
        WarmSafe = safe;
    }

    internal IReadOnlyDictionary<string, byte[]> Variables { get; }

    /// <summary>No variable that bash acts on at startup in a way the warm bootstrap could not reproduce.</summary>
    internal bool WarmSafe { get; }

    internal static string Key(ReadOnlySpan<byte> name) => Encoding.Latin1.GetString(name);

    internal static string Key(string utf16Name) => Encoding.Latin1.GetString(Encoding.UTF8.GetBytes(utf16Name));

    internal byte[]? Get(string key) => Variables.TryGetValue(key, out var value) ? value : null;

    internal string? GetString(string key) => Get(key) is { } value ? Encoding.UTF8.GetString(value) : null;

    /// <summary>A mutable copy, for per-command additions.</summary>
    internal Dictionary<string, byte[]> Copy() => new(Variables, StringComparer.Ordinal);

    internal bool SameAs(EnvSnapshot other)
    {
        if (ReferenceEquals(this, other))
        {
            return true;
        }
        if (Variables.Count != other.Variables.Count)
        {
            return false;
        }
        foreach (var (name, value) in Variables)
        {
            if (!other.Variables.TryGetValue(name, out var theirs) || !value.AsSpan().SequenceEqual(theirs))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary><c>NAME=VALUE</c> entries for execve.</summary>
    internal static List<byte[]> ToEntries(IReadOnlyDictionary<string, byte[]> variables)
    {
        var entries = new List<byte[]>(variables.Count);
        foreach (var (name, value) in variables)
        {
            var entry = new byte[name.Length + 1 + value.Length];
            Encoding.Latin1.GetBytes(name, entry);
            entry[name.Length] = (byte)'=';
            value.CopyTo(entry, name.Length + 1);
            entries.Add(entry);
        }
        return entries;
    }
}

/// <summary>
/// The session: working directory and exported variables shared by all commands (docs: "State"). Loop thread only.
/// Each change replaces the snapshot and bumps <see cref="Version"/>; a dump that changes nothing keeps both, so an
/// idle warm shell stays usable.
/// </summary>
internal sealed class Session
{
    /// <summary>Longest <c>name=value</c> kept: a longer one would make every later execve fail (MAX_ARG_STRLEN).</summary>
    internal const int MaxVariableBytes = 128 * 1024 - 1;

    /// <summary>bash (or the prelude) rewrites these in every shell; they keep their session values.</summary>
    private static readonly string[] NotPersisted = ["SHLVL", "_", "__SBK_BASH_ENV"];

    /// <summary>At most this many names set or unset through <c>S</c> are remembered (oldest forgotten first).</summary>
    internal const int MaxConfigured = 4096;

    private byte[] _lastListing = [];
    private List<KeyValuePair<string, byte[]>>? _lastParsed;
    private readonly Dictionary<string, (byte[]? Value, long Serial)> _configured = new(StringComparer.Ordinal);

    internal Session(string workdir, EnvSnapshot environment)
    {
        Workdir = workdir;
        Cwd = workdir;
        Env = environment;
    }

    /// <summary>The initial working directory (and the fallback for a deleted one).</summary>
    internal string Workdir { get; }

    /// <summary>The recorded working directory (see <see cref="CurrentCwd"/>).</summary>
    internal string Cwd { get; private set; }

    internal EnvSnapshot Env { get; private set; }

    /// <summary>Bumped on every change of <see cref="Cwd"/> or <see cref="Env"/>.</summary>
    internal long Version { get; private set; }

    /// <summary>Bumped on every <see cref="Configure"/>: a command records it at its start.</summary>
    internal long ConfigureSerial { get; private set; }

    /// <summary>
    /// <c>S setEnv/unsetEnv</c> (and the egress relay's variables): the state environment changes now (a null value
    /// removes the name). The change also wins over the state dump of every command that was already running: such a
    /// command started from the environment before it, and its dump would otherwise undo it when it ends.
    /// </summary>
    internal bool Configure(IReadOnlyList<KeyValuePair<string, byte[]?>> changes)
    {
        if (changes.Count == 0)
        {
            return false;
        }
        var variables = Env.Copy();
        var serial = ++ConfigureSerial;
        foreach (var (name, value) in changes)
        {
            if (value is null)
            {
                variables.Remove(name);
            }
            else
            {
                variables[name] = value;
            }
            _configured[name] = (value, serial);
        }
        while (_configured.Count > MaxConfigured)
        {
            var oldest = _configured.MinBy(e => e.Value.Serial).Key;
            _configured.Remove(oldest);
        }
        var next = new EnvSnapshot(variables);
        if (next.SameAs(Env))
        {
            return false;
        }
        Env = next;
        Version++;
        return true;
    }

    /// <summary>Where the next command starts: the recorded cwd, or the workdir (else /) when it no longer exists.</summary>
    internal string CurrentCwd()
    {
        if (Usable(Cwd))
        {
            return Cwd;
        }
        return Usable(Workdir) ? Workdir : "/";
    }

    /// <summary>A directory, or a path the supervisor may not look into (it has no CAP_DAC_OVERRIDE: a user's 0700
    /// directory is the user's business; the spawn's chdir, done as the user, decides).</summary>
    private static bool Usable(string path)
    {
        var rc = Native.StatPath(path, nofollow: false, out var st);
        return rc == -Errno.EACCES || (rc == 0 && st.IsDirectory);
    }

    /// <summary>The recorded cwd cannot be entered (the spawn's chdir failed): commands start in the workdir.</summary>
    internal void CwdUnusable()
    {
        if (Cwd != Workdir)
        {
            Cwd = Workdir;
            Version++;
        }
    }

    /// <summary>An absolute path for a request path (relative to the session cwd).</summary>
    internal string Resolve(string path) => path.StartsWith('/') ? path : CombinePath(CurrentCwd(), path);

    internal static string CombinePath(string directory, string path) =>
        path.StartsWith('/') ? path : directory.EndsWith('/') ? directory + path : directory + "/" + path;

    /// <summary>
    /// Adopts a complete state dump (<c>$PWD NUL export -p NUL</c>); anything incomplete or unparsable is ignored.
    /// <paramref name="baseEnv"/> is the environment the command started with; names in <paramref name="keep"/>
    /// (per-command overrides) keep their session values, and so do names configured (<see cref="Configure"/>) after
    /// <paramref name="configuredAt"/>, the command's start. Returns true when the state changed.
    /// </summary>
    internal bool Apply(ReadOnlySpan<byte> dump, EnvSnapshot baseEnv, IReadOnlyCollection<string> keep, bool keepCwd, long configuredAt = long.MaxValue)
    {
        var separator = dump.IndexOf((byte)0);
        if (separator < 0 || dump.Length < separator + 2 || dump[^1] != 0)
        {
            return false;
        }
        var cwdBytes = dump[..separator];
        var listing = dump[(separator + 1)..^1];
        List<KeyValuePair<string, byte[]>>? exported;
        if (_lastParsed is not null && listing.SequenceEqual(_lastListing))
        {
            exported = _lastParsed; // the usual case: nothing was exported or unset
        }
        else
        {
            exported = ExportParser.Parse(listing);
            if (exported is null)
            {
                Log.Warn($"unparsable state dump ignored ({listing.Length} bytes)");
                return false;
            }
            _lastListing = listing.ToArray();
            _lastParsed = exported;
        }

        var variables = new Dictionary<string, byte[]>(exported.Count + 4, StringComparer.Ordinal);
        foreach (var (name, value) in exported)
        {
            if (Array.IndexOf(NotPersisted, name) >= 0 || keep.Contains(name))
            {
                continue;
            }
            if (name.Length + 1 + value.Length > MaxVariableBytes)
            {
                Log.Warn($"not keeping oversized variable {name} ({name.Length + 1 + value.Length} bytes)");
                continue;
            }
            variables[name] = value;
        }
        foreach (var (name, value) in baseEnv.Variables)
        {
            // bash cannot see (or change) names that are not identifiers, nor SHLVL; variables overridden for this
            // command only keep their session value.
            if (Array.IndexOf(NotPersisted, name) >= 0 || keep.Contains(name) || !ExportParser.IsIdentifier(name))
            {
                variables[name] = value;
            }
        }

        foreach (var (name, (value, serial)) in _configured)
        {
            if (serial > configuredAt)
            {
                // Configured while the command ran: the command could not have seen it.
                if (value is null)
                {
                    variables.Remove(name);
                }
                else
                {
                    variables[name] = value;
                }
            }
        }

        var changed = false;
        var next = new EnvSnapshot(variables);
        if (!next.SameAs(Env))
        {
            Env = next;
            changed = true;
        }
        if (!keepCwd && cwdBytes.Length > 0)
        {
            var cwd = Encoding.UTF8.GetString(cwdBytes);
            if (cwd.StartsWith('/') && cwd != Cwd)
            {
                Cwd = cwd;
                changed = true;
            }
        }
        if (changed)
        {
            Version++;
        }
        return changed;
    }
}
