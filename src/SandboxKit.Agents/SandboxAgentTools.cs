using System.ComponentModel;
using Microsoft.Extensions.AI;
using SandboxKit.Client;
using SandboxKit.Contracts;

namespace SandboxKit.Agents;

/// <summary>
/// The sandbox tools for an application's agents: each call acts on its end user's own sandbox, found through an
/// <see cref="ISandboxSessionProvider"/>, so neither the application nor the model handles session ids. A session that expired
/// is replaced by a new one (the result then carries a <c>notice</c> saying so). Used by the Semantic Kernel plugin and
/// exposed as Microsoft.Extensions.AI functions by <see cref="CreateAIFunctions"/>.
/// </summary>
/// <remarks>
/// The user of a call is, in order: the <c>userId</c> argument (set by the application, never by the model), the ambient
/// <see cref="SandboxUserContext.CurrentUserId"/>, then <see cref="DefaultUserId"/>. With none, the call returns an error result.
/// </remarks>
public sealed class SandboxAgentTools
{
    private const string ReplacedNotice =
        "Your previous sandbox had expired, so this call ran in a new sandbox: files you created before are gone, except in persistent storage.";

    /// <summary>Creates the tools.</summary>
    /// <param name="sessions">Where each user's session comes from (usually a <see cref="UserSandboxSessionProvider"/>).</param>
    /// <param name="options">Limits; <see langword="null"/> for the defaults.</param>
    /// <param name="defaultUserId">User for calls that name none and have no ambient user (e.g. a single-user app).</param>
    public SandboxAgentTools(ISandboxSessionProvider sessions, SandboxToolOptions? options = null, string? defaultUserId = null)
    {
        Sessions = sessions ?? throw new ArgumentNullException(nameof(sessions));
        Tools = new SandboxTools(options);
        DefaultUserId = string.IsNullOrWhiteSpace(defaultUserId) ? null : defaultUserId;
    }

    /// <summary>The session provider.</summary>
    public ISandboxSessionProvider Sessions { get; }

    /// <summary>The shared tool implementation (validation and result shapes).</summary>
    public SandboxTools Tools { get; }

    /// <summary>User for calls that name none and have no ambient user.</summary>
    public string? DefaultUserId { get; }

    /// <summary>The user a call acts for: <paramref name="userId"/>, else the ambient user, else <see cref="DefaultUserId"/>.</summary>
    /// <param name="userId">The user the application named for the call, if any.</param>
    /// <returns>The user, or <see langword="null"/> when there is none.</returns>
    public string? ResolveUserId(string? userId = null) =>
        !string.IsNullOrWhiteSpace(userId) ? userId
        : SandboxUserContext.CurrentUserId ?? DefaultUserId;

    /// <summary>Runs a bash command in the user's sandbox.</summary>
    /// <param name="userId">The end user (application-chosen); <see langword="null"/> for the ambient or default user.</param>
    /// <param name="command">The command, from the model.</param>
    /// <param name="timeoutSeconds">Timeout, from the model.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxCommandResult> RunCommandAsync(string? userId, string command, double? timeoutSeconds = null, CancellationToken cancellationToken = default)
    {
        if (Target(userId) is not { } target)
        {
            return SandboxCommandResult.Failed(NoUser);
        }
        var result = await Tools.RunCommandAsync(target, command, timeoutSeconds, cancellationToken).ConfigureAwait(false);
        return target.Replaced ? result with { Notice = ReplacedNotice } : result;
    }

    /// <summary>Runs Python or JavaScript code in the user's sandbox, in the live interpreter of that language (variables persist
    /// from call to call), or bash in its shell.</summary>
    /// <param name="userId">The end user; <see langword="null"/> for the ambient or default user.</param>
    /// <param name="language">The language, from the model.</param>
    /// <param name="code">The code, from the model.</param>
    /// <param name="timeoutSeconds">Timeout, from the model.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result, with the images the code displayed in <see cref="SandboxCodeResult.Images"/>.</returns>
    public async Task<SandboxCodeResult> RunCodeAsync(string? userId, string language, string code, double? timeoutSeconds = null, CancellationToken cancellationToken = default)
    {
        if (Target(userId) is not { } target)
        {
            return SandboxCodeResult.Failed(NoUser);
        }
        var result = await Tools.RunCodeAsync(target, language, code, timeoutSeconds, cancellationToken).ConfigureAwait(false);
        return target.Replaced ? result with { Notice = ReplacedNotice } : result;
    }

