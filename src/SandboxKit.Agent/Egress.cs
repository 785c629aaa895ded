using System.Buffers.Binary;
using System.Text;
using SandboxKit.Agent.Protocol;

namespace SandboxKit.Agent;

/// <summary>
/// The egress relay (docs: "The egress relay"): with it on, the supervisor answers DNS on 127.0.0.1:53 (UDP and TCP)
/// by asking the server (<c>q</c>/<c>Q</c>), and accepts TCP connections on the configured ports of every local address,
/// each relayed on a channel it opens (<c>n</c>, then a byte stream as for <c>N</c>). The container still has no network:
/// what the sandbox sends reaches the supervisor only. With <c>catchAllDestinations</c>, a <c>local default</c> route
/// makes every address local, so connections to IP literals land on the listeners too (they see the dialed address
/// as their local one). Everything is bounded: 256 relayed connections (more are reset at accept), 256 DNS queries
/// waiting for the server (more are dropped: resolvers retry), 32 DNS-over-TCP clients, 4096 name mappings. Loop
/// thread only; the listeners outlive connections, what was in flight on a connection ends with it.
/// </summary>
internal sealed unsafe class EgressRelay
{
    internal const int MaxRelayed = 256;
    internal const int MaxPendingQueries = 256;
    internal const int MaxDnsClients = 32;
    internal const int MaxMappings = 4096;
    internal const int MaxPorts = 64;
    internal const int MaxDnsMessage = 16 * 1024;
    internal const double DnsTimeoutMs = 5000;
    internal const int MaxCaPemBytes = 256 * 1024;
    private const int MaxSystemBundleBytes = 16 << 20;

    internal const string CaDirectory = "/etc/sandboxkit";
    internal const string CaFileName = "ca-bundle.pem";
    internal const string CaPath = CaDirectory + "/" + CaFileName;
    internal const string SystemBundle = "/etc/ssl/certs/ca-certificates.crt";

