using System.Buffers.Text;

namespace SandboxKit.Agent;

/// <summary>One process as /proc/PID/stat shows it.</summary>
internal readonly record struct ProcInfo(int Pid, byte State, int ParentPid, int ProcessGroup, int SessionId);

/// <summary>Reads /proc (the container's own: the supervisor is its pid namespace's init).</summary>
internal static unsafe class ProcFs
{
    private static readonly byte[] ProcZ = Native.Z("/proc");
    private static readonly long PageSize = Math.Max(4096, (long)Native.PageSize());

    [ThreadStatic]
    private static byte[]? t_buffer;

    private static byte[] Buffer => t_buffer ??= new byte[4096];

    /// <summary>Every live process (zombies included, with state 'Z').</summary>
    internal static List<ProcInfo> Snapshot()
    {
        var result = new List<ProcInfo>();
        int dir;
        fixed (byte* p = ProcZ)
        {
            dir = Native.Open(p, Native.ORdOnly | Native.ODirectory, 0);
        }
        if (dir < 0)
        {
            return result;
        }
        try
        {
            var entries = new byte[32 * 1024];
            while (true)
            {
                nint n;
                fixed (byte* e = entries)
                {
                    n = Native.GetDents(dir, e, entries.Length);
                }
                if (n <= 0)
                {
                    break;
                }
                var offset = 0;
                while (offset < n)
                {
                    var recordLength = entries[offset + 16] | (entries[offset + 17] << 8);
                    var name = entries.AsSpan(offset + 19, recordLength - 19);
                    var end = name.IndexOf((byte)0);
                    if (end >= 0)
                    {
                        name = name[..end];
                    }
                    if (name.Length > 0 && name[0] is >= (byte)'1' and <= (byte)'9' && Utf8Parser.TryParse(name, out int pid, out var used) && used == name.Length)
                    {
                        if (ReadStat(pid) is { } info)
                        {
                            result.Add(info);
                        }
                    }
                    offset += recordLength;
                }
            }
        }
        finally
        {
            _ = Native.Close(dir);
        }
        return result;
    }

    /// <summary>/proc/PID/stat's state, ppid, pgrp and session, or null when the process is gone.</summary>
    internal static ProcInfo? ReadStat(int pid)
    {
        var length = ReadProcFile(pid, "stat");
        if (length <= 0)
        {
            return null;
        }
        var text = Buffer.AsSpan(0, length);
        var close = text.LastIndexOf((byte)')');
        if (close < 0 || close + 2 >= text.Length)
        {
            return null;
        }
        // after "(comm) ": state ppid pgrp session ...
        var rest = text[(close + 2)..];
        var state = rest[0];
        Span<int> fields = stackalloc int[3];
        rest = rest[1..];
        for (var i = 0; i < 3; i++)
        {
            rest = rest.TrimStart((byte)' ');
            if (!Utf8Parser.TryParse(rest, out int value, out var used))
            {
                return null;
            }
            fields[i] = value;
            rest = rest[used..];
        }
        return new ProcInfo(pid, state, fields[0], fields[1], fields[2]);
    }

    /// <summary>Resident memory of a process in bytes (0 when gone).</summary>
    internal static long ResidentBytes(int pid)
    {
        var length = ReadProcFile(pid, "statm");
        if (length <= 0)
        {
            return 0;
        }
        var text = Buffer.AsSpan(0, length);
        var space = text.IndexOf((byte)' ');
        if (space < 0 || !Utf8Parser.TryParse(text[(space + 1)..], out long pages, out _))
        {
            return 0;
        }
        return pages * PageSize;
    }

