using System.ComponentModel;
using Microsoft.SemanticKernel;
using SandboxKit.Agents;

namespace SandboxKit.SemanticKernel;

/// <summary>
/// Semantic Kernel plugin that lets a model run bash commands, run Python and JavaScript code in live interpreters (state
/// persists between calls; figures come back as images), and read, write and list files in its end user's own SandboxKit
/// sandbox (an isolated container without network). Results are structured JSON
/// (<c>status</c> ok/error/timeout, <c>exitCode</c>, <c>stdout</c>, <c>stderr</c>, <c>truncated</c>, <c>error</c>), never bare strings.
/// Add it with <see cref="SandboxKernelExtensions.AddSandboxPlugin(KernelPluginCollection, SandboxAgentTools, string)"/>.
/// </summary>
/// <remarks>
/// The end user of a call is taken from <see cref="Kernel.Data"/> under <see cref="UserIdKey"/> (see
/// <see cref="SandboxKernelExtensions.ForSandboxUser"/>), else from <see cref="SandboxUserContext"/>, else the tools' default user.
/// It is never taken from <see cref="KernelArguments"/>: when a model calls a function, the arguments are the model's.
/// </remarks>
/// <param name="tools">The tools; they own validation, the session provider and the result shapes.</param>
public sealed class SandboxPlugin(SandboxAgentTools tools)
{
    /// <summary>The plugin name used when none is given.</summary>
    public const string DefaultName = "sandbox";

    /// <summary>Key in <see cref="Kernel.Data"/> of the end user's id.</summary>
    public const string UserIdKey = "SandboxKit.UserId";

    private readonly SandboxAgentTools _tools = tools ?? throw new ArgumentNullException(nameof(tools));

    /// <summary>The tools behind the plugin.</summary>
    public SandboxAgentTools Tools => _tools;

    /// <summary>Runs a bash command in the user's sandbox.</summary>
    /// <param name="kernel">The kernel (supplies the user).</param>
    /// <param name="command">The command.</param>
    /// <param name="timeoutSeconds">Timeout in seconds.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    [KernelFunction(SandboxToolNames.RunCommand)]
    [Description(SandboxToolDescriptions.RunCommand)]
    public Task<SandboxCommandResult> RunCommandAsync(
        Kernel kernel,
        [Description(SandboxToolDescriptions.CommandParameter)] string command,
        [Description(SandboxToolDescriptions.TimeoutParameter)] double? timeoutSeconds = null,
        CancellationToken cancellationToken = default) =>
        _tools.RunCommandAsync(UserOf(kernel), command, timeoutSeconds, cancellationToken);

    /// <summary>Runs Python or JavaScript code in the user's sandbox, in the live interpreter of that language (variables persist
    /// from call to call), or bash in its shell.</summary>
    /// <param name="kernel">The kernel (supplies the user).</param>
    /// <param name="language">python, javascript or bash.</param>
    /// <param name="code">The code.</param>
    /// <param name="timeoutSeconds">Timeout in seconds.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The JSON result with the images the code displayed (as <see cref="ImageContent"/> and as Microsoft.Extensions.AI
    /// content); as text, only the JSON (see <see cref="SandboxKernelCodeContents"/>).</returns>
    [KernelFunction(SandboxToolNames.RunCode)]
    [Description(SandboxToolDescriptions.RunCode)]
    public async Task<SandboxKernelCodeContents> RunCodeAsync(
        Kernel kernel,
        [Description(SandboxToolDescriptions.LanguageParameter)] string language,
        [Description(SandboxToolDescriptions.CodeParameter)] string code,
        [Description(SandboxToolDescriptions.TimeoutParameter)] double? timeoutSeconds = null,
        CancellationToken cancellationToken = default) =>
        new(await _tools.RunCodeAsync(UserOf(kernel), language, code, timeoutSeconds, cancellationToken).ConfigureAwait(false));

    /// <summary>Writes a text file in the user's sandbox.</summary>
    /// <param name="kernel">The kernel (supplies the user).</param>
    /// <param name="path">Sandbox path.</param>
    /// <param name="content">The text.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    [KernelFunction(SandboxToolNames.WriteFile)]
    [Description(SandboxToolDescriptions.WriteFile)]
    public Task<SandboxFileResult> WriteFileAsync(
        Kernel kernel,
        [Description(SandboxToolDescriptions.PathParameter)] string path,
        [Description(SandboxToolDescriptions.ContentParameter)] string content,
        CancellationToken cancellationToken = default) =>
        _tools.WriteFileAsync(UserOf(kernel), path, content, cancellationToken);

    /// <summary>Reads a text file from the user's sandbox.</summary>
    /// <param name="kernel">The kernel (supplies the user).</param>
    /// <param name="path">Sandbox path.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    [KernelFunction(SandboxToolNames.ReadFile)]
    [Description(SandboxToolDescriptions.ReadFile)]
    public Task<SandboxFileResult> ReadFileAsync(
        Kernel kernel,
        [Description(SandboxToolDescriptions.PathParameter)] string path,
        CancellationToken cancellationToken = default) =>
        _tools.ReadFileAsync(UserOf(kernel), path, cancellationToken);