    /// <summary>Writes a text file in the user's sandbox.</summary>
    /// <param name="userId">The end user; <see langword="null"/> for the ambient or default user.</param>
    /// <param name="path">Sandbox path, from the model.</param>
    /// <param name="content">The text, from the model.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileResult> WriteFileAsync(string? userId, string path, string content, CancellationToken cancellationToken = default)
    {
        if (Target(userId) is not { } target)
        {
            return SandboxFileResult.Failed(path, NoUser);
        }
        var result = await Tools.WriteFileAsync(target, path, content, cancellationToken).ConfigureAwait(false);
        return target.Replaced ? result with { Notice = ReplacedNotice } : result;
    }

    /// <summary>Reads a text file from the user's sandbox.</summary>
    /// <param name="userId">The end user; <see langword="null"/> for the ambient or default user.</param>
    /// <param name="path">Sandbox path, from the model.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileResult> ReadFileAsync(string? userId, string path, CancellationToken cancellationToken = default)
    {
        if (Target(userId) is not { } target)
        {
            return SandboxFileResult.Failed(path, NoUser);
        }
        var result = await Tools.ReadFileAsync(target, path, cancellationToken).ConfigureAwait(false);
        return target.Replaced ? result with { Notice = ReplacedNotice } : result;
    }

    /// <summary>Lists a directory of the user's sandbox.</summary>
    /// <param name="userId">The end user; <see langword="null"/> for the ambient or default user.</param>
    /// <param name="path">Sandbox directory, from the model; <see langword="null"/> for <c>/workspace</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileListResult> ListFilesAsync(string? userId, string? path = null, CancellationToken cancellationToken = default)
    {
        if (Target(userId) is not { } target)
        {
            return SandboxFileListResult.Failed(path, NoUser);
        }
        var result = await Tools.ListFilesAsync(target, path, cancellationToken).ConfigureAwait(false);
        return target.Replaced ? result with { Notice = ReplacedNotice } : result;
    }

    /// <summary>Copies a host file from an allowed directory into the user's sandbox (refused unless uploads are configured).</summary>
    /// <param name="userId">The end user; <see langword="null"/> for the ambient or default user.</param>
    /// <param name="hostPath">Host path, from the model.</param>
    /// <param name="sandboxPath">Destination, from the model; <see langword="null"/> for <c>/workspace/&lt;file name&gt;</c>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The structured result.</returns>
    public async Task<SandboxFileResult> UploadFileFromHostAsync(string? userId, string hostPath, string? sandboxPath = null, CancellationToken cancellationToken = default)
    {
        if (Target(userId) is not { } target)
        {
            return SandboxFileResult.Failed(sandboxPath, NoUser);
        }
        var result = await Tools.UploadFileFromHostAsync(target, hostPath, sandboxPath, cancellationToken).ConfigureAwait(false);
        return target.Replaced ? result with { Notice = ReplacedNotice } : result;
    }