    /// <summary>Where common TLS clients look for their trust store (OpenSSL, requests, node, curl, pip).</summary>
    internal static readonly string[] CaVariables = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "PIP_CERT"];

    private static readonly int[] DefaultPorts = [80, 443];

    private readonly Supervisor _supervisor;
    private readonly Dictionary<int, List<WatchedFd>> _listeners = [];
    private readonly HashSet<StreamChannel> _relayed = [];
    private readonly HashSet<DnsQueryChannel> _queries = [];
    private readonly HashSet<DnsTcpClient> _dnsClients = [];
    private readonly Dictionary<string, string> _names = new(StringComparer.Ordinal);
    private readonly Queue<string> _mappingOrder = new();
    private WatchedFd? _dnsUdp;
    private WatchedFd? _dnsTcp;
    private bool _routeV4;
    private bool _routeV6;
    private bool _secondLoopback;
    private bool _caInstalled;
    private long _serial;

    internal EgressRelay(Supervisor supervisor)
    {
        _supervisor = supervisor;
    }

    internal bool Enabled { get; private set; }

    /// <summary>The IPv4 catch-all route is in place.</summary>
    internal bool CatchingAll => _routeV4;

    // ---- configuration -------------------------------------------------------------------------------------

    /// <summary>Checks a configuration before anything of it is applied.</summary>
    internal static void Validate(EgressRelayConfig config)
    {
        if (!config.Enabled)
        {
            return;
        }
        var ports = config.TcpPorts ?? DefaultPorts;
        if (ports.Count > MaxPorts || ports.Any(p => p is < 1 or > 65535) || ports.Distinct().Count() != ports.Count)
        {
            throw RequestException.Invalid($"'tcpPorts' must be at most {MaxPorts} distinct ports 1-65535");
        }
        if (config.CaPem is { } pem && (Encoding.UTF8.GetByteCount(pem) > MaxCaPemBytes || pem.Contains('\0') ||
            !pem.Contains("-----BEGIN CERTIFICATE-----", StringComparison.Ordinal)))
        {
            throw RequestException.Invalid($"'caPem' must be PEM certificates (at most {MaxCaPemBytes} bytes)");
        }
        if (config.Mappings is { } mappings)
        {
            if (mappings.Count > MaxMappings)
            {
                throw RequestException.Invalid($"at most {MaxMappings} 'mappings'");
            }
            foreach (var mapping in mappings)
            {
                if (mapping is null || !IsName(mapping.Name) || !StreamChannel.TryParse(mapping.Address ?? "", out _))
                {
                    throw RequestException.Invalid("a mapping needs a host 'name' (1-255 printable characters) and an IP 'address'");
                }
            }
        }
    }

    private static bool IsName(string? name) => name is { Length: > 0 and <= 255 } && name.All(c => c is > ' ' and < '\u007f');

    /// <summary>
    /// Applies a validated configuration (the whole desired state: ports, DNS, catch-all, CA); what cannot be done
    /// goes into <paramref name="warnings"/> and the rest goes on. <paramref name="then"/> runs on the loop when it is
    /// all in place (the CA bundle needs the image's bundle, read as the user on a file worker first).
    /// </summary>
    internal void Apply(EgressRelayConfig config, List<string> warnings, Action then)
    {
        var serial = ++_serial;
        if (!config.Enabled)
        {
            Disable();
            then();
            return;
        }
        Enabled = true;
        if (config.Mappings is { } mappings)
        {
            foreach (var mapping in mappings)
            {
                AddMapping(mapping.Name, mapping.Address);
            }
        }
        try
        {
            SetUpDns(config.Dns, warnings);
            SetUpPorts(config.TcpPorts ?? DefaultPorts, warnings);
        }
        catch (SysException e)
        {
            warnings.Add($"listeners: {e.Message}"); // epoll_ctl refused one: the others are in place
        }
        SetUpRoutes(config.CatchAllDestinations, warnings);
        SetUpSecondLoopback(on: true, warnings);
        if (config.CaPem is not { } pem)
        {
            RemoveCa();
            then();
            return;
        }
        _supervisor.Files.Submit(new ReadBundleTask((bundle, failure) =>
        {
            if (serial == _serial)
            {
                if (failure is not null)
                {
                    warnings.Add($"the image's CA bundle {SystemBundle} could not be read ({Failures.Describe(failure).Message}): the bundle has the gateway's CA only");
                }
                InstallCa(bundle, pem, warnings);
            }
            then();
        }));
    }

    /// <summary>Off: listeners closed, relayed connections reset, queries dropped, the route and the CA removed.</summary>
    internal void Disable()
    {
        Enabled = false;
        CloseDns();
        foreach (var port in _listeners.Keys.ToArray())
        {
            CloseListeners(port);
        }
        foreach (var stream in _relayed.ToArray())
        {
            stream.Reset();
        }
        foreach (var query in _queries.ToArray())
        {
            query.Drop();
        }
        SetUpRoutes(catchAll: false, warnings: null);
        SetUpSecondLoopback(on: false, warnings: null);
        RemoveCa();
    }

    /// <summary>The supervisor ends: sockets go (the connection goes too, so no frames).</summary>
    internal void Shutdown()
    {
        CloseDns();
        foreach (var port in _listeners.Keys.ToArray())
        {
            CloseListeners(port);
        }
    }

    // ---- DNS ---------------------------------------------------------------------------------------------------

    private static Native.InetAddress Loopback(int port)
    {
        var address = new Native.InetAddress { Family = Native.AfInet, Port = port };
        address.Address[0] = 127;
        address.Address[3] = 1;
        return address;
    }

    private void SetUpDns(bool dns, List<string> warnings)
    {
        if (!dns)
        {
            CloseDns();
            return;
        }
        if (_dnsUdp is null)
        {
            var address = Loopback(53);
            var fd = Bind(&address, stream: false, out var error);
            if (fd < 0)
            {
                warnings.Add($"DNS on 127.0.0.1:53 (udp): {Errno.Describe(error)}{BindHint(error)}");
            }
            else
            {
                _dnsUdp = Watched(fd, _ => OnDatagrams());
            }
        }
        if (_dnsTcp is null)
        {
            var address = Loopback(53);
            var fd = Bind(&address, stream: true, out var error);
            if (fd < 0)
            {
                warnings.Add($"DNS on 127.0.0.1:53 (tcp): {Errno.Describe(error)}{BindHint(error)}");
            }
            else
            {
                _dnsTcp = Watched(fd, _ => AcceptDnsClients());
            }
        }
    }

    private void CloseDns()
    {
        _dnsUdp?.Close();
        _dnsUdp = null;
        _dnsTcp?.Close();
        _dnsTcp = null;
        foreach (var client in _dnsClients.ToArray())
        {
            client.Close();
        }
    }

    private static string BindHint(int error) => error switch
    {
        Errno.EACCES or Errno.EPERM => " (the supervisor needs NET_BIND_SERVICE)",
        Errno.EADDRINUSE => " (something in the sandbox listens there)",
        _ => "",
    };

    /// <summary>A bound socket (listening, for TCP); -1 with <paramref name="error"/>.</summary>
    private static int Bind(Native.InetAddress* address, bool stream, out int error)
    {
        var fd = Native.InetSocket(address->Family, stream ? 1 : 0);
        if (fd < 0)
        {
            error = -fd;
            return -1;
        }
        var rc = Native.InetBind(fd, address);
        if (rc == 0 && stream)
        {
            rc = Native.Listen(fd, 128);
        }
        if (rc < 0)
        {
            _ = Native.Close(fd);
            error = -rc;
            return -1;
        }
        error = 0;
        return fd;
    }

    /// <summary>The live connection new queries and relayed connections go to, while there is room for one more.</summary>
    private Connection? Server(bool query)
    {
        if (_supervisor.LiveConnection is not { } connection)
        {
            return null;
        }
        return query && _queries.Count >= MaxPendingQueries ? null : connection;
    }

    private readonly byte[] _datagram = new byte[MaxDnsMessage];

    private void OnDatagrams()
    {
        var buffer = _datagram;
        for (var round = 0; round < 32 && _dnsUdp is { Closed: false } socket; round++)
        {
            Native.InetAddress from;
            nint n;
            fixed (byte* p = buffer)
            {
                n = Native.InetRecvFrom(socket.Fd, p, buffer.Length, &from);
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n < 0)
            {
                Log.Debug($"dns recvfrom: {Errno.Describe((int)-n)}");
                return;
            }
            // Shorter than a header or longer than any query: not worth the server's time (no answer).
            if (n < 12 || n > buffer.Length || Server(query: true) is not { } connection)
            {
                continue;
            }
            var client = from;
            Ask(connection, "udp", buffer.AsSpan(0, (int)n), response =>
            {
                if (_dnsUdp is { Closed: false } udp)
                {
                    var to = client;
                    fixed (byte* p = response)
                    {
                        var sent = Native.InetSendTo(udp.Fd, p, response.Length, &to);
                        if (sent < 0)
                        {
                            Log.Debug($"dns sendto: {Errno.Describe((int)-sent)}");
                        }
                    }
                }
            }, done: null);
        }
    }

    /// <summary>Opens a <c>q</c> channel; <paramref name="answer"/> gets the server's response bytes (if any).</summary>
    private bool Ask(Connection connection, string transport, ReadOnlySpan<byte> packet, Action<byte[]> answer, Action? done)
    {
        var id = _supervisor.NextSupervisorChannel();
        if (id == 0)
        {
            return false;
        }
        var query = new DnsQueryChannel(connection, id, this, answer, done);
        _queries.Add(query);
        query.Send(new DnsQueryMessage { Transport = transport, Packet = Convert.ToBase64String(packet) });
        return true;
    }

    internal void QueryEnded(DnsQueryChannel query) => _queries.Remove(query);

    /// <summary>A name the server's DNS gave a synthetic address (from <c>Q</c> or the configuration).</summary>
    internal void AddMapping(string? name, string? address)
    {
        if (!IsName(name) || !StreamChannel.TryParse(address ?? "", out var parsed))
        {
            Log.Debug("ignoring a malformed DNS mapping");
            return;
        }
        var key = StreamChannel.Format(parsed);
        if (!_names.ContainsKey(key))
        {
            _mappingOrder.Enqueue(key);
        }
        _names[key] = name!;
        while (_names.Count > MaxMappings && _mappingOrder.TryDequeue(out var oldest))
        {
            _names.Remove(oldest);
        }
    }

    internal string? NameOf(string address) => _names.GetValueOrDefault(address);

    private void AcceptDnsClients()
    {
        for (var round = 0; round < 16 && _dnsTcp is { Closed: false } listener; round++)
        {
            Native.InetAddress local;
            var fd = Native.InetAccept(listener.Fd, &local);
            if (fd == -Errno.EAGAIN)
            {
                return;
            }
            if (fd < 0)
            {
                Log.Debug($"dns accept: {Errno.Describe(-fd)}");
                return;
            }
            if (_dnsClients.Count >= MaxDnsClients)
            {
                _ = Native.ResetClose(fd);
                continue;
            }
            _dnsClients.Add(new DnsTcpClient(this, _supervisor.Loop, fd));
        }
    }

    internal void ClientClosed(DnsTcpClient client) => _dnsClients.Remove(client);

    /// <summary>A DNS-over-TCP message (with its length prefix, as it came) to the server.</summary>
    internal bool AskOverTcp(ReadOnlySpan<byte> framed, Action<byte[]> answer, Action done) =>
        Server(query: true) is { } connection && Ask(connection, "tcp", framed, answer, done);

    // ---- TCP ---------------------------------------------------------------------------------------------------

    private void SetUpPorts(IReadOnlyList<int> ports, List<string> warnings)
    {
        foreach (var port in _listeners.Keys.ToArray())
        {
            if (!ports.Contains(port))
            {
                CloseListeners(port);
            }
        }
        var ipv6 = Ipv6Enabled();
        foreach (var port in ports)
        {
            if (_listeners.ContainsKey(port))
            {
                continue;
            }
            var sockets = new List<WatchedFd>(2);
            var any4 = new Native.InetAddress { Family = Native.AfInet, Port = port };
            var fd = Bind(&any4, stream: true, out var error);
            if (fd < 0)
            {
                warnings.Add($"TCP port {port} (IPv4): {Errno.Describe(error)}{BindHint(error)}");
            }
            else
            {
                sockets.Add(Listener(fd, port));
            }
            var any6 = new Native.InetAddress { Family = Native.AfInet6, Port = port };
            fd = Bind(&any6, stream: true, out error);
            if (fd >= 0)
            {
                sockets.Add(Listener(fd, port));
            }
            else if (ipv6)
            {
                warnings.Add($"TCP port {port} (IPv6): {Errno.Describe(error)}{BindHint(error)}");
            }
            _listeners[port] = sockets;
        }
    }

    private WatchedFd Listener(int fd, int port)
    {
        WatchedFd? listener = null;
        listener = Watched(fd, _ => Accept(listener!, port));
        return listener;
    }

    /// <summary>A listening socket in epoll; closed (and the error thrown) when epoll refuses it.</summary>
    private WatchedFd Watched(int fd, Action<uint> handler)
    {
        var watched = new WatchedFd(_supervisor.Loop, fd, handler);
        try
        {
            watched.Watch(Native.EpollIn);
        }
        catch (SysException)
        {
            watched.Close();
            throw;
        }
        return watched;
    }

    private void CloseListeners(int port)
    {
        if (_listeners.Remove(port, out var sockets))
        {
            foreach (var socket in sockets)
            {
                socket.Close();
            }
        }
    }

    private void Accept(WatchedFd listener, int port)
    {
        for (var round = 0; round < 32 && !listener.Closed; round++)
        {
            Native.InetAddress local;
            var fd = Native.InetAccept(listener.Fd, &local);
            if (fd == -Errno.EAGAIN)
            {
                return;
            }
            if (fd < 0)
            {
                Log.Debug($"relay accept on port {port}: {Errno.Describe(-fd)}");
                return;
            }
            var id = 0u;
            if (_relayed.Count >= MaxRelayed || Server(query: false) is not { } connection || (id = _supervisor.NextSupervisorChannel()) == 0)
            {
                _ = Native.ResetClose(fd); // no room, or no server to ask: the sandbox sees a reset at once
                continue;
            }
            var address = StreamChannel.Format(local);
            var channel = StreamChannel.Outbound(connection, id, fd,
                new OutboundConnection { Address = address, Port = local.Port, Name = NameOf(address) },
                closed: c => _relayed.Remove(c));
            if (!channel.Finished)
            {
                _relayed.Add(channel);
            }
        }
    }

    // ---- the catch-all route -------------------------------------------------------------------------------

    private static bool Ipv6Enabled() =>
        Native.ReadSmallFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6", 64) is { } text && Encoding.ASCII.GetString(text).Trim() == "0";

    private void SetUpRoutes(bool catchAll, List<string>? warnings)
    {
        if (catchAll)
        {
            _routeV4 = _routeV4 || AddRoute(Native.AfInet, "IPv4", warnings);
            if (Ipv6Enabled())
            {
                _routeV6 = _routeV6 || AddRoute(Native.AfInet6, "IPv6", warnings);
            }
            return;
        }
        if (_routeV4)
        {
            RemoveRoute(Native.AfInet, "IPv4");
            _routeV4 = false;
        }
        if (_routeV6)
        {
            RemoveRoute(Native.AfInet6, "IPv6");
            _routeV6 = false;
        }
    }

    /// <summary>The address the relay adds to lo: glibc's getaddrinfo with AI_ADDRCONFIG (node's default lookup,
    /// <c>getent ahosts</c>) finds no IPv4 address at all while 127.0.0.1 is the system's only one, so every name would
    /// fail to resolve for such clients. It is a loopback address like any in 127.0.0.0/8, outside the synthetic pool.</summary>
    private static readonly byte[] SecondLoopback = [127, 0, 0, 2];

    private void SetUpSecondLoopback(bool on, List<string>? warnings)
    {
        if (on == _secondLoopback)
        {
            return;
        }
        int rc;
        fixed (byte* address = SecondLoopback)
        {
            rc = Native.LoopbackAddress(address, on ? 1 : 0);
        }
        if (on)
        {
            _secondLoopback = rc == 0 || rc == -Errno.EEXIST;
            if (!_secondLoopback)
            {
                var why = -rc switch
                {
                    Errno.EPERM or Errno.EACCES => "the supervisor needs NET_ADMIN",
                    Errno.EOPNOTSUPP => "this runtime does not support it (gVisor)",
                    _ => Errno.Describe(-rc),
                };
                warnings?.Add($"127.0.0.2 on lo: {why}; names do not resolve for clients that ask getaddrinfo for AI_ADDRCONFIG (node's default)");
            }
            return;
        }
        _secondLoopback = false;
        if (rc < 0 && rc != -Errno.EADDRNOTAVAIL)
        {
            Log.Warn($"removing 127.0.0.2 from lo: {Errno.Describe(-rc)}");
        }
    }

    private static bool AddRoute(int family, string name, List<string>? warnings)
    {
        var rc = Native.RouteLocalDefault(family, 1);
        if (rc == 0 || rc == -Errno.EEXIST)
        {
            return true;
        }
        var why = -rc switch
        {
            Errno.EPERM or Errno.EACCES => "the supervisor needs NET_ADMIN",
            Errno.EOPNOTSUPP => "this runtime does not support routes (gVisor)",
            _ => Errno.Describe(-rc),
        };
        warnings?.Add($"catchAllDestinations ({name} local default route): {why}; only names the relay's DNS answered are caught");
        return false;
    }

    private static void RemoveRoute(int family, string name)
    {
        var rc = Native.RouteLocalDefault(family, 0);
        if (rc < 0 && rc != -Errno.ESRCH)
        {
            Log.Warn($"removing the {name} local default route: {Errno.Describe(-rc)}");
        }
    }

    // ---- the CA bundle -------------------------------------------------------------------------------------------

    private void InstallCa(byte[]? system, string pem, List<string> warnings)
    {
        var ca = Encoding.UTF8.GetBytes(pem);
        var content = new byte[(system?.Length ?? 0) + 1 + ca.Length + 1];
        var length = 0;
        if (system is { Length: > 0 })
        {
            system.CopyTo(content, 0);
            length = system.Length;
            if (system[^1] != (byte)'\n')
            {
                content[length++] = (byte)'\n';
            }
        }
        ca.CopyTo(content, length);
        length += ca.Length;
        if (ca.Length > 0 && ca[^1] != (byte)'\n')
        {
            content[length++] = (byte)'\n';
        }
        if (WriteCaFile(content.AsSpan(0, length)) is { } problem)
        {
            warnings.Add($"the CA bundle {CaPath} was not written ({problem}); TLS the gateway terminates will not be trusted");
            RemoveCa();
            return;
        }
        _caInstalled = true;
        var path = Encoding.UTF8.GetBytes(CaPath);
        _supervisor.ConfigureEnv(CaVariables.Select(v => new KeyValuePair<string, byte[]?>(v, path)).ToList());
    }

    /// <summary>Writes the bundle as root into the root-owned directory (a tmpfs of its own): a temporary file
    /// created exclusively, then renamed over the bundle, so readers see the old or the new one whole. Null, or what
    /// went wrong.</summary>
    private static string? WriteCaFile(ReadOnlySpan<byte> content)
    {
        int directory;
        fixed (byte* p = Native.Z(CaDirectory))
        {
            directory = Native.Open(p, Native.ORdOnly | Native.ODirectory, 0);
        }
        if (directory < 0)
        {
            return $"{CaDirectory}: {Errno.Describe(-directory)}";
        }
        var temporary = $".{CaFileName}.{Convert.ToHexStringLower(BitConverter.GetBytes(Native.MonotonicNs()))}";
        var fd = -1;
        try
        {
            Native.Stat st;
            if (Native.FStat(directory, &st) < 0 || st.Uid != 0 || (st.Mode & 0x12) != 0)
            {
                return $"{CaDirectory} is not a directory only root can write";
            }
            fixed (byte* p = Native.Z(temporary))
            {
                fd = Native.OpenAt(directory, p, Native.OWrOnly | Native.OCreat | Native.OExcl | Native.ONoFollow, 0x1A4);
            }
            if (fd < 0)
            {
                return $"{CaDirectory}: {Errno.Describe(-fd)}";
            }
            var rc = Native.WriteAll(fd, content);
            if (rc >= 0)
            {
                rc = Native.FChmod(fd, 0x1A4); // 0644 whatever the umask: every user's TLS clients read it
            }
            _ = Native.Close(fd);
            fd = -1;
            if (rc >= 0)
            {
                fixed (byte* from = Native.Z(temporary))
                fixed (byte* to = Native.Z(CaFileName))
                {
                    rc = Native.RenameAt(directory, from, directory, to);
                }
            }
            if (rc < 0)
            {
                fixed (byte* p = Native.Z(temporary))
                {
                    _ = Native.UnlinkAt(directory, p, 0);
                }
                return Errno.Describe(-rc);
            }
            return null;
        }
        finally
        {
            Native.CloseQuietly(ref fd);
            _ = Native.Close(directory);
        }
    }

    private void RemoveCa()
    {
        if (!_caInstalled)
        {
            return;
        }
        _caInstalled = false;
        fixed (byte* p = Native.Z(CaPath))
        {
            var rc = Native.UnlinkAt(Native.AtFdCwd, p, 0);
            if (rc < 0 && rc != -Errno.ENOENT)
            {
                Log.Warn($"removing {CaPath}: {Errno.Describe(-rc)}");
            }
        }
        // Only the variables that still point at the bundle: the session may have set its own since.
        var path = Encoding.UTF8.GetBytes(CaPath);
        var env = _supervisor.Session.Env;
        _supervisor.ConfigureEnv(CaVariables.Where(v => env.Get(v) is { } value && value.AsSpan().SequenceEqual(path))
            .Select(v => new KeyValuePair<string, byte[]?>(v, null)).ToList());
    }

    /// <summary>Reads the image's CA bundle as the user (the image decides what that path is; the supervisor never
    /// reads through it with its own rights). Missing: null.</summary>
    private sealed class ReadBundleTask(Action<byte[]?, Exception?> then) : FileTask
    {
        private byte[]? _bundle;

        internal override void Execute()
        {
            int fd;
            fixed (byte* p = Native.Z(SystemBundle))
            {
                fd = Native.Open(p, Native.ORdOnly | Native.ONoCtty | Native.ONonBlock, 0);
            }
            if (fd == -Errno.ENOENT)
            {
                return;
            }
            if (fd < 0)
            {
                throw new SysException(-fd, SystemBundle);
            }
            try
            {
                Native.Stat st;
                if (Native.FStat(fd, &st) < 0 || !st.IsRegular || st.Size > MaxSystemBundleBytes)
                {
                    throw new RequestException(ErrorCodes.Invalid, $"{SystemBundle} is not a regular file of at most {MaxSystemBundleBytes} bytes");
                }
                var buffer = new byte[st.Size];
                var length = 0;
                while (length < buffer.Length)
                {
                    nint n;
                    fixed (byte* b = buffer)
                    {
                        n = Native.Read(fd, b + length, buffer.Length - length);
                    }
                    if (n < 0)
                    {
                        throw new SysException((int)-n, SystemBundle);
                    }
                    if (n == 0)
                    {
                        break;
                    }
                    length += (int)n;
                }
                _bundle = buffer.AsSpan(0, length).ToArray();
            }
            finally
            {
                _ = Native.Close(fd);
            }
        }

        public override void Complete() => then(_bundle, Failure);
    }
}

