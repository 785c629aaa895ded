using Microsoft.Extensions.Options;
using SandboxKit.Contracts;
using SandboxKit.Server.Domain;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// Admission control: the sum of session memory limits (and the session count) must stay within what the operator
/// allows for this host, or new sessions are refused with 503 <c>capacity_exhausted</c> and <c>Retry-After</c> instead of
/// letting limits overcommit the machine many times over. Creates in flight count, so concurrent creates cannot
/// together pass the limit.
/// </summary>
internal sealed class CapacityGuard
{
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(10);
    private readonly object _gate = new();
    private readonly SessionRegistry _registry;
    private readonly Lazy<WarmPool> _pool;
    private long _inflightMemory;
    private int _inflightCount;

    public CapacityGuard(SessionRegistry registry, IServiceProvider services, IOptions<SandboxOptions> options)
    {
        _registry = registry;
        // The pool asks the guard before it fills; the guard counts what the pool holds: resolved lazily to break the cycle.
        _pool = new Lazy<WarmPool>(services.GetRequiredService<WarmPool>);
        MaxSessions = options.Value.MaxSessions;
        MaxCommittedMemoryBytes = options.Value.MaxCommittedMemoryBytes > 0 ? options.Value.MaxCommittedMemoryBytes : 2 * PhysicalMemoryBytes();
    }

    public int MaxSessions { get; }

    public long MaxCommittedMemoryBytes { get; }

    /// <summary>Takes room for one container of <paramref name="memoryBytes"/>; dispose the lease once the container is counted elsewhere (or gone).</summary>
    /// <exception cref="SandboxError">The host is full.</exception>
    public Lease Reserve(long memoryBytes, bool forPool = false)
    {
        lock (_gate)
        {
            var (count, memory) = Committed();
            if (count + _inflightCount + 1 > MaxSessions)
            {
                throw SandboxError.CapacityExhausted(
                    $"This host holds {count + _inflightCount} of the {MaxSessions} sessions its operator allows; retry later or delete a session.", RetryAfter);
            }
            if (memory + _inflightMemory + memoryBytes > MaxCommittedMemoryBytes)
            {
                throw SandboxError.CapacityExhausted(
                    $"A session of {memoryBytes >> 20} MiB would commit {(memory + _inflightMemory + memoryBytes) >> 20} MiB of memory on this host, " +
                    $"more than the {MaxCommittedMemoryBytes >> 20} MiB its operator allows; retry later, delete a session, or ask for less memory.", RetryAfter);
            }
            _inflightMemory += memoryBytes;
            _inflightCount++;
        }
        return new Lease(this, memoryBytes);
    }

    /// <summary>True when a pool container of <paramref name="memoryBytes"/> would fit (the pool never takes the last room).</summary>
    public bool HasRoomForPool(long memoryBytes)
    {
        lock (_gate)
        {
            var (count, memory) = Committed();
            return count + _inflightCount + 1 <= MaxSessions && memory + _inflightMemory + memoryBytes <= MaxCommittedMemoryBytes;
        }
    }

    public CapacityReport Report()
    {
        lock (_gate)
        {
            var (count, memory) = Committed();
            return new CapacityReport
            {
                Sessions = count + _inflightCount,
                MaxSessions = MaxSessions,
                CommittedMemoryBytes = memory + _inflightMemory,
                MaxCommittedMemoryBytes = MaxCommittedMemoryBytes,
            };
        }
    }

    private (int Count, long Memory) Committed()
    {
        var count = 0;
        long memory = 0;
        foreach (var session in _registry.All)
        {
            count++;
            memory += session.MemoryBytes;
        }
        var pool = _pool.Value;
        return (count + pool.ReadyCount, memory + pool.CommittedMemoryBytes);
    }

    private void Release(long memoryBytes)
    {
        lock (_gate)
        {
            _inflightMemory -= memoryBytes;
            _inflightCount--;
        }
    }

    private static long PhysicalMemoryBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                {
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        catch (IOException)
        {
        }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }

    /// <summary>Room taken for a container being created.</summary>
    internal sealed class Lease(CapacityGuard guard, long memoryBytes) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                guard.Release(memoryBytes);
            }
        }
    }
}
