using SandboxKit.Server;

try
{
    // Disposed, not only stopped: singletons such as the disk pool release what they hold (loop devices, images) on disposal.
    await using var app = SandboxServerApp.Build(args);
    SandboxServerApp.EnsureAddressesAreFree(app);
    await SandboxServerApp.StartCheckedAsync(app);
    foreach (var url in app.Urls)
    {
        Console.WriteLine($"SandboxKit server {ServerInfo.Version} listening on {url}");
    }
    await app.WaitForShutdownAsync();
    return 0;
}
catch (StartupException e)
{
    Console.Error.WriteLine($"sandboxkit: {e.Message}");
    return 1;
}
catch (IOException e) when (e.InnerException is Microsoft.AspNetCore.Connections.AddressInUseException || e.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
{
    Console.Error.WriteLine($"sandboxkit: cannot listen: {e.Message} Stop the other process or pass --urls http://127.0.0.1:<port>.");
    return 1;
}
catch (Microsoft.Extensions.Options.OptionsValidationException e)
{
    Console.Error.WriteLine($"sandboxkit: invalid configuration: {string.Join("; ", e.Failures)}");
    return 1;
}
