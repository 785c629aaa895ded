using System.Text;

namespace SandboxKit.Agent;

/// <summary>One log line waiting for the connection (an <c>l</c> frame).</summary>
internal readonly record struct LogLine(string Level, string Message, int Suppressed);

/// <summary>
/// The supervisor's log, usable from any thread. Lines are rate-limited at the source (a token bucket: bursts of
/// 40, then 10 a second; dropped lines are counted in the next one's <c>suppressed</c>), cut to 512 characters,
/// written to stderr (which the container usually discards) and queued (at most 64) for the connection, which
/// sends them as <c>l</c> frames.
/// </summary>
internal static class Log
{
    private const int Burst = 40;
    private const double PerSecond = 10;
    private const int MaxQueued = 64;
    private const int MaxLength = 512;

    private static readonly Lock Gate = new();
    private static readonly Queue<LogLine> Pending = new();
    private static double _tokens = Burst;
    private static long _lastRefillNs = Native.MonotonicNs();
    private static int _suppressed;
    private static bool _stderr = true;

    /// <summary>Called (on the writing thread, outside the lock) after a line was queued: wakes the loop.</summary>
    internal static Action? Queued { get; set; }

    /// <summary>Stops writing to stderr (the relay's stdout/stderr belong to the protocol).</summary>
    internal static void DisableStderr() => _stderr = false;

    internal static void Debug(string message) => Write("debug", message);

    internal static void Info(string message) => Write("info", message);

    internal static void Warn(string message) => Write("warn", message);

    internal static void Error(string message) => Write("error", message);

    internal static void Write(string level, string message)
    {
        if (message.Length > MaxLength)
        {
            message = string.Concat(message.AsSpan(0, MaxLength - 1), "…");
        }
        int suppressed;
        lock (Gate)
        {
            var now = Native.MonotonicNs();
            _tokens = Math.Min(Burst, _tokens + (now - _lastRefillNs) / 1e9 * PerSecond);
            _lastRefillNs = now;
            if (_tokens < 1)
            {
                _suppressed++;
                return;
            }
            _tokens -= 1;
            suppressed = _suppressed;
            _suppressed = 0;
            if (Pending.Count == MaxQueued)
            {
                var dropped = Pending.Dequeue();
                suppressed += 1 + dropped.Suppressed;
            }
            Pending.Enqueue(new LogLine(level, message, suppressed));
        }
        if (_stderr)
        {
            var line = Encoding.UTF8.GetBytes($"sandboxkit-agent: {level}: {message}\n");
            _ = Native.WriteAll(2, line);
        }
        Queued?.Invoke();
    }

    /// <summary>Takes the queued lines (loop thread).</summary>
    internal static bool TryTake(out LogLine line)
    {
        lock (Gate)
        {
            return Pending.TryDequeue(out line);
        }
    }
}