    /// <summary>
    /// The tools as Microsoft.Extensions.AI functions, for any <see cref="IChatClient"/> with function invocation
    /// (<c>UseFunctionInvocation()</c>) or an agent of the Microsoft Agent Framework. <c>upload_file_from_host</c> is included
    /// only when uploads from the host are configured.
    /// </summary>
    /// <param name="userId">
    /// Bind the functions to this end user; <see langword="null"/> to resolve the user on each call (ambient, then default).
    /// </param>
    /// <returns>The functions: run_command, run_code, write_file, read_file, list_files and maybe upload_file_from_host. run_code returns
    /// a list of <see cref="AIContent"/>: the JSON result as <see cref="TextContent"/>, then each image as <see cref="DataContent"/>
    /// (see <see cref="SandboxCodeResult.ToAIContents"/> and <see cref="SandboxToolOptions.AttachImages"/>); the others return their JSON result.</returns>
    public IReadOnlyList<AIFunction> CreateAIFunctions(string? userId = null)
    {
        var functions = new List<AIFunction>
        {
            AIFunctionFactory.Create(
                ([Description(SandboxToolDescriptions.CommandParameter)] string command,
                 [Description(SandboxToolDescriptions.TimeoutParameter)] double? timeoutSeconds = null,
                 CancellationToken cancellationToken = default) => RunCommandAsync(userId, command, timeoutSeconds, cancellationToken),
                Options(SandboxToolNames.RunCommand, SandboxToolDescriptions.RunCommand)),
            AIFunctionFactory.Create(
                ([Description(SandboxToolDescriptions.LanguageParameter)] string language,
                 [Description(SandboxToolDescriptions.CodeParameter)] string code,
                 [Description(SandboxToolDescriptions.TimeoutParameter)] double? timeoutSeconds = null,
                 CancellationToken cancellationToken = default) => RunCodeContentsAsync(userId, language, code, timeoutSeconds, cancellationToken),
                Options(SandboxToolNames.RunCode, SandboxToolDescriptions.RunCode)),
            AIFunctionFactory.Create(
                ([Description(SandboxToolDescriptions.PathParameter)] string path,
                 [Description(SandboxToolDescriptions.ContentParameter)] string content,
                 CancellationToken cancellationToken = default) => WriteFileAsync(userId, path, content, cancellationToken),
                Options(SandboxToolNames.WriteFile, SandboxToolDescriptions.WriteFile)),
            AIFunctionFactory.Create(
                ([Description(SandboxToolDescriptions.PathParameter)] string path,
                 CancellationToken cancellationToken = default) => ReadFileAsync(userId, path, cancellationToken),
                Options(SandboxToolNames.ReadFile, SandboxToolDescriptions.ReadFile)),
            AIFunctionFactory.Create(
                ([Description(SandboxToolDescriptions.DirectoryParameter)] string? path = null,
                 CancellationToken cancellationToken = default) => ListFilesAsync(userId, path, cancellationToken),
                Options(SandboxToolNames.ListFiles, SandboxToolDescriptions.ListFiles)),
        };
        if (Tools.UploadsFromHostEnabled)
        {
            functions.Add(AIFunctionFactory.Create(
                ([Description(SandboxToolDescriptions.HostPathParameter)] string hostPath,
                 [Description(SandboxToolDescriptions.PathParameter + " Omit for /workspace/<file name>.")] string? sandboxPath = null,
                 CancellationToken cancellationToken = default) => UploadFileFromHostAsync(userId, hostPath, sandboxPath, cancellationToken),
                Options(SandboxToolNames.UploadFileFromHost, SandboxToolDescriptions.UploadFileFromHost)));
        }
        return functions;
    }

    private async Task<IList<AIContent>> RunCodeContentsAsync(string? userId, string language, string code, double? timeoutSeconds, CancellationToken cancellationToken) =>
        (await RunCodeAsync(userId, language, code, timeoutSeconds, cancellationToken).ConfigureAwait(false)).ToAIContents();

    private const string NoUser = "no sandbox user is set for this call; the application must name the end user.";

    private static AIFunctionFactoryOptions Options(string name, string description) => new() { Name = name, Description = description };

    private ProviderTarget? Target(string? userId) => ResolveUserId(userId) is { } user ? new ProviderTarget(Sessions, user) : null;

    /// <summary>One call's target: the user's session from the provider, replaced once if the server reports it gone.</summary>
    private sealed class ProviderTarget(ISandboxSessionProvider sessions, string userId) : ISandboxToolTarget
    {
        public bool Replaced { get; private set; }

        public Task<ExecuteResult> ExecuteAsync(ExecuteRequest request, CancellationToken cancellationToken) =>
            UseAsync(t => t.ExecuteAsync(request, cancellationToken), cancellationToken);

        public Task<ExecuteResult> RunCodeAsync(RunCodeRequest request, CancellationToken cancellationToken) =>
            UseAsync(t => t.RunCodeAsync(request, cancellationToken), cancellationToken);

        public Task<FileEntry> WriteFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken) =>
            UseAsync(t => t.WriteFileAsync(path, content, cancellationToken), cancellationToken);

        public Task<long> ReadFileAsync(string path, Stream destination, CancellationToken cancellationToken) =>
            UseAsync(t => t.ReadFileAsync(path, destination, cancellationToken), cancellationToken);

        public Task<FileList> ListFilesAsync(string path, CancellationToken cancellationToken) =>
            UseAsync(t => t.ListFilesAsync(path, cancellationToken), cancellationToken);

        private async Task<T> UseAsync<T>(Func<ISandboxToolTarget, Task<T>> call, CancellationToken cancellationToken)
        {
            var session = await sessions.GetSessionAsync(userId, cancellationToken).ConfigureAwait(false);
            try
            {
                return await call(new SandboxSessionToolTarget(session)).ConfigureAwait(false);
            }
            catch (SessionNotFoundException)
            {
                // Expired or deleted: forget it and go on in a new session, once.
                await sessions.InvalidateAsync(userId, session, cancellationToken).ConfigureAwait(false);
                var replacement = await sessions.GetSessionAsync(userId, cancellationToken).ConfigureAwait(false);
                Replaced = true;
                return await call(new SandboxSessionToolTarget(replacement)).ConfigureAwait(false);
            }
        }
    }
}
