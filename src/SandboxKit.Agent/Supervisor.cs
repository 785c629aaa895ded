using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// <c>sandboxkit-agent serve</c>: PID 1 of a session container (docs/supervisor-protocol.md). Owns the event loop
/// and everything on it: the listening socket and the one connection, commands, warm shells, jobs and terminals,
/// keyed results, interpreter contexts, connections into the sandbox and the egress relay; the reaper and
/// file-worker threads post back to it.
/// </summary>
internal sealed unsafe partial class Supervisor
{
    internal const int StateFd = 100;
    internal const int WakeFd = 101;
    internal const int WarmScriptFd = 102;
    internal const int ColdScriptFd = 103;
    internal const int InlineScriptMax = 100 * 1024;
    internal const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    private const double SampleIntervalMs = 100;

    private static readonly string[] OomFiles = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"];

    private readonly ServeOptions _options;
    private readonly Dictionary<int, Command> _running = [];
    private readonly string _bootId;
    private readonly string _build;
    private readonly string _bundleDir;
    private readonly CodeDirectory _codeDirectory;
    private readonly string? _oomFile;
    private int _listenFd = -1;
    private int _terminationFd = -1;
    private Connection? _connection;
    private long _connections;
    private uint _highestChannel;
    private uint _nextSupervisorChannel = FrameType.SupervisorChannelBit;
    private ImageCapabilities _capabilities;
    private LoopTimer? _sampler;
    private int _logPosted;

    private Supervisor(ServeOptions options, string bundleDir, string build, EnvSnapshot environment, string workdir)
    {
        _options = options;
        _bundleDir = bundleDir;
        _build = build;
        Loop = new EventLoop();
        Reaper = new Reaper(Loop);
        // Root drops to the user for every process and file operation; a supervisor that already runs as the user
        // (a test outside a container) has nothing to drop.
        var becomeUser = Native.GetEuid() != options.Uid;
        Spawner = new Spawner(Reaper, options.Uid, options.Gid, becomeUser);
        Files = new FileWorkers(Loop, options.Uid, options.Gid, becomeUser);
        Session = new Session(workdir, environment);
        Warm = new WarmShells(this, options.Warm);
        Keys = new KeyedResults();
        Jobs = new JobTable();
        Relay = new EgressRelay(this);
        _codeDirectory = new CodeDirectory(options.Uid);
        _bootId = RandomHex(8);
        BashPath = Session.CombinePath(bundleDir, "bin/bash");
        _capabilities = CapabilityProbe.Quick(BashPath, environment.GetString("PATH"));
        foreach (var file in OomFiles)
        {
            if (Native.ReadSmallFile(file, 4096) is { } text && ParseOomKills(text) is not null)
            {
                _oomFile = file;
                break;
            }
        }
        fixed (byte* p = Native.Z("/dev/null"))
        {
            DevNull = SysException.Check(Native.Open(p, Native.ORdWr, 0), "/dev/null");
        }
    }

    internal EventLoop Loop { get; }

    internal Reaper Reaper { get; }

    internal Spawner Spawner { get; }

    internal FileWorkers Files { get; }

    internal Session Session { get; }

    internal WarmShells Warm { get; }

    internal KeyedResults Keys { get; }

    internal JobTable Jobs { get; }

    internal EgressRelay Relay { get; }

    /// <summary>The connection that said hello and is open, for channels the supervisor opens (egress).</summary>
    internal Connection? LiveConnection => _connection is { HelloDone: true, Closed: false } connection ? connection : null;

    /// <summary>A new id for a channel the supervisor opens (the high bit set, increasing for the container's life);
    /// 0 when they ran out.</summary>
    internal uint NextSupervisorChannel() => _nextSupervisorChannel == uint.MaxValue ? 0 : _nextSupervisorChannel++;

    internal int DevNull { get; }

    /// <summary>The bundle's static bash, which every command runs with.</summary>
    internal string BashPath { get; }

    internal bool ShuttingDown { get; private set; }

    // ---- start ------------------------------------------------------------------------------------------

