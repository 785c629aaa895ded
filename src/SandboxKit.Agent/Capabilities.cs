using System.Text;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// What the image offers (docs: "Capabilities"). A quick look along the session PATH gives paths at once (the early
/// hello, <c>probed: false</c>); the probe then runs a small script as the command user with the session environment
/// (bounded to 5 s) for the versions and IPython, and the complete result is kept for every later hello.
/// </summary>
internal sealed unsafe class CapabilityProbe : IChildOwner, IPollable
{
    internal const double TimeoutMs = 5000;
    private const int MaxOutput = 64 * 1024;

    private const string Script =
        "printf 'bash\\t%s\\n' \"$BASH_VERSION\"\n" +
        // One interpreter start for both facts; find_spec locates IPython without importing it (an import costs a
        // few hundred ms of CPU, which every new session would spend while the next one is being created).
        "if p=$(type -P python3); then\n" +
        "  v=$(\"$p\" -c 'import sys, importlib.util as u; print(\"%d.%d.%d\" % sys.version_info[:3], \"ipython\" if u.find_spec(\"IPython\") else \"\")' 2>/dev/null </dev/null)\n" +
        "  printf 'python3\\t%s\\t%s\\n' \"$p\" \"${v%% *}\"\n" +
        "  case \"$v\" in *\\ ipython) printf 'ipython\\n' ;; esac\n" +
        "fi\n" +
        "if p=$(type -P node); then printf 'node\\t%s\\t%s\\n' \"$p\" \"$(\"$p\" --version 2>/dev/null </dev/null)\"; fi\n" +
        "if p=$(type -P bash); then printf 'imagebash\\t%s\\t%s\\n' \"$p\" \"$(\"$p\" -c 'echo \"$BASH_VERSION\"' 2>/dev/null </dev/null)\"; fi\n";

    private readonly Supervisor _supervisor;
    private readonly byte[] _output = new byte[MaxOutput];
    private int _length;
    private int _fd = -1;
    private int _pid;
    private bool _done;
    private LoopTimer? _timeout;

    internal CapabilityProbe(Supervisor supervisor)
    {
        _supervisor = supervisor;
    }

    public bool Reaped { get; set; }

    /// <summary>Paths found along PATH without running anything (the hello before the probe is done).</summary>
    internal static ImageCapabilities Quick(string bash, string? path)
    {
        return new ImageCapabilities
        {
            Probed = false,
            Bash = new ToolInfo { Path = bash },
            Python3 = Find("python3", path) is { } python ? new ToolInfo { Path = python } : null,
            Node = Find("node", path) is { } node ? new ToolInfo { Path = node } : null,
            ImageBash = Find("bash", path) is { } imageBash ? new ToolInfo { Path = imageBash } : null,
        };
    }

    private static string? Find(string name, string? path)
    {
        foreach (var directory in (path ?? "").Split(':'))
        {
            if (directory.Length == 0)
            {
                continue;
            }
            var candidate = Session.CombinePath(directory, name);
            if (Native.StatPath(candidate, nofollow: false, out var st) == 0 && st.IsRegular && (st.Mode & 0x49) != 0)
            {
                return candidate;
            }
        }
        return null;
    }

    internal void Start()
    {
        var pipe = stackalloc int[2];
        if (Native.Pipe(pipe, 0) < 0)
        {
            Finish();
            return;
        }
        _fd = pipe[0];
        _ = Native.SetNonBlocking(_fd, 1);
        var spec = _supervisor.ShellSpec(Encoding.UTF8.GetBytes(Script), _supervisor.Session.Env.Copy(), _supervisor.Session.Workdir);
        spec.Fds.Add((_supervisor.DevNull, 0));
        spec.Fds.Add((pipe[1], 1));
        spec.Fds.Add((_supervisor.DevNull, 2));
        var outcome = _supervisor.Spawner.Spawn(spec, this);
        _ = Native.Close(pipe[1]);
        if (!outcome.Started)
        {
            Log.Warn($"capability probe: {outcome.Describe()}");
            Finish();
            return;
        }
        _pid = outcome.Pid;
        _supervisor.Loop.Add(_fd, Native.EpollIn, this);
        _timeout = _supervisor.Loop.Schedule(TimeoutMs, () =>
        {
            Log.Warn("capability probe timed out after 5 s");
            _supervisor.SignalTree(_pid, this, Native.SigKill);
            Finish();
        });
    }

    public void OnEvents(uint events) => ReadAvailable();

    private void ReadAvailable()
    {
        while (_fd >= 0)
        {
            nint n;
            fixed (byte* p = _output)
            {
                n = _length < MaxOutput ? Native.Read(_fd, p + _length, MaxOutput - _length) : 0;
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n <= 0)
            {
                CloseFd();
                return;
            }
            _length += (int)n;
        }
    }

    public void OnExit(in ChildExit exit)
    {
        ReadAvailable();
        Finish();
    }

    private void CloseFd()
    {
        if (_fd >= 0)
        {
            _supervisor.Loop.Remove(_fd);
            Native.CloseQuietly(ref _fd);
        }
    }

    private void Finish()
    {
        if (_done)
        {
            return;
        }
        _done = true;
        _timeout?.Cancel();
        CloseFd();
        _supervisor.CapabilitiesProbed(Parse(Encoding.UTF8.GetString(_output, 0, _length), _supervisor.BashPath));
    }

    internal static ImageCapabilities Parse(string text, string bash)
    {
        string? bashVersion = null;
        ToolInfo? python = null, node = null, imageBash = null;
        var ipython = false;
        foreach (var line in text.Split('\n'))
        {
            var fields = line.Split('\t');
            static string? Version(string[] f, int i) => f.Length > i && f[i].Trim().Length > 0 ? f[i].Trim().TrimStart('v') : null;
            switch (fields[0])
            {
                case "bash":
                    bashVersion = Version(fields, 1);
                    break;
                case "python3" when fields.Length > 1:
                    python = new ToolInfo { Path = fields[1], Version = Version(fields, 2) };
                    break;
                case "ipython":
                    ipython = true;
                    break;
                case "node" when fields.Length > 1:
                    node = new ToolInfo { Path = fields[1], Version = Version(fields, 2) };
                    break;
                case "imagebash" when fields.Length > 1:
                    imageBash = new ToolInfo { Path = fields[1], Version = Version(fields, 2) };
                    break;
            }
        }
        return new ImageCapabilities
        {
            Probed = true,
            Bash = new ToolInfo { Path = bash, Version = bashVersion },
            Python3 = python,
            IPython = ipython,
            Node = node,
            ImageBash = imageBash,
        };
    }
}