/// <summary>
/// A <c>q</c> channel: one DNS query of the sandbox, asked of the server. Its <c>Q</c> is the only frame it gets; the
/// answer (if any) goes back to the asker, and the channel is done. Unanswered after 5 s, it is dropped (the resolver
/// asks again), as when the connection ends.
/// </summary>
internal sealed class DnsQueryChannel : Channel
{
    private readonly EgressRelay _relay;
    private readonly Action<byte[]> _answer;
    private readonly Action? _done;
    private LoopTimer? _timeout;

    internal DnsQueryChannel(Connection connection, uint id, EgressRelay relay, Action<byte[]> answer, Action? done)
        : base(connection, id)
    {
        _relay = relay;
        _answer = answer;
        _done = done;
        _timeout = connection.Loop.Schedule(EgressRelay.DnsTimeoutMs, () =>
        {
            _timeout = null;
            Drop();
        });
    }

    internal void Send(DnsQueryMessage query) => SendEvent(FrameType.DnsQuery, query, ProtocolJsonContext.Default.DnsQueryMessage, urgent: true);

    internal override void OnDnsAnswer(DnsAnswerMessage answer)
    {
        byte[]? response = null;
        if (answer.Packet is { } packet)
        {
            try
            {
                response = Convert.FromBase64String(packet);
            }
            catch (FormatException)
            {
                throw new ProtocolViolationException($"Q for channel {Id}: the packet is not base64");
            }
            if (response.Length is 0 or > 65535 + 2)
            {
                throw new ProtocolViolationException($"Q for channel {Id}: a response of {response.Length} bytes");
            }
        }
        if (answer.Mapping is { } mapping)
        {
            _relay.AddMapping(mapping.Name, mapping.Address);
        }
        End(response);
    }