    /// <summary>Runs the supervisor until SIGTERM; returns the exit code.</summary>
    internal static int Serve(ServeOptions options)
    {
        _ = Native.SetNonBlocking(2, 1); // a log line must never block the loop
        var root = Native.GetEuid() == 0;
        if (Native.SetNotDumpable() < 0)
        {
            Log.Warn("prctl(PR_SET_DUMPABLE, 0) failed");
        }
        if (root && Native.ClearGroups() is var groups && groups < 0)
        {
            Log.Warn($"setgroups([]): {Errno.Describe(-groups)}");
        }
        _ = Native.Umask(0x12); // 022
        // -1000 needs CAP_SYS_RESOURCE, which some hosts cannot grant: commands get 1000 either way.
        if (WriteFile("/proc/self/oom_score_adj", "-1000\n") < 0)
        {
            Log.Debug("oom_score_adj -1000 not permitted; keeping 0 (commands get 1000)");
        }

        var bundleDir = BundleDirectory();
        var build = Native.ReadSmallFile(Session.CombinePath(bundleDir, "BUILD"), 256) is { } b ? Encoding.UTF8.GetString(b).Trim() : "unknown";
        var environment = InitialEnvironment(options);
        var workdir = PrepareWorkdir(options, root);
        PrepareSocketDirectory(options.Socket, root);

        Supervisor supervisor;
        try
        {
            supervisor = new Supervisor(options, bundleDir, build, environment, workdir);
        }
        catch (SysException e)
        {
            Log.Error($"cannot start: {e.Message}");
            return 1;
        }
        return supervisor.Run();
    }

    private int Run()
    {
        fixed (byte* p = Native.Z(_options.Socket))
        {
            _listenFd = Native.ListenUnix(p, 16);
        }
        if (_listenFd < 0)
        {
            Log.Error($"cannot listen on {_options.Socket}: {Errno.Describe(-_listenFd)}");
            return 1;
        }
        Loop.Add(_listenFd, Native.EpollIn, new Listener(this));
        _terminationFd = SysException.Check(Native.EventFd(), "eventfd");
        Loop.Add(_terminationFd, Native.EpollIn, new Terminator(this));
        SysException.Check(Native.InstallSignalHandlers(_terminationFd), "sigaction");
        Log.Queued = OnLogQueued;
        Loop.BeforeWait = () => _connection?.FlushIfRequested();
        Reaper.Start();
        if (!File.Exists(BashPath))
        {
            Log.Error($"{BashPath} is missing: commands cannot run");
        }
        Log.Info($"sandboxkit-agent {BuildInfo.Version} (build {_build}) serving {_options.Socket} as pid {Native.GetPid()}; commands run as {_options.Uid}:{_options.Gid} in {Session.Workdir}");
        new CapabilityProbe(this).Start();
        Warm.RequestRefresh();
        Loop.Run();
        return 0;
    }

    private static string BundleDirectory()
    {
        var buffer = new byte[4096];
        nint n;
        fixed (byte* p = Native.Z("/proc/self/exe"))
        fixed (byte* b = buffer)
        {
            n = Native.ReadLinkAt(Native.AtFdCwd, p, b, buffer.Length);
        }
        var exe = n > 0 ? Encoding.UTF8.GetString(buffer, 0, (int)n) : "/.sandboxkit/sandboxkit-agent";
        var slash = exe.LastIndexOf('/');
        return slash > 0 ? exe[..slash] : "/";
    }

    private static int WriteFile(string path, string text)
    {
        int fd;
        fixed (byte* p = Native.Z(path))
        {
            fd = Native.Open(p, Native.OWrOnly, 0);
        }
        if (fd < 0)
        {
            return fd;
        }
        var rc = Native.WriteAll(fd, Encoding.ASCII.GetBytes(text));
        _ = Native.Close(fd);
        return rc;
    }

    /// <summary>The container's environment (byte-exact, from /proc/self/environ) minus SANDBOXKIT_*, with HOME, USER, LOGNAME and a PATH.</summary>
    private static EnvSnapshot InitialEnvironment(ServeOptions options)
    {
        var variables = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var raw = Native.ReadSmallFile("/proc/self/environ", 4 << 20) ?? [];
        foreach (var entry in raw.AsSpan().Split((byte)0))
        {
            var item = raw.AsSpan()[entry];
            var equals = item.IndexOf((byte)'=');
            if (equals <= 0)
            {
                continue;
            }
            var name = EnvSnapshot.Key(item[..equals]);
            if (name.StartsWith("SANDBOXKIT_", StringComparison.Ordinal))
            {
                continue;
            }
            variables[name] = item[(equals + 1)..].ToArray();
        }
        var user = UserName(options.Uid) ?? "sandbox";
        variables["HOME"] = Encoding.UTF8.GetBytes(options.Home);
        variables["USER"] = Encoding.UTF8.GetBytes(user);
        variables["LOGNAME"] = Encoding.UTF8.GetBytes(user);
        if (!variables.ContainsKey("PATH"))
        {
            variables["PATH"] = Encoding.ASCII.GetBytes(DefaultPath);
        }
        return new EnvSnapshot(variables);
    }

