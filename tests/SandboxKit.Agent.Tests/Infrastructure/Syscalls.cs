using System.Diagnostics;
using System.Globalization;

namespace SandboxKit.Agent.Tests;

/// <summary>Small host-side helpers.</summary>
public static class Syscalls
{
    /// <summary>The owner uid of a host path (stat -c %u).</summary>
    public static int Owner(string path)
    {
        var info = new ProcessStartInfo("stat", ["-c", "%u", path]) { RedirectStandardOutput = true, UseShellExecute = false };
        using var p = Process.Start(info)!;
        var text = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return int.Parse(text.Trim(), CultureInfo.InvariantCulture);
    }
}
