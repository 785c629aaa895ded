using System.Collections.Concurrent;

namespace SandboxKit.TestEngines;

/// <summary>
/// Everything this process started and has not disposed yet, cleaned up synchronously when the process exits
/// normally or on SIGTERM (AppDomain.ProcessExit): a test run that forgot a dispose still leaves nothing running.
/// Finalizers are not used: they may never run, and cannot wait for processes to die.
/// </summary>
internal static class LiveResources
{
    private static readonly ConcurrentDictionary<long, (string Name, Action Cleanup)> Live = new();
    private static long _next;

    static LiveResources() => AppDomain.CurrentDomain.ProcessExit += (_, _) => CleanUpAll();

    public static long Register(string name, Action emergencyCleanup)
    {
        var key = Interlocked.Increment(ref _next);
        Live[key] = (name, emergencyCleanup);
        return key;
    }

    public static void Unregister(long key) => Live.TryRemove(key, out _);

    public static IReadOnlyList<string> Names => Live.Values.Select(v => v.Name).ToList();

    private static void CleanUpAll()
    {
        foreach (var key in Live.Keys.ToList())
        {
            if (Live.TryRemove(key, out var entry))
            {
                try
                {
                    entry.Cleanup();
                }
#pragma warning disable CA1031 // At process exit one failure must not stop the others from being cleaned up.
                catch (Exception)
#pragma warning restore CA1031
                {
                }
            }
        }
    }
}
