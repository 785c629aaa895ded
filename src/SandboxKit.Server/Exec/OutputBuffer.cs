using System.Text;

namespace SandboxKit.Server.Exec;

/// <summary>
/// Keeps at most <c>cap</c> bytes of one output stream: the first half and the last half, so a 100 MB flood
/// costs the server a fixed amount of memory and the caller still sees how the output began and ended.
/// </summary>
internal sealed class OutputBuffer(int cap)
{
    private readonly int _headCap = cap / 2;
    private readonly int _tailCap = cap - cap / 2;
    private readonly MemoryStream _head = new();
    private byte[]? _tail;
    private int _tailStart;
    private int _tailCount;

    public long TotalBytes { get; private set; }

    public bool Truncated => TotalBytes > _headCap + _tailCap;

    public void Append(ReadOnlySpan<byte> data)
    {
        TotalBytes += data.Length;
        var toHead = Math.Min(data.Length, _headCap - (int)_head.Length);
        if (toHead > 0)
        {
            _head.Write(data[..toHead]);
            data = data[toHead..];
        }
        if (data.IsEmpty)
        {
            return;
        }
        _tail ??= new byte[_tailCap];
        if (data.Length >= _tailCap)
        {
            data[^_tailCap..].CopyTo(_tail);
            _tailStart = 0;
            _tailCount = _tailCap;
            return;
        }
        foreach (var b in data)
        {
            var index = (_tailStart + _tailCount) % _tailCap;
            _tail[index] = b;
            if (_tailCount < _tailCap)
            {
                _tailCount++;
            }
            else
            {
                _tailStart = (_tailStart + 1) % _tailCap;
            }
        }
    }

    public byte[] ToArray()
    {
        var result = new byte[_head.Length + _tailCount];
        _head.GetBuffer().AsSpan(0, (int)_head.Length).CopyTo(result);
        for (var i = 0; i < _tailCount; i++)
        {
            result[_head.Length + i] = _tail![(_tailStart + i) % _tailCap];
        }
        return result;
    }

    /// <summary>The kept text; when bytes were dropped a marker line between head and tail says how many.</summary>
    public override string ToString()
    {
        if (!Truncated)
        {
            return Encoding.UTF8.GetString(ToArray());
        }
        var head = Encoding.UTF8.GetString(_head.GetBuffer(), 0, (int)_head.Length);
        var tailBytes = new byte[_tailCount];
        for (var i = 0; i < _tailCount; i++)
        {
            tailBytes[i] = _tail![(_tailStart + i) % _tailCap];
        }
        var tail = Encoding.UTF8.GetString(tailBytes);
        var dropped = TotalBytes - _head.Length - _tailCount;
        return $"{head}\n[... {dropped} bytes of output truncated by SandboxKit ...]\n{tail}";
    }
}
