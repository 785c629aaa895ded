using System.Net;
using System.Net.Sockets;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Resolution;

/// <summary>Outcome of resolving a name.</summary>
internal enum ResolutionStatus
{
    /// <summary>The name has addresses.</summary>
    Resolved,

    /// <summary>The name does not exist (or is in neither the static map nor, where enabled, the system resolver).</summary>
    NotFound,

    /// <summary>Resolution failed for a reason that may pass (timeout, resolver unreachable).</summary>
    Failed,
}

/// <summary>The addresses of a name and where they came from.</summary>
/// <param name="Status">Outcome.</param>
/// <param name="Addresses">Canonical addresses (IPv4-mapped IPv6 as IPv4); empty unless <see cref="ResolutionStatus.Resolved"/>.</param>
/// <param name="Source">"static", "system" or "none".</param>
internal sealed record EgressResolution(ResolutionStatus Status, IReadOnlyList<IPAddress> Addresses, string Source)
{
    /// <summary>Not found anywhere.</summary>
    public static EgressResolution NotFound { get; } = new(ResolutionStatus.NotFound, [], "none");
}

/// <summary>Resolves host names for the gateway. Only names a policy already allowed are ever passed in.</summary>
internal interface IEgressResolver
{
    /// <summary>Resolves a normalised host name.</summary>
    ValueTask<EgressResolution> ResolveAsync(string name, CancellationToken cancellationToken);
}

/// <summary>The machine's resolver, behind an interface so tests can prove it is never asked.</summary>
internal interface ISystemNameResolver
{
    /// <summary>Looks <paramref name="name"/> up; throws <see cref="SocketException"/> with <see cref="SocketError.HostNotFound"/> for an unknown name.</summary>
    Task<IPAddress[]> GetHostAddressesAsync(string name, CancellationToken cancellationToken);
}

/// <summary><see cref="ISystemNameResolver"/> over <see cref="System.Net.Dns"/>.</summary>
internal sealed class DnsSystemNameResolver : ISystemNameResolver
{
    /// <inheritdoc />
    public Task<IPAddress[]> GetHostAddressesAsync(string name, CancellationToken cancellationToken) =>
        System.Net.Dns.GetHostAddressesAsync(name, cancellationToken);
}

/// <summary>
/// The production resolver: the static hosts map first; then, only if the operator enabled it, the system resolver.
/// With the system resolver off, a name outside the map is <see cref="ResolutionStatus.NotFound"/> without any
/// lookup leaving the process.
/// </summary>
internal sealed class EgressResolver : IEgressResolver
{
    private readonly IReadOnlyDictionary<string, IPAddress[]> _hosts;
    private readonly ISystemNameResolver? _system;
    private readonly TimeSpan _timeout;

    /// <summary>Creates the resolver from settings; <paramref name="system"/> is used only when the settings enable it.</summary>
    public EgressResolver(EgressSettings settings, ISystemNameResolver? system = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        _hosts = settings.Hosts;
        _system = settings.UseSystemResolver ? system ?? new DnsSystemNameResolver() : null;
        _timeout = settings.ResolveTimeout;
    }

    /// <inheritdoc />
    public async ValueTask<EgressResolution> ResolveAsync(string name, CancellationToken cancellationToken)
    {
        if (_hosts.TryGetValue(name, out var addresses))
        {
            return new EgressResolution(ResolutionStatus.Resolved, Array.ConvertAll(addresses, IpText.Canonical), "static");
        }
        if (_system is null)
        {
            return EgressResolution.NotFound;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_timeout);
        try
        {
            var found = await _system.GetHostAddressesAsync(name, timeout.Token).ConfigureAwait(false);
            var canonical = found.Select(IpText.Canonical).Distinct().ToArray();
            return canonical.Length == 0 ? EgressResolution.NotFound : new EgressResolution(ResolutionStatus.Resolved, canonical, "system");
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.HostNotFound or SocketError.NoData)
        {
            return EgressResolution.NotFound;
        }
        catch (SocketException)
        {
            return new EgressResolution(ResolutionStatus.Failed, [], "system");
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return new EgressResolution(ResolutionStatus.Failed, [], "system");
        }
    }
}