    /// <summary>Forgotten without an answer.</summary>
    internal void Drop() => End(null);

    /// <summary>The channel is done; the response (if any) goes to the asker before it hears the query is over (a
    /// TCP client that already sent its EOF closes once nothing is pending).</summary>
    private void End(byte[]? response)
    {
        if (Ended)
        {
            return;
        }
        _timeout?.Cancel();
        _timeout = null;
        Abandon();
        _relay.QueryEnded(this);
        if (response is not null)
        {
            _answer(response);
        }
        _done?.Invoke();
    }

    internal override void OnConnectionLost() => End(null);
}

/// <summary>
/// A DNS-over-TCP client of the relay: length-prefixed queries, each asked on its own <c>q</c> (with its prefix),
/// answers written back as the server framed them. At most 16 of its queries wait at once (it is not read meanwhile);
/// idle for 30 s, or done after its EOF, it is closed.
/// </summary>
internal sealed unsafe class DnsTcpClient
{
    private const int MaxPending = 16;
    private const double IdleMs = 30_000;

    private readonly EgressRelay _relay;
    private readonly EventLoop _loop;
    private readonly WatchedFd _socket;
    private readonly byte[] _buffer = new byte[2 + EgressRelay.MaxDnsMessage];
    private readonly Queue<byte[]> _toWrite = new();
    private int _buffered;
    private int _writeOffset;
    private int _pending;
    private bool _eof;
    private bool _closed;
    private LoopTimer? _idle;

