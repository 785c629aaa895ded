using System.Globalization;
using System.Net;

namespace SandboxKit.TestEngines;

/// <summary>A /24 held by one engine: the host end of its veth is .1, the namespace end .2.</summary>
internal sealed class SubnetLease : IDisposable
{
    private readonly OwnerLease _lease;

    public SubnetLease(OwnerLease lease, int slot)
    {
        _lease = lease;
        Slot = slot;
        HostAddress = SubnetAllocator.Address(slot, 1);
        NamespaceAddress = SubnetAllocator.Address(slot, 2);
    }

    public int Slot { get; }

    public IPAddress HostAddress { get; }

    public IPAddress NamespaceAddress { get; }

    public string Cidr => $"{SubnetAllocator.Address(Slot, 0)}/24";

    public void Dispose() => _lease.Dispose();
}

/// <summary>
/// Hands out /24s of 10.213.0.0/16 to engines without collisions: a slot is taken by locking its lease file (so two
/// test processes never pick the same one, and a crashed owner frees it by dying), and a slot any route of this
/// machine already overlaps (another tool's network, or a stale engine not yet swept) is skipped. Only addresses
/// of these namespaces are ever assigned or routed; nothing outside this machine is touched.
/// </summary>
internal static class SubnetAllocator
{
    /// <summary>Second octet of the pool; 10.213/16 is far from Docker's default pools (172.17-31/16, 192.168/16).</summary>
    public const int PoolOctet = 213;

    public const int Slots = 256;

    public static IPAddress Address(int slot, int host) => new([10, PoolOctet, (byte)slot, (byte)host]);

    public static SubnetLease Allocate()
    {
        Directory.CreateDirectory(EngineNames.SubnetDirectory);
        var routes = ReadIpv4Routes();
        // Start at a random slot: parallel processes then rarely contend for the same lease file.
        var start = Random.Shared.Next(Slots);
        for (var i = 0; i < Slots; i++)
        {
            var slot = (start + i) % Slots;
            if (Overlaps(routes, slot))
            {
                continue;
            }
            var path = Path.Combine(EngineNames.SubnetDirectory, $"10.{PoolOctet}.{slot}.0.lease");
            if (OwnerLease.TryAcquire(path, FileMode.OpenOrCreate) is { } lease)
            {
                return new SubnetLease(lease, slot);
            }
        }
        throw new PrivateEngineException($"no free /24 left in 10.{PoolOctet}.0.0/16 (all {Slots} slots are held or routed)");
    }

    /// <summary>(network, mask) of every IPv4 route in the main table, from /proc/net/route (little-endian hex).</summary>
    internal static List<(uint Network, uint Mask)> ReadIpv4Routes()
    {
        var routes = new List<(uint, uint)>();
        foreach (var line in File.ReadLines("/proc/net/route").Skip(1))
        {
            var fields = line.Split('\t', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (fields.Length < 8)
            {
                continue;
            }
            var destination = BinaryPrimitivesReverse(uint.Parse(fields[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
            var mask = BinaryPrimitivesReverse(uint.Parse(fields[7], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
            if (mask == 0)
            {
                continue; // The default route overlaps everything and says nothing about local use.
            }
            routes.Add((destination & mask, mask));
        }
        return routes;
    }

    internal static bool Overlaps(List<(uint Network, uint Mask)> routes, int slot)
    {
        var network = (10u << 24) | ((uint)PoolOctet << 16) | ((uint)slot << 8);
        const uint slotMask = 0xFFFFFF00;
        foreach (var (routeNetwork, routeMask) in routes)
        {
            var common = routeMask & slotMask;
            if ((routeNetwork & common) == (network & common))
            {
                return true;
            }
        }
        return false;
    }

    private static uint BinaryPrimitivesReverse(uint value) => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(value);
}
