using System.Text;

namespace SandboxKit.Agent;

/// <summary>
/// <c>sandboxkit-agent relay</c>: connects to the supervisor's socket and copies stdin to it and it to stdout until
/// either side ends; exits 0 then (1 when the socket cannot be reached). Used as <c>docker exec -i -u 0 C
/// /.sandboxkit/sandboxkit-agent relay</c> where the host cannot reach the socket (gVisor, a remote engine).
/// </summary>
internal static unsafe class Relay
{
    internal static int Run(string socket)
    {
        Log.DisableStderr();
        int fd;
        fixed (byte* p = Native.Z(socket))
        {
            fd = Native.ConnectUnix(p);
        }
        if (fd < 0)
        {
            _ = Native.WriteAll(2, Encoding.UTF8.GetBytes($"sandboxkit-agent relay: {socket}: {Errno.Describe(-fd)}\n"));
            return 1;
        }
        _ = Native.InstallSignalHandlers(-1); // SIGPIPE ignored: a closed stdout is an EPIPE, then the end
        var buffer = new byte[64 * 1024];
        var revents = stackalloc int[2];
        fixed (byte* b = buffer)
        {
            while (true)
            {
                var n = Native.Poll2(0, Native.PollIn, fd, Native.PollIn, -1, revents);
                if (n < 0)
                {
                    return 0;
                }
                if ((revents[0] & (Native.PollIn | Native.PollHup | Native.PollErr)) != 0 && !Copy(0, fd, b, buffer.Length, toSocket: true))
                {
                    return 0;
                }
                if ((revents[1] & (Native.PollIn | Native.PollHup | Native.PollErr)) != 0 && !Copy(fd, 1, b, buffer.Length, toSocket: false))
                {
                    return 0;
                }
            }
        }
    }

    private static bool Copy(int from, int to, byte* buffer, int size, bool toSocket)
    {
        var n = Native.Read(from, buffer, size);
        if (n <= 0)
        {
            return false;
        }
        var done = 0;
        while (done < n)
        {
            var w = toSocket ? Native.Send(to, buffer + done, n - done) : Native.Write(to, buffer + done, n - done);
            if (w <= 0)
            {
                return false;
            }
            done += (int)w;
        }
        return true;
    }
}
