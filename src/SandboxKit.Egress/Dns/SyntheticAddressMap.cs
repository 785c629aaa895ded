using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using SandboxKit.Egress.Policy;

namespace SandboxKit.Egress.Dns;

/// <summary>A name and the synthetic address a session's DNS answers give it.</summary>
/// <param name="Name">Normalised host name.</param>
/// <param name="Address">Synthetic loopback address.</param>
internal sealed record EgressDnsMapping(string Name, IPAddress Address);

/// <summary>
/// One session's name ↔ synthetic address table. A name keeps its address for the session's life (so connections
/// made from a cached answer keep working), addresses are never reused for another name, and the table is bounded.
/// </summary>
internal sealed class SyntheticAddressMap
{
    private readonly uint _first;
    private readonly uint _last;
    private readonly IPNetwork _pool;
    private readonly int _capacity;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, uint> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, string> _byAddress = [];
    private uint _next;

    /// <summary>Creates the table over <paramref name="pool"/> (network and broadcast addresses unused), holding at most <paramref name="maxNames"/>.</summary>
    public SyntheticAddressMap(IPNetwork pool, int maxNames)
    {
        _pool = pool;
        uint network = BinaryPrimitives.ReadUInt32BigEndian(pool.BaseAddress.GetAddressBytes());
        uint size = pool.PrefixLength == 0 ? uint.MaxValue : (1u << (32 - pool.PrefixLength)) - 1;
        _first = network + 1;
        _last = network + size - 1;
        _capacity = (int)Math.Min(maxNames, _last - _first + 1);
        _next = _first;
    }

    /// <summary>Names mapped now.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _byName.Count;
            }
        }
    }

    /// <summary>Whether <paramref name="address"/> lies in the synthetic range (allocated or not).</summary>
    public bool InPool(IPAddress address) => _pool.Contains(IpText.Canonical(address));

    /// <summary>The name <paramref name="address"/> was given to, or null.</summary>
    public string? NameOf(IPAddress address)
    {
        if (!TryKey(address, out uint key))
        {
            return null;
        }
        lock (_lock)
        {
            return _byAddress.GetValueOrDefault(key);
        }
    }

    /// <summary>The name's address, allocating the next free one on first use; null when the table is full.</summary>
    public IPAddress? GetOrAllocate(string name)
    {
        lock (_lock)
        {
            if (_byName.TryGetValue(name, out uint existing))
            {
                return ToAddress(existing);
            }
            if (_byName.Count >= _capacity)
            {
                return null;
            }
            // Restored mappings may hold addresses ahead of the cursor: skip them.
            while (_byAddress.ContainsKey(_next))
            {
                _next = _next == _last ? _first : _next + 1;
            }
            uint key = _next;
            _next = _next == _last ? _first : _next + 1;
            _byName[name] = key;
            _byAddress[key] = name;
            return ToAddress(key);
        }
    }

    /// <summary>
    /// Re-establishes a mapping the supervisor kept (after a server restart). Refused when the address is outside the
    /// pool, the name is not a valid name, either side is already mapped otherwise, or the table is full. Trusting the
    /// sandbox here is harmless: the name still goes through the policy, and the synthetic address is never dialed.
    /// </summary>
    public bool TryRestore(string name, IPAddress address)
    {
        if (!HostName.TryNormalize(name, out var normalized, out _) || !TryKey(address, out uint key) || key < _first || key > _last)
        {
            return false;
        }
        lock (_lock)
        {
            bool nameKnown = _byName.TryGetValue(normalized, out uint current);
            if (nameKnown || _byAddress.ContainsKey(key))
            {
                return nameKnown && current == key;
            }
            if (_byName.Count >= _capacity)
            {
                return false;
            }
            _byName[normalized] = key;
            _byAddress[key] = normalized;
            return true;
        }
    }

    /// <summary>Every mapping, in allocation order of addresses.</summary>
    public IReadOnlyList<EgressDnsMapping> Snapshot()
    {
        lock (_lock)
        {
            return _byAddress.OrderBy(p => p.Key).Select(p => new EgressDnsMapping(p.Value, ToAddress(p.Key))).ToList();
        }
    }

    private bool TryKey(IPAddress address, out uint key)
    {
        key = 0;
        address = IpText.Canonical(address);
        if (address.AddressFamily != AddressFamily.InterNetwork || !_pool.Contains(address))
        {
            return false;
        }
        key = BinaryPrimitives.ReadUInt32BigEndian(address.GetAddressBytes());
        return true;
    }

    private static IPAddress ToAddress(uint key)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, key);
        return new IPAddress(bytes);
    }
}