    /// <summary>True when <paramref name="pid"/> neither catches nor ignores <paramref name="signal"/> (receiving it would act at once).</summary>
    internal static bool HasDefaultDisposition(int pid, int signal)
    {
        var length = ReadProcFile(pid, "status");
        if (length <= 0)
        {
            return false;
        }
        var text = Buffer.AsSpan(0, length);
        ulong mask = 0;
        foreach (var key in new[] { "SigIgn:"u8.ToArray(), "SigCgt:"u8.ToArray() })
        {
            var at = text.IndexOf(key);
            if (at < 0)
            {
                return false;
            }
            var value = text[(at + key.Length)..].TrimStart((byte)'\t').TrimStart((byte)' ');
            if (!Utf8Parser.TryParse(value, out ulong bits, out _, 'x'))
            {
                return false;
            }
            mask |= bits;
        }
        return (mask & (1UL << (signal - 1))) == 0;
    }

    private static int ReadProcFile(int pid, string file)
    {
        Span<byte> path = stackalloc byte[64];
        var written = 0;
        "/proc/"u8.CopyTo(path);
        written += 6;
        Utf8Formatter.TryFormat(pid, path[written..], out var n);
        written += n;
        path[written++] = (byte)'/';
        for (var i = 0; i < file.Length; i++)
        {
            path[written++] = (byte)file[i];
        }
        path[written] = 0;
        int fd;
        fixed (byte* p = path)
        {
            fd = Native.Open(p, Native.ORdOnly, 0);
        }
        if (fd < 0)
        {
            return -1;
        }
        var buffer = Buffer;
        var total = 0;
        fixed (byte* b = buffer)
        {
            while (total < buffer.Length)
            {
                var r = Native.Read(fd, b + total, buffer.Length - total);
                if (r <= 0)
                {
                    break;
                }
                total += (int)r;
            }
        }
        _ = Native.Close(fd);
        return total;
    }
}

/// <summary>
/// A command's process tree: its process group plus every process whose session id or process group is the shell's
/// pid (children that changed their group are caught through the session). Signalled under the reaper's lock, so no
/// child of the supervisor can be reaped (and its pid reused) in between; the group itself is signalled only while
/// its leader is known to be unreaped (a reaped leader's number could be a new group's).
/// </summary>
internal static class ProcessTree
{
    /// <summary>Signals the tree of <paramref name="leader"/>; returns how many members (besides the group) were found live.</summary>
    /// <param name="reaper">Its lock is held while signalling.</param>
    /// <param name="leader">The shell's pid (its session and group id).</param>
    /// <param name="owner">The shell's owner: the group is signalled only while it is unreaped.</param>
    /// <param name="signal">The signal.</param>
    /// <param name="missedOnly">Only members for which the signal still has its default disposition (they cannot
    /// have received a catchable one yet, so a re-send is harmless).</param>
    internal static int Signal(Reaper reaper, int leader, IChildOwner? owner, int signal, bool missedOnly = false)
    {
        var found = 0;
        var processes = ProcFs.Snapshot();
        lock (reaper.SpawnLock)
        {
            var groupSignalled = !missedOnly && owner is { Reaped: false } && Native.Kill(-leader, signal) == 0;
            foreach (var p in processes)
            {
                if (p.State == 'Z' || (p.ProcessGroup != leader && p.SessionId != leader) || p.Pid == 1)
                {
                    continue;
                }
                if (p.Pid == leader && owner is { Reaped: true })
                {
                    continue; // that number may belong to someone else now
                }
                if (missedOnly && !ProcFs.HasDefaultDisposition(p.Pid, signal))
                {
                    continue;
                }
                // Still alive (not a zombie) under the lock? A member reaped by its own parent since the snapshot
                // may have been reused; re-read its stat right before signalling.
                if (ProcFs.ReadStat(p.Pid) is not { State: not (byte)'Z' } now || (now.ProcessGroup != leader && now.SessionId != leader))
                {
                    continue;
                }
                if (groupSignalled && now.ProcessGroup == leader && signal != Native.SigKill)
                {
                    // The group's signal reached it: a second SIGINT or SIGTERM would interrupt its handling of the
                    // first (a KeyboardInterrupt in the middle of the cleanup the first one started).
                    found++;
                    continue;
                }
                if (Native.Kill(p.Pid, signal) == 0)
                {
                    found++;
                }
            }
        }
        return found;
    }
}
