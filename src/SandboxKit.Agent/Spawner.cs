using System.Runtime.InteropServices;
using System.Text;

namespace SandboxKit.Agent;

/// <summary>What to start (see <see cref="Spawner.Spawn"/>).</summary>
internal sealed class SpawnSpec
{
    internal required string Path { get; init; }

    /// <summary>argv strings (without NUL bytes).</summary>
    internal required IReadOnlyList<byte[]> Argv { get; init; }

    /// <summary><c>NAME=VALUE</c> entries.</summary>
    internal required IReadOnlyList<byte[]> Env { get; init; }

    internal string? Cwd { get; set; }

    /// <summary>(parent descriptor, child number) pairs; everything else of the supervisor is close-on-exec.</summary>
    internal List<(int Source, int Target)> Fds { get; } = [];

    /// <summary>A child descriptor number (placed through <see cref="Fds"/>) that becomes the controlling terminal of
    /// the new session (<c>TIOCSCTTY</c>, done as root before the ids drop); -1 for none.</summary>
    internal int ControllingTty { get; set; } = -1;
}

/// <summary>The outcome of a spawn: a pid, or where it failed.</summary>
internal readonly record struct SpawnOutcome(int Pid, int Error, int Step)
{
    internal bool Started => Pid > 0 && Error == 0;

    internal string Describe() => Step switch
    {
        0 => $"clone: {Errno.Describe(Error)}",
        4 => $"controlling terminal: {Errno.Describe(Error)}",
        6 => $"chdir: {Errno.Describe(Error)}",
        7 => $"execve: {Errno.Describe(Error)}",
        5 => $"dropping privileges: {Errno.Describe(Error)}",
        3 => $"placing descriptors: {Errno.Describe(Error)}",
        _ => $"spawn step {Step}: {Errno.Describe(Error)}",
    };

    internal const int StepChdir = 6;
}

/// <summary>
/// Starts processes as the command user through the native helper (native/spawn.c): new session, descriptors
/// placed, oom_score_adj 1000, no groups, uid/gid dropped. The pid is registered with the reaper under its lock
/// before the lock is released, so the reaper can never reap it unowned.
/// </summary>
internal sealed unsafe class Spawner(Reaper reaper, int uid, int gid, bool setIds)
{
    internal const int CommandOomScore = 1000;

    internal SpawnOutcome Spawn(SpawnSpec spec, IChildOwner owner)
    {
        if (spec.Fds.Count > Native.SpawnMaxFds)
        {
            throw new ArgumentException("too many descriptors to place");
        }
        var strings = new List<byte[]>(spec.Argv.Count + spec.Env.Count + 2) { Native.Z(spec.Path) };
        var cwd = spec.Cwd is null ? null : Native.Z(spec.Cwd);
        nint size = 0;
        foreach (var s in spec.Argv)
        {
            size += s.Length + 1;
        }
        foreach (var s in spec.Env)
        {
            size += s.Length + 1;
        }
        var pointers = (spec.Argv.Count + 1 + spec.Env.Count + 1) * sizeof(byte*);
        var block = (byte*)NativeMemory.Alloc((nuint)(pointers + size + 16));
        try
        {
            var argv = (byte**)block;
            var envp = argv + spec.Argv.Count + 1;
            var cursor = block + pointers;
            for (var i = 0; i < spec.Argv.Count; i++)
            {
                argv[i] = cursor;
                cursor = CopyZ(spec.Argv[i], cursor);
            }
            argv[spec.Argv.Count] = null;
            for (var i = 0; i < spec.Env.Count; i++)
            {
                envp[i] = cursor;
                cursor = CopyZ(spec.Env[i], cursor);
            }
            envp[spec.Env.Count] = null;

            var maps = stackalloc Native.FdMap[Native.SpawnMaxFds];
            for (var i = 0; i < spec.Fds.Count; i++)
            {
                maps[i] = new Native.FdMap { Source = spec.Fds[i].Source, Target = spec.Fds[i].Target };
            }
            fixed (byte* path = strings[0])
            fixed (byte* cwdPointer = cwd)
            {
                var request = new Native.SpawnRequest
                {
                    Path = path,
                    Argv = argv,
                    Envp = envp,
                    Cwd = cwdPointer,
                    Uid = uid,
                    Gid = gid,
                    OomScoreAdj = CommandOomScore,
                    Flags = Native.SpawnSetSid | Native.SpawnOomScore | (setIds ? Native.SpawnSetIds : 0) |
                        (spec.ControllingTty >= 0 ? Native.SpawnSetCtty : 0),
                    ControllingTty = spec.ControllingTty,
                    FdCount = spec.Fds.Count,
                    Fds = maps,
                };
                Native.SpawnResult result;
                int pid;
                lock (reaper.SpawnLock)
                {
                    pid = Native.Spawn(&request, &result);
                    if (pid > 0 && result.Error == 0)
                    {
                        reaper.Register(pid, owner);
                    }
                }
                if (pid > 0)
                {
                    reaper.NotifySpawned(); // a failed child is an exited orphan: the reaper must collect it
                }
                return pid < 0 ? new SpawnOutcome(0, -pid, 0) : new SpawnOutcome(pid, result.Error, result.Step);
            }
        }
        finally
        {
            NativeMemory.Free(block);
        }
    }

    private static byte* CopyZ(byte[] source, byte* destination)
    {
        source.AsSpan().CopyTo(new Span<byte>(destination, source.Length));
        destination[source.Length] = 0;
        return destination + source.Length + 1;
    }

    internal static byte[] Arg(string text) => Encoding.UTF8.GetBytes(text);
}
