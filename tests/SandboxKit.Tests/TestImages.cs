using System.Diagnostics;
using System.Formats.Tar;

namespace SandboxKit.Tests;

/// <summary>
/// Images made by the tests from files of this host (no registry here): one with nothing but glibc and its own
/// ENTRYPOINT, CMD, USER and WORKDIR, and one without glibc at all. Tagged <c>sandboxkit/test-*</c> and kept between runs.
/// </summary>
internal static class TestImages
{
    // The supervisor's own suite makes images of similar names; these are the server suite's (an ENV, an app user, ...).
    public const string GlibcOnly = "sandboxkit/test-server-glibc-only:1";
    public const string NoGlibc = "sandboxkit/test-server-no-glibc:1";

    private static readonly SemaphoreSlim Lock = new(1, 1);

    /// <summary>glibc's loader, libc and libm from this host; an /etc/passwd without uid 1000; no shell, no coreutils, no python, no node.</summary>
    public static Task<string> GlibcOnlyAsync() => EnsureAsync(GlibcOnly, tar =>
    {
        foreach (var library in new[] { "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libm.so.6" })
        {
            AddFile(tar, library, File.ReadAllBytes(Path.GetFullPath(ResolveLink(library))), executable: true);
        }
        AddFile(tar, "/etc/passwd", "root:x:0:0:root:/root:/nonexistent\napp:x:4242:4242::/opt/app:/nonexistent\n"u8.ToArray(), executable: false);
        AddFile(tar, "/opt/app/README", "an application image\n"u8.ToArray(), executable: false);
    }, ["ENTRYPOINT [\"/nonexistent-entrypoint\"]", "CMD [\"--serve\"]", "USER 4242", "WORKDIR /opt/app", "ENV APP_MODE=production"]);

    /// <summary>Only a statically linked shell: nothing the supervisor links against.</summary>
    public static Task<string> NoGlibcAsync() => EnsureAsync(NoGlibc, tar =>
        AddFile(tar, "/bin/sh", File.ReadAllBytes("/bin/bash-static"), executable: true), ["CMD [\"/bin/sh\"]"]);

    private static async Task<string> EnsureAsync(string tag, Action<TarWriter> content, string[] changes)
    {
        await Lock.WaitAsync();
        try
        {
            if (await Engine.Docker.ImageExistsAsync(tag, CancellationToken.None))
            {
                return tag;
            }
            using var buffer = new MemoryStream();
            using (var tar = new TarWriter(buffer, TarEntryFormat.Pax, leaveOpen: true))
            {
                content(tar);
            }
            var info = new ProcessStartInfo("docker") { RedirectStandardInput = true, RedirectStandardError = true, RedirectStandardOutput = true };
            info.ArgumentList.Add("import");
            foreach (var change in changes)
            {
                info.ArgumentList.Add("--change");
                info.ArgumentList.Add(change);
            }
            info.ArgumentList.Add("-");
            info.ArgumentList.Add(tag);
            using var process = Process.Start(info)!;
            await process.StandardInput.BaseStream.WriteAsync(buffer.ToArray());
            process.StandardInput.Close();
            var error = await process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            Assert.That(process.ExitCode, Is.Zero, "docker import failed: " + error);
            return tag;
        }
        finally
        {
            Lock.Release();
        }
    }

    private static string ResolveLink(string path)
    {
        var info = new FileInfo(path);
        return info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? path;
    }

    private static void AddFile(TarWriter tar, string path, byte[] bytes, bool executable)
    {
        var mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        if (executable)
        {
            mode |= UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
        }
        tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, path.TrimStart('/')) { Mode = mode, DataStream = new MemoryStream(bytes) });
    }
}