    internal DnsTcpClient(EgressRelay relay, EventLoop loop, int fd)
    {
        _relay = relay;
        _loop = loop;
        _socket = new WatchedFd(loop, fd, OnEvents);
        Touch();
        Update();
    }

    private void Touch()
    {
        _idle?.Cancel();
        _idle = _loop.Schedule(IdleMs, () =>
        {
            _idle = null;
            if (_pending == 0)
            {
                Close();
            }
            else
            {
                Touch();
            }
        });
    }

    private void OnEvents(uint events)
    {
        if (_closed)
        {
            return;
        }
        if ((events & (Native.EpollOut | Native.EpollErr | Native.EpollHup)) != 0)
        {
            Flush();
        }
        if (!_closed && !_eof && (events & (Native.EpollIn | Native.EpollHup | Native.EpollErr | Native.EpollRdHup)) != 0)
        {
            Read();
        }
        Update();
    }

    private void Read()
    {
        while (!_closed && !_eof && _pending < MaxPending && _buffered < _buffer.Length)
        {
            nint n;
            fixed (byte* p = _buffer)
            {
                n = Native.Read(_socket.Fd, p + _buffered, _buffer.Length - _buffered);
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n <= 0)
            {
                _eof = true;
                CloseIfDone();
                return;
            }
            Touch();
            _buffered += (int)n;
            while (_buffered >= 2 && _pending < MaxPending)
            {
                var length = BinaryPrimitives.ReadUInt16BigEndian(_buffer);
                if (length is < 12 or > EgressRelay.MaxDnsMessage)
                {
                    Close(); // not DNS, or larger than any query
                    return;
                }
                if (_buffered < 2 + length)
                {
                    break;
                }
                var framed = _buffer.AsSpan(0, 2 + length);
                if (_relay.AskOverTcp(framed, Answer, QueryDone))
                {
                    _pending++;
                }
                _buffer.AsSpan(2 + length, _buffered - 2 - length).CopyTo(_buffer);
                _buffered -= 2 + length;
            }
        }
    }