    private static string? UserName(int uid)
    {
        if (Native.ReadSmallFile("/etc/passwd", 4 << 20) is not { } passwd)
        {
            return null;
        }
        foreach (var line in Encoding.UTF8.GetString(passwd).Split('\n'))
        {
            var fields = line.Split(':');
            if (fields.Length > 2 && fields[0].Length > 0 && fields[2] == uid.ToString(System.Globalization.CultureInfo.InvariantCulture))
            {
                return fields[0];
            }
        }
        return null;
    }

    /// <summary>The workdir, chowned to the user when it is a fresh root-owned empty directory (a new volume on an image without it).</summary>
    private static string PrepareWorkdir(ServeOptions options, bool root)
    {
        var workdir = options.Workdir.Length > 1 ? options.Workdir.TrimEnd('/') : options.Workdir;
        if (Native.StatPath(workdir, nofollow: true, out var st) != 0)
        {
            fixed (byte* p = Native.Z(workdir))
            {
                if (Native.MkdirAt(Native.AtFdCwd, p, 0x1ED) == 0)
                {
                    _ = Native.StatPath(workdir, nofollow: true, out st);
                }
            }
        }
        if (!st.IsDirectory)
        {
            var fallback = Native.IsDirectory(options.Home) ? options.Home : "/";
            Log.Warn($"workdir {workdir} is not a directory; commands start in {fallback}");
            return fallback;
        }
        if (root && st.Uid == 0 && options.Uid != 0 && IsEmptyDirectory(workdir))
        {
            fixed (byte* p = Native.Z(workdir))
            {
                var rc = Native.Chown(p, options.Uid, options.Gid);
                if (rc < 0)
                {
                    Log.Warn($"chown {workdir}: {Errno.Describe(-rc)}");
                }
            }
        }
        return workdir;
    }

    private static bool IsEmptyDirectory(string path)
    {
        int fd;
        fixed (byte* p = Native.Z(path))
        {
            fd = Native.Open(p, Native.ORdOnly | Native.ODirectory | Native.ONoFollow, 0);
        }
        if (fd < 0)
        {
            return false;
        }
        try
        {
            var buffer = new byte[4096];
            while (true)
            {
                nint n;
                fixed (byte* b = buffer)
                {
                    n = Native.GetDents(fd, b, buffer.Length);
                }
                if (n <= 0)
                {
                    return n == 0;
                }
                for (var offset = 0; offset < n;)
                {
                    var length = buffer[offset + 16] | (buffer[offset + 17] << 8);
                    var name = buffer.AsSpan(offset + 19, length - 19);
                    var end = name.IndexOf((byte)0);
                    name = end >= 0 ? name[..end] : name;
                    offset += length;
                    if (!name.SequenceEqual("."u8) && !name.SequenceEqual(".."u8))
                    {
                        return false;
                    }
                }
            }
        }
        finally
        {
            _ = Native.Close(fd);
        }
    }

    private static void PrepareSocketDirectory(string socket, bool root)
    {
        var slash = socket.LastIndexOf('/');
        if (slash <= 0)
        {
            return;
        }
        var directory = socket[..slash];
        fixed (byte* p = Native.Z(directory))
        {
            _ = Native.MkdirAt(Native.AtFdCwd, p, 0x1C0);
            if (root)
            {
                _ = Native.Chown(p, 0, 0);
            }
            var rc = Native.Chmod(p, 0x1C0);
            if (rc < 0)
            {
                Log.Warn($"chmod 0700 {directory}: {Errno.Describe(-rc)}");
            }
        }
    }

    private static string RandomHex(int bytes)
    {
        var buffer = new byte[bytes];
        fixed (byte* p = buffer)
        {
            if (Native.GetRandom(p, bytes) < 0)
            {
                new Random().NextBytes(buffer);
            }
        }
        return Convert.ToHexStringLower(buffer);
    }

