using System.Collections.Concurrent;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Domain;

namespace SandboxKit.Server.Sessions;

/// <summary>
/// The live sessions of this server and each tenant's count against its quota. Lookups are by tenant: another tenant's
/// session is answered exactly like one that does not exist.
/// </summary>
internal sealed class SessionRegistry(TimeProvider time)
{
    private readonly ConcurrentDictionary<string, Session> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _tenantCounts = new(StringComparer.Ordinal);

    public int Count => _sessions.Count;

    public ICollection<Session> All => _sessions.Values;

    /// <summary>The tenant's live session.</summary>
    /// <exception cref="SandboxError">Not found (also for another tenant's, a closed or an expired session).</exception>
    public Session Get(Tenant tenant, string id)
    {
        if (_sessions.TryGetValue(id, out var session) && !session.Closed && string.Equals(session.Tenant, tenant.Name, StringComparison.Ordinal)
            && !session.IsExpired(time.GetUtcNow()))
        {
            return session;
        }
        // Expired but not yet reaped is gone for the caller too; the reaper removes it.
        throw SandboxError.SessionNotFound(id);
    }

    public bool Contains(string id) => _sessions.ContainsKey(id);

    public int CountFor(Tenant tenant) => _tenantCounts.GetValueOrDefault(tenant.Name);

    public IReadOnlyList<Session> List(Tenant tenant, string? userId, IReadOnlyDictionary<string, string> metadata) =>
        _sessions.Values
            .Where(s => !s.Closed && string.Equals(s.Tenant, tenant.Name, StringComparison.Ordinal))
            .Where(s => userId is null || string.Equals(s.UserId, userId, StringComparison.Ordinal))
            .Where(s => metadata.All(kv => s.Metadata.TryGetValue(kv.Key, out var v) && string.Equals(v, kv.Value, StringComparison.Ordinal)))
            .OrderBy(s => s.CreatedAt)
            .ToList();

    /// <summary>The tenant's live session a keyed create made, by the key's digest.</summary>
    public Session? FindCreatedBy(Tenant tenant, string idempotencyKey) =>
        _sessions.Values.FirstOrDefault(s => !s.Closed && s.Tenant == tenant.Name && s.Idempotency is { } i
            && i.StartsWith(idempotencyKey + ":", StringComparison.Ordinal));

    public bool HasLiveSessionsFor(Tenant tenant, string userId) =>
        _sessions.Values.Any(s => !s.Closed && s.Tenant == tenant.Name && s.UserId == userId);

    /// <summary>Takes one of the tenant's session slots, or refuses with 429.</summary>
    /// <exception cref="SandboxError">The tenant has all its sessions.</exception>
    public void Reserve(Tenant tenant)
    {
        while (true)
        {
            var current = _tenantCounts.GetOrAdd(tenant.Name, 0);
            if (current >= tenant.MaxSessions)
            {
                throw SandboxError.QuotaExceeded(
                    $"Tenant '{tenant.Name}' already has {current} of its {tenant.MaxSessions} concurrent sessions; delete one first.", TimeSpan.FromSeconds(5));
            }
            if (_tenantCounts.TryUpdate(tenant.Name, current + 1, current))
            {
                return;
            }
        }
    }

    /// <summary>Gives back a slot taken by <see cref="Reserve"/> for a session that was never added.</summary>
    public void Release(string tenant) => _tenantCounts.AddOrUpdate(tenant, 0, (_, n) => Math.Max(0, n - 1));

    /// <summary>Adds a session created under a reserved slot.</summary>
    public void Add(Session session) => _sessions[session.Id] = session;

    /// <summary>Adds a session found on the engine after a restart (it takes a slot without the quota check).</summary>
    public bool Adopt(Session session)
    {
        if (!_sessions.TryAdd(session.Id, session))
        {
            return false;
        }
        _tenantCounts.AddOrUpdate(session.Tenant, 1, (_, n) => n + 1);
        return true;
    }

    /// <summary>Removes a session and frees its slot; false when it was not here.</summary>
    public bool Remove(Session session)
    {
        if (!_sessions.TryRemove(new KeyValuePair<string, Session>(session.Id, session)))
        {
            return false;
        }
        Release(session.Tenant);
        return true;
    }
}