    private void Answer(byte[] response)
    {
        if (_closed)
        {
            return;
        }
        // The server frames TCP answers as the queries came: a length prefix that must match.
        if (response.Length < 2 || BinaryPrimitives.ReadUInt16BigEndian(response) != response.Length - 2)
        {
            Log.Warn("a DNS-over-TCP answer from the server without a matching length prefix was dropped");
            return;
        }
        _toWrite.Enqueue(response);
        Flush();
        Update();
    }

    private void QueryDone()
    {
        _pending--;
        if (!_closed)
        {
            CloseIfDone();
            if (!_closed)
            {
                Read(); // room again
                Update();
            }
        }
    }

    private void Flush()
    {
        while (!_closed && _toWrite.TryPeek(out var head))
        {
            nint n;
            fixed (byte* p = head)
            {
                n = Native.Send(_socket.Fd, p + _writeOffset, head.Length - _writeOffset);
            }
            if (n == -Errno.EAGAIN)
            {
                return;
            }
            if (n < 0)
            {
                Close();
                return;
            }
            _writeOffset += (int)n;
            if (_writeOffset == head.Length)
            {
                _toWrite.Dequeue();
                _writeOffset = 0;
            }
        }
        CloseIfDone();
    }

    private void CloseIfDone()
    {
        if (_eof && _pending == 0 && _toWrite.Count == 0)
        {
            Close();
        }
    }

    private void Update()
    {
        if (_closed)
        {
            return;
        }
        uint events = 0;
        if (!_eof && _pending < MaxPending)
        {
            events |= Native.EpollIn | Native.EpollRdHup;
        }
        if (_toWrite.Count > 0)
        {
            events |= Native.EpollOut;
        }
        _socket.Watch(events);
    }

    internal void Close()
    {
        if (_closed)
        {
            return;
        }
        _closed = true;
        _idle?.Cancel();
        _idle = null;
        _socket.Close();
        _toWrite.Clear();
        _relay.ClientClosed(this);
    }
}
