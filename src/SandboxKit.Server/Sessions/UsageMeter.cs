using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using SandboxKit.Contracts;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Usage per tenant (sessions, commands, command time, output bytes), for <c>GET /v1/usage</c>, the log and
/// <see cref="System.Diagnostics.Metrics"/> (meter <c>SandboxKit.Server</c>, for OpenTelemetry or dotnet-counters).
/// </summary>
internal sealed class UsageMeter : IDisposable
{
    public const string MeterName = "SandboxKit.Server";
    private readonly ConcurrentDictionary<string, Counters> _tenants = new(StringComparer.Ordinal);
    private readonly Meter _meter = new(MeterName, ServerInfo.Version);
    private readonly Counter<long> _sessions;
    private readonly Counter<long> _commands;
    private readonly Histogram<double> _duration;
    private readonly Counter<long> _outputBytes;
    private readonly Counter<double> _cpuSeconds;
    private readonly Histogram<long> _peakMemory;
    private readonly DateTimeOffset _since;
    private readonly ILogger<UsageMeter> _logger;

    public UsageMeter(TimeProvider time, ILogger<UsageMeter> logger)
    {
        _since = time.GetUtcNow();
        _logger = logger;
        _sessions = _meter.CreateCounter<long>("sandboxkit.sessions.created", description: "Sessions created");
        _commands = _meter.CreateCounter<long>("sandboxkit.commands", description: "Commands finished");
        _duration = _meter.CreateHistogram<double>("sandboxkit.command.duration", unit: "ms", description: "Command duration");
        _outputBytes = _meter.CreateCounter<long>("sandboxkit.command.output", unit: "By", description: "Bytes of command output");
        _cpuSeconds = _meter.CreateCounter<double>("sandboxkit.command.cpu", unit: "s", description: "CPU time of command process trees (user + system)");
        _peakMemory = _meter.CreateHistogram<long>("sandboxkit.command.peak_memory", unit: "By", description: "Peak memory of command process trees");
    }

    public void SessionCreated(string tenant)
    {
        Interlocked.Increment(ref For(tenant).SessionsCreated);
        _sessions.Add(1, new KeyValuePair<string, object?>("tenant", tenant));
    }

    public void CommandFinished(Session session, ExecuteResult result)
    {
        var c = For(session.Tenant);
        Interlocked.Increment(ref c.Commands);
        if (result.TimedOut)
        {
            Interlocked.Increment(ref c.TimedOut);
        }
        Interlocked.Add(ref c.DurationMicros, (long)(result.DurationMs * 1000));
        Interlocked.Add(ref c.OutputBytes, result.StdoutBytes + result.StderrBytes);
        var cpuMs = result.CpuUserMs + result.CpuSystemMs;
        Interlocked.Add(ref c.CpuMicros, (long)(cpuMs * 1000));
        long peak;
        while ((peak = Interlocked.Read(ref c.PeakMemoryBytes)) < result.PeakMemoryBytes
            && Interlocked.CompareExchange(ref c.PeakMemoryBytes, result.PeakMemoryBytes, peak) != peak)
        {
        }
        var tag = new KeyValuePair<string, object?>("tenant", session.Tenant);
        _commands.Add(1, tag);
        _duration.Record(result.DurationMs, tag);
        _outputBytes.Add(result.StdoutBytes + result.StderrBytes, tag);
        _cpuSeconds.Add(cpuMs / 1000, tag);
        _peakMemory.Record(result.PeakMemoryBytes, tag);
        _logger.LogInformation(
            "command tenant={Tenant} user={User} session={Session} exit={ExitCode} durationMs={DurationMs:0.0} cpuMs={CpuMs:0.0} peakMemoryBytes={PeakMemoryBytes} stdoutBytes={StdoutBytes} stderrBytes={StderrBytes} timedOut={TimedOut} oomKilled={OomKilled}",
            session.Tenant, session.UserId, session.Id, result.ExitCode, result.DurationMs, cpuMs, result.PeakMemoryBytes, result.StdoutBytes, result.StderrBytes, result.TimedOut, result.OomKilled);
    }

    /// <summary>An egress decision of the gateway for one of the tenant's sessions.</summary>
    public void EgressDecided(string tenant, bool allowed)
    {
        var c = For(tenant);
        Interlocked.Increment(ref allowed ? ref c.EgressAllowed : ref c.EgressDenied);
    }

    /// <summary>Bytes a relayed egress connection carried, both ways.</summary>
    public void EgressRelayed(string tenant, long bytes) => Interlocked.Add(ref For(tenant).EgressBytes, Math.Max(0, bytes));

    public UsageReport Report(string tenant, int activeSessions)
    {
        var c = For(tenant);
        return new UsageReport
        {
            Tenant = tenant,
            ActiveSessions = activeSessions,
            SessionsCreated = Interlocked.Read(ref c.SessionsCreated),
            Commands = Interlocked.Read(ref c.Commands),
            CommandsTimedOut = Interlocked.Read(ref c.TimedOut),
            CommandSeconds = Interlocked.Read(ref c.DurationMicros) / 1e6,
            OutputBytes = Interlocked.Read(ref c.OutputBytes),
            CpuSeconds = Interlocked.Read(ref c.CpuMicros) / 1e6,
            PeakMemoryBytes = Interlocked.Read(ref c.PeakMemoryBytes),
            EgressAllowed = Interlocked.Read(ref c.EgressAllowed),
            EgressDenied = Interlocked.Read(ref c.EgressDenied),
            EgressBytes = Interlocked.Read(ref c.EgressBytes),
            Since = _since,
        };
    }

    public void Dispose() => _meter.Dispose();

    private Counters For(string tenant) => _tenants.GetOrAdd(tenant, _ => new Counters());

    private sealed class Counters
    {
        public long SessionsCreated;
        public long Commands;
        public long TimedOut;
        public long DurationMicros;
        public long OutputBytes;
        public long CpuMicros;
        public long PeakMemoryBytes;
        public long EgressAllowed;
        public long EgressDenied;
        public long EgressBytes;
    }
}