    // ---- connections ------------------------------------------------------------------------------------

    private sealed class Listener(Supervisor supervisor) : IPollable
    {
        public void OnEvents(uint events)
        {
            while (true)
            {
                var fd = Native.Accept(supervisor._listenFd);
                if (fd == -Errno.EAGAIN)
                {
                    return;
                }
                if (fd < 0)
                {
                    Log.Warn($"accept: {Errno.Describe(-fd)}");
                    return;
                }
                // The newest server wins: the previous connection ends (its unkeyed commands are killed).
                supervisor._connection?.Close("replaced by a new connection");
                supervisor._connections++;
                supervisor._connection = new Connection(supervisor.Loop, supervisor, fd, supervisor._connections);
            }
        }
    }

    private sealed class Terminator(Supervisor supervisor) : IPollable
    {
        public void OnEvents(uint events)
        {
            ulong count;
            _ = Native.Read(supervisor._terminationFd, (byte*)&count, sizeof(ulong));
            supervisor.Shutdown();
        }
    }

    internal void ConnectionEnded(Connection connection)
    {
        if (ReferenceEquals(_connection, connection))
        {
            _connection = null;
        }
    }

    private void Shutdown()
    {
        if (ShuttingDown)
        {
            return;
        }
        ShuttingDown = true;
        Log.Info("terminating: killing every command and job");
        Warm.DiscardIdle();
        KillContexts();
        Relay.Shutdown();
        foreach (var command in _running.Values.ToArray())
        {
            command.Kill(Native.SigKill);
        }
        _connection?.Flush();
        _connection?.Close("supervisor terminating");
        Loop.Stop();
    }

    private void OnLogQueued()
    {
        if (Interlocked.Exchange(ref _logPosted, 1) == 0)
        {
            Loop.Post(new LogPump(this));
        }
    }

    private sealed class LogPump(Supervisor supervisor) : ICompletion
    {
        public void Complete()
        {
            Interlocked.Exchange(ref supervisor._logPosted, 0);
            supervisor.SendLogs();
        }
    }

    private void SendLogs()
    {
        if (_connection is not { HelloDone: true, Closed: false } connection)
        {
            return; // kept (bounded) until a connection says hello
        }
        while (Log.TryTake(out var line))
        {
            connection.SendJson(FrameType.Log, 0, new SupervisorLog { Level = line.Level, Message = line.Message, Suppressed = line.Suppressed },
                ProtocolJsonContext.Default.SupervisorLog, urgent: false);
        }
    }

    internal void CapabilitiesProbed(ImageCapabilities capabilities)
    {
        _capabilities = capabilities;
        if (_connection is { HelloDone: true, Closed: false } connection)
        {
            connection.SendJson(FrameType.Capabilities, 0, capabilities, ProtocolJsonContext.Default.ImageCapabilities);
        }
    }

    // ---- frames -----------------------------------------------------------------------------------------

    /// <summary>Dispatches one frame of <paramref name="connection"/>; throws <see cref="ProtocolViolationException"/> for violations.</summary>
    internal void HandleFrame(Connection connection, Frame frame)
    {
        if (!connection.HelloDone)
        {
            if (frame.Type != FrameType.Hello || frame.Channel != 0)
            {
                throw new ProtocolViolationException($"first frame {FrameType.Name(frame.Type)} on channel {frame.Channel}, expected H on 0");
            }
            OnHello(connection, frame);
            return;
        }
        switch (frame.Type)
        {
            case FrameType.Ping:
                if (frame.Channel != 0)
                {
                    throw new ProtocolViolationException($"P on channel {frame.Channel}");
                }
                connection.Send(FrameType.Pong, 0, frame.Payload.Span, urgent: true);
                return;
            case FrameType.Run:
            case FrameType.WriteFile:
            case FrameType.ReadFile:
            case FrameType.ListDirectory:
            case FrameType.Delete:
            case FrameType.MakeDirectory:
            case FrameType.Stat:
            case FrameType.Job:
            case FrameType.Context:
            case FrameType.Connect:
            case FrameType.Configure:
                OpenChannel(connection, frame);
                return;
            case FrameType.DnsAnswer:
                OnDnsAnswer(connection, frame);
                return;
            case FrameType.Data:
            case FrameType.Close:
            case FrameType.Kill:
            case FrameType.Credit:
                ChannelFrame(connection, frame);
                return;
            case FrameType.Hello:
                throw new ProtocolViolationException("second H");
            default:
                throw new ProtocolViolationException($"unknown frame type {FrameType.Name(frame.Type)}");
        }
    }