    /// <summary>Lists a directory of the user's sandbox.</summary>
    /// <param name="kernel">The kernel (supplies the user).</param>
    /// <param name="path">Sandbox directory; omitted for /workspace.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    [KernelFunction(SandboxToolNames.ListFiles)]
    [Description(SandboxToolDescriptions.ListFiles)]
    public Task<SandboxFileListResult> ListFilesAsync(
        Kernel kernel,
        [Description(SandboxToolDescriptions.DirectoryParameter)] string? path = null,
        CancellationToken cancellationToken = default) =>
        _tools.ListFilesAsync(UserOf(kernel), path, cancellationToken);

    /// <summary>
    /// Copies a host file into the user's sandbox, only from <see cref="SandboxToolOptions.AllowedUploadDirectories"/>.
    /// Offered to the model only when those are configured.
    /// </summary>
    /// <param name="kernel">The kernel (supplies the user).</param>
    /// <param name="hostPath">Absolute host path.</param>
    /// <param name="sandboxPath">Destination; omitted for /workspace/&lt;file name&gt;.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    [KernelFunction(SandboxToolNames.UploadFileFromHost)]
    [Description(SandboxToolDescriptions.UploadFileFromHost)]
    public Task<SandboxFileResult> UploadFileFromHostAsync(
        Kernel kernel,
        [Description(SandboxToolDescriptions.HostPathParameter)] string hostPath,
        [Description(SandboxToolDescriptions.PathParameter + " Omit for /workspace/<file name>.")] string? sandboxPath = null,
        CancellationToken cancellationToken = default) =>
        _tools.UploadFileFromHostAsync(UserOf(kernel), hostPath, sandboxPath, cancellationToken);

    private static string? UserOf(Kernel kernel) =>
        kernel is not null && kernel.Data.TryGetValue(UserIdKey, out var value) && value is string { Length: > 0 } userId ? userId : null;
}

/// <summary>Registers the <see cref="SandboxPlugin"/> and sets the end user of a kernel.</summary>
public static class SandboxKernelExtensions
{
    /// <summary>Adds the sandbox plugin (run_command, run_code, write_file, read_file, list_files, and upload_file_from_host when configured).</summary>
    /// <param name="plugins">The kernel's plugins.</param>
    /// <param name="tools">The tools.</param>
    /// <param name="pluginName">The plugin name.</param>
    /// <returns>The added plugin.</returns>
    public static KernelPlugin AddSandboxPlugin(this KernelPluginCollection plugins, SandboxAgentTools tools, string pluginName = SandboxPlugin.DefaultName)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        var plugin = CreatePlugin(tools, pluginName);
        plugins.Add(plugin);
        return plugin;
    }

    /// <summary>Adds the sandbox plugin to a kernel builder.</summary>
    /// <param name="plugins">The builder's plugins.</param>
    /// <param name="tools">The tools.</param>
    /// <param name="pluginName">The plugin name.</param>
    /// <returns>The builder's plugins, for chaining.</returns>
    public static IKernelBuilderPlugins AddSandboxPlugin(this IKernelBuilderPlugins plugins, SandboxAgentTools tools, string pluginName = SandboxPlugin.DefaultName)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        var plugin = CreatePlugin(tools, pluginName);
        return plugins.Add(plugin);
    }

    /// <summary>Creates the sandbox plugin without adding it anywhere.</summary>
    /// <param name="tools">The tools.</param>
    /// <param name="pluginName">The plugin name.</param>
    /// <returns>The plugin.</returns>
    public static KernelPlugin CreatePlugin(SandboxAgentTools tools, string pluginName = SandboxPlugin.DefaultName)
    {
        ArgumentNullException.ThrowIfNull(tools);
        var all = KernelPluginFactory.CreateFromObject(new SandboxPlugin(tools), pluginName);
        if (tools.Tools.UploadsFromHostEnabled)
        {
            return all;
        }
        // No allowed directories: the model is not even offered the upload function.
        return KernelPluginFactory.CreateFromFunctions(pluginName, all.Description, all.Where(f => f.Name != SandboxToolNames.UploadFileFromHost));
    }

    /// <summary>A clone of the kernel whose sandbox calls act for <paramref name="userId"/> (stored in <see cref="Kernel.Data"/>).</summary>
    /// <param name="kernel">The kernel; not changed.</param>
    /// <param name="userId">The application's id for the end user.</param>
    /// <returns>The clone, sharing the kernel's services and plugins.</returns>
    public static Kernel ForSandboxUser(this Kernel kernel, string userId)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentException.ThrowIfNullOrWhiteSpace(userId);
        var clone = kernel.Clone();
        clone.Data[SandboxPlugin.UserIdKey] = userId;
        return clone;
    }
}
