using System.Globalization;

namespace SandboxKit.Agent;

/// <summary>Flags of <c>sandboxkit-agent serve</c>.</summary>
internal sealed class ServeOptions
{
    internal int Uid { get; private set; } = 1000;

    internal int Gid { get; private set; } = 1000;

    internal string Home { get; private set; } = "/home/sandbox";

    internal string Workdir { get; private set; } = "/workspace";

    internal string Socket { get; private set; } = "/run/sandboxkit/agent.sock";

    /// <summary>0: no warm shells; 1: one after each command (default); 2: also as soon as one is taken.</summary>
    internal int Warm { get; private set; } = 1;

    /// <summary>Parses the flags after <c>serve</c>; null (with <paramref name="error"/>) when they are wrong.</summary>
    internal static ServeOptions? Parse(ReadOnlySpan<string> args, out string? error)
    {
        var options = new ServeOptions();
        error = null;
        for (var i = 0; i < args.Length; i++)
        {
            var name = args[i];
            if (i + 1 >= args.Length)
            {
                error = $"{name} needs a value";
                return null;
            }
            var value = args[++i];
            switch (name)
            {
                case "--uid" when int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var uid):
                    options.Uid = uid;
                    break;
                case "--gid" when int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var gid):
                    options.Gid = gid;
                    break;
                case "--home" when value.StartsWith('/'):
                    options.Home = value;
                    break;
                case "--workdir" when value.StartsWith('/'):
                    options.Workdir = value;
                    break;
                case "--socket" when value.StartsWith('/'):
                    options.Socket = value;
                    break;
                case "--warm" when value is "0" or "1" or "2":
                    options.Warm = value[0] - '0';
                    break;
                default:
                    error = $"bad option {name} {value}";
                    return null;
            }
        }
        return options;
    }
}