    private void OnHello(Connection connection, Frame frame)
    {
        var hello = ParseHello(frame.Payload);
        if (hello.Window is < 4096 or > 16 * 1024 * 1024)
        {
            throw new ProtocolViolationException($"window {hello.Window} outside 4 KiB..16 MiB");
        }
        connection.Window = hello.Window;
        Keys.TtlMs = Math.Clamp(hello.KeyTtlMs, 0, 7L * 24 * 3600 * 1000);
        connection.HelloDone = true;
        connection.SendJson(FrameType.HelloReply, 0, new SupervisorHello
        {
            Protocol = FrameLimits.ProtocolVersion,
            Version = BuildInfo.Version,
            Build = _build,
            Pid = Native.GetPid(),
            BootId = _bootId,
            Connection = connection.Number,
            NextChannel = _highestChannel + 1,
            Uid = _options.Uid,
            Gid = _options.Gid,
            Capabilities = _capabilities,
        }, ProtocolJsonContext.Default.SupervisorHello);
        if (hello.Protocol != FrameLimits.ProtocolVersion)
        {
            Log.Warn($"server speaks protocol {hello.Protocol}, not {FrameLimits.ProtocolVersion}");
            connection.Flush();
            connection.Close("protocol mismatch");
            return;
        }
        Log.Info($"connection {connection.Number}: server {hello.ServerVersion ?? "?"}, window {hello.Window}");
        SendLogs();
    }

    /// <summary>
    /// The server's hello. Read field by field: the shared record's defaults (window 256 KiB, keyTtlMs 600 000,
    /// protocol 2) are C# initializers of init-only properties, which the source-generated deserializer overwrites
    /// with 0 when a field is absent; absent fields here get the documented defaults.
    /// </summary>
    private static ServerHello ParseHello(ReadOnlyMemory<byte> payload)
    {
        CheckJsonSyntax(payload);
        try
        {
            using var document = JsonDocument.Parse(payload);
            var root = document.RootElement;
            var defaults = new ServerHello();
            return new ServerHello
            {
                Protocol = root.TryGetProperty("protocol", out var protocol) ? protocol.GetInt32() : defaults.Protocol,
                Window = root.TryGetProperty("window", out var window) ? window.GetInt32() : FrameLimits.DefaultWindow,
                KeyTtlMs = root.TryGetProperty("keyTtlMs", out var ttl) ? ttl.GetInt64() : 600_000,
                ServerVersion = root.TryGetProperty("serverVersion", out var version) && version.ValueKind != JsonValueKind.Null ? version.GetString() : null,
            };
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new ProtocolViolationException($"bad ServerHello: {e.Message}");
        }
    }

    /// <summary>Control JSON (A): anything malformed is a violation.</summary>
    private static T ParseControl<T>(ReadOnlyMemory<byte> payload, JsonTypeInfo<T> info)
    {
        CheckJsonSyntax(payload);
        try
        {
            return JsonSerializer.Deserialize(payload.Span, info) ?? throw new ProtocolViolationException("null payload");
        }
        catch (JsonException e)
        {
            throw new ProtocolViolationException($"bad {typeof(T).Name}: {e.Message}");
        }
    }

    /// <summary>Request JSON: malformed JSON (or not an object) is a violation; a wrong field type is <c>r invalid</c>.</summary>
    private static T ParseRequest<T>(ReadOnlyMemory<byte> payload, JsonTypeInfo<T> info)
    {
        CheckJsonSyntax(payload);
        try
        {
            return JsonSerializer.Deserialize(payload.Span, info) ?? throw RequestException.Invalid("null request");
        }
        catch (JsonException e)
        {
            throw RequestException.Invalid($"bad request: {e.Message}");
        }
    }

