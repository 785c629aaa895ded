using System.Collections.Concurrent;
using System.Security.Cryptography;
using SandboxKit.Server.Domain;

namespace SandboxKit.Server.Auth;

/// <summary>
/// Short-lived, single-use tickets for WebSocket upgrades. A browser cannot set headers on a WebSocket, and a long-lived
/// API key in a URL ends up in logs and history; instead the page asks (with its key, in a header) for a ticket bound to
/// one tenant and one path, and opens the socket with <c>?ticket=</c>. A ticket works once, for
/// <see cref="Lifetime"/>, on exactly that path; at most <see cref="MaxOutstandingPerTenant"/> wait per tenant.
/// </summary>
internal sealed class WebSocketTickets(TimeProvider time)
{
    public static readonly TimeSpan Lifetime = TimeSpan.FromSeconds(60);
    public const int MaxOutstandingPerTenant = 256;

    private readonly ConcurrentDictionary<string, Issued> _tickets = new(StringComparer.Ordinal);

    /// <summary>A new ticket for one upgrade of <paramref name="path"/> by <paramref name="tenant"/>.</summary>
    /// <exception cref="SandboxError">The tenant already has too many unused tickets (429).</exception>
    public (string Ticket, DateTimeOffset ExpiresAt) Issue(Tenant tenant, string path)
    {
        var now = time.GetUtcNow();
        Sweep(now);
        if (_tickets.Values.Count(t => t.Tenant.Name == tenant.Name) >= MaxOutstandingPerTenant)
        {
            throw SandboxError.QuotaExceeded($"At most {MaxOutstandingPerTenant} unused WebSocket tickets per tenant; use or let some expire.", Lifetime);
        }
        var ticket = Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).TrimEnd('=').Replace('+', '-').Replace('/', '_');
        var expires = now + Lifetime;
        _tickets[ticket] = new Issued(tenant, path, expires);
        return (ticket, expires);
    }

    /// <summary>The tenant of a valid ticket for <paramref name="path"/>, consuming it; null for anything else.</summary>
    public Tenant? Redeem(string ticket, string path)
    {
        if (ticket.Length is 0 or > 64 || !_tickets.TryRemove(ticket, out var issued))
        {
            return null;
        }
        return issued.ExpiresAt > time.GetUtcNow() && string.Equals(issued.Path, path, StringComparison.Ordinal) ? issued.Tenant : null;
    }

    private void Sweep(DateTimeOffset now)
    {
        foreach (var (key, issued) in _tickets)
        {
            if (issued.ExpiresAt <= now)
            {
                _tickets.TryRemove(key, out _);
            }
        }
    }

    private sealed record Issued(Tenant Tenant, string Path, DateTimeOffset ExpiresAt);
}