    private static void CheckJsonSyntax(ReadOnlyMemory<byte> payload)
    {
        try
        {
            var reader = new Utf8JsonReader(payload.Span, new JsonReaderOptions { MaxDepth = 16 });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                throw new ProtocolViolationException("payload is not a JSON object");
            }
            reader.Skip();
            if (reader.Read())
            {
                throw new ProtocolViolationException("trailing data after the JSON object");
            }
        }
        catch (JsonException e)
        {
            throw new ProtocolViolationException($"malformed JSON: {e.Message}");
        }
    }

    private void OpenChannel(Connection connection, Frame frame)
    {
        if ((frame.Channel & FrameType.SupervisorChannelBit) != 0)
        {
            throw new ProtocolViolationException($"{FrameType.Name(frame.Type)} on channel {frame.Channel}: the high bit is the supervisor's");
        }
        if (frame.Channel <= _highestChannel)
        {
            throw new ProtocolViolationException($"{FrameType.Name(frame.Type)} on channel {frame.Channel}, not above {_highestChannel}");
        }
        _highestChannel = frame.Channel;
        var id = frame.Channel;
        try
        {
            switch (frame.Type)
            {
                case FrameType.Run:
                    OnRun(connection, id, ParseRequest(frame.Payload, ProtocolJsonContext.Default.RunRequest));
                    break;
                case FrameType.Job:
                    OnJob(connection, id, ParseRequest(frame.Payload, ProtocolJsonContext.Default.JobRequest));
                    break;
                case FrameType.Context:
                    OnContext(connection, id, ParseRequest(frame.Payload, ProtocolJsonContext.Default.ContextRequest));
                    break;
                case FrameType.Connect:
                    StreamChannel.Connect(connection, id, ParseRequest(frame.Payload, ProtocolJsonContext.Default.ConnectRequest));
                    break;
                case FrameType.Configure:
                    OnConfigure(connection, id, ParseRequest(frame.Payload, ProtocolJsonContext.Default.ConfigureRequest));
                    break;
                default:
                    OnFile(connection, id, frame.Type, ParseRequest(frame.Payload, ProtocolJsonContext.Default.FileRequest));
                    break;
            }
        }
        catch (RequestException e)
        {
            if (connection.Channels.TryGetValue(id, out var channel))
            {
                connection.Channels.Remove(id);
                _ = channel;
            }
            connection.SendError(id, e.Code, e.Message);
        }
    }

    /// <summary>A frame for an id nobody opened (neither the server, at or below its highest id, nor the supervisor).</summary>
    private bool NeverOpened(uint channel) =>
        channel == 0 || ((channel & FrameType.SupervisorChannelBit) != 0 ? channel >= _nextSupervisorChannel : channel > _highestChannel);

    private void ChannelFrame(Connection connection, Frame frame)
    {
        if (NeverOpened(frame.Channel))
        {
            throw new ProtocolViolationException($"{FrameType.Name(frame.Type)} for channel {frame.Channel}, never opened");
        }
        if (frame.Type == FrameType.Data && frame.Payload.Length > FrameLimits.MaxDataPayload)
        {
            throw new ProtocolViolationException($"I frame of {frame.Payload.Length} bytes");
        }
        CreditGrant? credit = null;
        if (frame.Type == FrameType.Credit)
        {
            credit = ParseControl(frame.Payload, ProtocolJsonContext.Default.CreditGrant);
            if (credit.Bytes is < 1 or > 16 * 1024 * 1024)
            {
                throw new ProtocolViolationException($"credit of {credit.Bytes} bytes");
            }
        }
        if (!connection.Channels.TryGetValue(frame.Channel, out var channel))
        {
            return; // ended (or refused) already: the frame raced with the final one
        }
        switch (frame.Type)
        {
            case FrameType.Data:
                if (!channel.AcceptsData)
                {
                    throw new ProtocolViolationException($"I for channel {frame.Channel}, which takes no data");
                }
                if (!channel.TakeReceiveCredit(frame.Payload.Length))
                {
                    throw new ProtocolViolationException($"I beyond the credit of channel {frame.Channel}");
                }
                channel.OnData(frame.Payload);
                break;
            case FrameType.Close:
                channel.OnCloseFrame();
                break;
            case FrameType.Kill:
                channel.OnKill(ParseSignal(frame.Payload));
                break;
            case FrameType.Credit:
                channel.AddCredit(credit!.Bytes);
                break;
        }
    }

    /// <summary><c>Q</c>: the server's answer on a <c>q</c> channel; for one that timed out meanwhile, ignored.</summary>
    private void OnDnsAnswer(Connection connection, Frame frame)
    {
        if ((frame.Channel & FrameType.SupervisorChannelBit) == 0 || NeverOpened(frame.Channel))
        {
            throw new ProtocolViolationException($"Q for channel {frame.Channel}, which the supervisor never opened");
        }
        var answer = ParseControl(frame.Payload, ProtocolJsonContext.Default.DnsAnswerMessage);
        if (connection.Channels.TryGetValue(frame.Channel, out var channel))
        {
            channel.OnDnsAnswer(answer);
        }
    }

    // ---- session settings -----------------------------------------------------------------------------------

    /// <summary><c>S</c>: environment changes at once, then the egress relay; <c>f</c> when both are in place.</summary>
    private void OnConfigure(Connection connection, uint id, ConfigureRequest request)
    {
        var changes = new List<KeyValuePair<string, byte[]?>>();
        foreach (var (name, value) in request.SetEnv ?? new Dictionary<string, string>())
        {
            if (!IsVariableName(name) || value is null || value.Contains('\0'))
            {
                throw RequestException.Invalid("'setEnv' must map variable names (no '=' or NUL) to strings without NUL");
            }
            var bytes = Encoding.UTF8.GetBytes(value);
            var key = EnvSnapshot.Key(name);
            if (key.Length + 1 + bytes.Length > Session.MaxVariableBytes)
            {
                throw RequestException.Invalid($"'{name}' is longer than {Session.MaxVariableBytes} bytes with its value");
            }
            changes.Add(new(key, bytes));
        }
        foreach (var name in request.UnsetEnv ?? [])
        {
            if (!IsVariableName(name))
            {
                throw RequestException.Invalid("'unsetEnv' must list variable names (no '=' or NUL)");
            }
            changes.Add(new(EnvSnapshot.Key(name), null));
        }
        if (request.Egress is { } egress)
        {
            EgressRelay.Validate(egress);
        }
        ConfigureEnv(changes);
        var channel = new ImmediateChannel(connection, id);
        var warnings = new List<string>();
        void Finish()
        {
            if (!channel.Ended)
            {
                channel.Finish(new ConfigureResult
                {
                    EgressEnabled = Relay.Enabled,
                    CatchingAllDestinations = Relay.CatchingAll,
                    Warnings = warnings.Count > 0 ? warnings : null,
                }, ProtocolJsonContext.Default.ConfigureResult);
            }
            foreach (var warning in warnings)
            {
                Log.Warn($"egress relay: {warning}");
            }
        }
        if (request.Egress is { } config)
        {
            Relay.Apply(config, warnings, Finish);
        }
        else
        {
            Finish();
        }
    }

    private static bool IsVariableName(string? name) => !string.IsNullOrEmpty(name) && !name.Contains('=') && !name.Contains('\0');

    /// <summary>Changes the session's state environment (null values unset); warm shells of the old state go.</summary>
    internal void ConfigureEnv(IReadOnlyList<KeyValuePair<string, byte[]?>> changes)
    {
        if (Session.Configure(changes))
        {
            Warm.OnStateChanged();
        }
    }

    /// <summary>K's signal; absent or invalid means SIGKILL (a K must always stop something).</summary>
    private static int ParseSignal(ReadOnlyMemory<byte> payload)
    {
        if (payload.IsEmpty)
        {
            return Native.SigKill;
        }
        try
        {
            var request = JsonSerializer.Deserialize(payload.Span, ProtocolJsonContext.Default.KillRequest);
            return request is { Signal: >= 1 and <= 64 } ? request.Signal : Native.SigKill;
        }
        catch (JsonException)
        {
            return Native.SigKill;
        }
    }

    // ---- files -------------------------------------------------------------------------------------------

    private void OnFile(Connection connection, uint id, byte type, FileRequest request)
    {
        if (string.IsNullOrEmpty(request.Path) || request.Path.Contains('\0'))
        {
            throw RequestException.Invalid("'path' must be a non-empty string without NUL");
        }
        if (request.MaxBytes is < 0)
        {
            throw RequestException.Invalid("'maxBytes' must not be negative");
        }
        var path = Session.Resolve(request.Path);
        switch (type)
        {
            case FrameType.WriteFile:
                _ = new UploadChannel(Files, connection, id, path, request);
                break;
            case FrameType.ReadFile:
                _ = new ReadFileChannel(Files, connection, id, path);
                break;
            default:
                _ = new FileOpChannel(Files, connection, id, type, path, request);
                break;
        }
    }

    // ---- process bookkeeping -----------------------------------------------------------------------------

    internal void CommandStarted(Command command)
    {
        _running[command.Pid] = command;
        _sampler ??= Loop.Schedule(SampleIntervalMs, SampleMemory);
    }

    internal void CommandExited(Command command) => _running.Remove(command.Pid);

    internal void CommandFinished(Command command)
    {
        if (command.Job is null)
        {
            Warm.RequestRefresh();
        }
    }

    /// <summary>Every 100 ms while commands run: the summed RSS of each tree (process group or session of the shell).</summary>
    private void SampleMemory()
    {
        _sampler = null;
        if (_running.Count == 0)
        {
            return;
        }
        var sums = new Dictionary<int, long>();
        foreach (var p in ProcFs.Snapshot())
        {
            if (p.State == 'Z')
            {
                continue;
            }
            var leader = _running.ContainsKey(p.SessionId) ? p.SessionId : _running.ContainsKey(p.ProcessGroup) ? p.ProcessGroup : 0;
            if (leader != 0)
            {
                sums[leader] = sums.GetValueOrDefault(leader) + ProcFs.ResidentBytes(p.Pid);
            }
        }
        foreach (var (leader, bytes) in sums)
        {
            _running[leader].RecordSample(bytes);
        }
        _sampler = Loop.Schedule(SampleIntervalMs, SampleMemory);
    }

    /// <summary>Signals a tree (see <see cref="ProcessTree"/>): SIGKILL is repeated while members are found; a
    /// catchable signal is re-sent for about 1 s to members that still have its default disposition (a child forked
    /// while it was delivered can miss it).</summary>
    internal void SignalTree(int leader, IChildOwner owner, int signal)
    {
        var found = ProcessTree.Signal(Reaper, leader, owner, signal);
        if (signal == Native.SigKill)
        {
            for (var pass = 0; pass < 3 && found > 0; pass++)
            {
                found = ProcessTree.Signal(Reaper, leader, owner, signal);
            }
            if (found > 0)
            {
                FollowUp(leader, owner, signal, [20, 100, 300, 1000, 2000], 0, missedOnly: false);
            }
            return;
        }
        FollowUp(leader, owner, signal, [50, 150, 550], 0, missedOnly: true);
    }

    private void FollowUp(int leader, IChildOwner owner, int signal, double[] delays, int index, bool missedOnly)
    {
        if (index >= delays.Length)
        {
            return;
        }
        Loop.Schedule(delays[index], () =>
        {
            var found = ProcessTree.Signal(Reaper, leader, owner, signal, missedOnly);
            if (missedOnly || found > 0)
            {
                FollowUp(leader, owner, signal, delays, index + 1, missedOnly);
            }
        });
    }

    internal long? ReadOomKills() => _oomFile is not null && Native.ReadSmallFile(_oomFile, 4096) is { } text ? ParseOomKills(text) : null;

    private static long? ParseOomKills(byte[] text)
    {
        foreach (var line in Encoding.ASCII.GetString(text).Split('\n'))
        {
            if (line.StartsWith("oom_kill ", StringComparison.Ordinal) &&
                long.TryParse(line.AsSpan(9).Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value))
            {
                return value;
            }
        }
        return null;
    }

    /// <summary>Removes a code run's source file on a file worker (as the user: the directory is the user's 0700 one,
    /// and the supervisor has no CAP_DAC_OVERRIDE), then continues on the loop.</summary>
    internal void RemoveCodeFile(Command command, Action then)
    {
        if (command.CodeFile is not { } name)
        {
            then();
            return;
        }
        command.CodeFile = null;
        Files.Submit(new RemoveCodeFileTask(_codeDirectory, name, then));
    }

    private void RemoveCodeFile(string name) => Files.Submit(new RemoveCodeFileTask(_codeDirectory, name, null));

    private sealed class RemoveCodeFileTask(CodeDirectory directory, string name, Action? then) : FileTask
    {
        internal override void Execute() => directory.Remove(name);

        public override void Complete() => then?.Invoke();
    }
}
