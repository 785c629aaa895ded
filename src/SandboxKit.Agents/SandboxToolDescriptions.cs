namespace SandboxKit.Agents;

/// <summary>The model-facing names of the sandbox tools, the same for Semantic Kernel, Microsoft.Extensions.AI and MCP.</summary>
public static class SandboxToolNames
{
    /// <summary>Runs a bash command.</summary>
    public const string RunCommand = "run_command";

    /// <summary>Runs Python or JavaScript code in a live interpreter (state persists between calls), or bash.</summary>
    public const string RunCode = "run_code";

    /// <summary>Writes a text file.</summary>
    public const string WriteFile = "write_file";

    /// <summary>Reads a text file.</summary>
    public const string ReadFile = "read_file";

    /// <summary>Lists a directory.</summary>
    public const string ListFiles = "list_files";

    /// <summary>Copies a file from the application's host into the sandbox (only from configured directories).</summary>
    public const string UploadFileFromHost = "upload_file_from_host";
}

/// <summary>
/// Descriptions written for the model, shared by every integration so the model sees the same contract everywhere.
/// Constants, so they can be used in <c>[Description]</c> attributes.
/// </summary>
public static class SandboxToolDescriptions
{
    private const string Sandbox =
        "The sandbox is an isolated Linux container with no network access; bash, coreutils, git, jq, python3 and node are installed. " +
        "Files persist between calls; the default directory is /workspace.";

    private const string CommandResultShape =
        " Returns JSON {status, exitCode, stdout, stderr, truncated, error}: status is \"ok\" only when the exit code is 0, " +
        "\"error\" when the command failed (non-zero exitCode) or could not run (then error says why), " +
        "\"timeout\" when it ran out of time and was killed. truncated=true means the middle of long output was cut.";

    /// <summary>Description of <see cref="SandboxToolNames.RunCommand"/>.</summary>
    public const string RunCommand =
        "Run a bash command in your sandbox and wait for it to finish. " + Sandbox +
        " The working directory and exported variables persist between run_command calls. Commands cannot read stdin." + CommandResultShape;

    /// <summary>Description of <see cref="SandboxToolNames.RunCode"/>.</summary>
    public const string RunCode =
        "Run Python or JavaScript code in a live interpreter in your sandbox, like a notebook cell, and wait for it to finish: " +
        "variables, imports and functions persist between run_code calls of the same language. " + Sandbox +
        " pandas, numpy and matplotlib are available to Python. The value of the last expression comes back as a result, and " +
        "matplotlib figures (plt.show()) come back as images. \"bash\" runs the code in the shell instead." +
        " Returns JSON {status, exitCode, stdout, stderr, results: [{isMainResult, formats, text, image, note}], error, traceback, " +
        "executionCount, stateLost, truncated}: status is \"ok\" when the code ran to its end, \"error\" when it raised (error is " +
        "\"ExceptionName: message\", traceback has the details) or could not run, \"timeout\" when it ran out of time and was " +
        "interrupted (variables are kept unless stateLost is true). text is a result's plain-text form; image=N means the Nth " +
        "image attached after the JSON shows it. truncated=true means long output was cut.";

    /// <summary>Description of <see cref="SandboxToolNames.WriteFile"/>.</summary>
    public const string WriteFile =
        "Create or replace a UTF-8 text file in your sandbox (parent directories are created). " +
        "Returns JSON {status, path, size, error}; status is \"ok\" or \"error\".";

    /// <summary>Description of <see cref="SandboxToolNames.ReadFile"/>.</summary>
    public const string ReadFile =
        "Read a UTF-8 text file from your sandbox. Returns JSON {status, path, content, size, truncated, error}; " +
        "truncated=true means only the beginning of a large file is in content (use run_command with head, tail or grep for the rest). " +
        "Binary files are refused.";

    /// <summary>Description of <see cref="SandboxToolNames.ListFiles"/>.</summary>
    public const string ListFiles =
        "List a directory in your sandbox. Returns JSON {status, path, entries: [{name, type, size}], truncated, error}; " +
        "type is file, dir, symlink or other.";

    /// <summary>Description of <see cref="SandboxToolNames.UploadFileFromHost"/>.</summary>
    public const string UploadFileFromHost =
        "Copy a file that the application provides on its host into your sandbox. Only files inside the directories the application " +
        "allows can be copied. Returns JSON {status, path, size, error}.";

    /// <summary>Description of a command parameter.</summary>
    public const string CommandParameter = "The bash command line, e.g. \"ls -la\" or \"cd src && make\".";

    /// <summary>Description of a timeout parameter.</summary>
    public const string TimeoutParameter = "Seconds before the command and all its child processes are killed. Omit for the default.";

    /// <summary>Description of a language parameter.</summary>
    public const string LanguageParameter = "\"python\", \"javascript\" or \"bash\".";

    /// <summary>Description of a code parameter.</summary>
    public const string CodeParameter = "The code to run; the value of its last expression is returned. Earlier run_code calls' variables are still defined.";

    /// <summary>Description of a sandbox path parameter.</summary>
    public const string PathParameter = "Path inside the sandbox: absolute, or relative to /workspace.";

    /// <summary>Description of a directory path parameter.</summary>
    public const string DirectoryParameter = "Directory inside the sandbox: absolute, or relative to /workspace. Omit for /workspace.";

    /// <summary>Description of a file content parameter.</summary>
    public const string ContentParameter = "The complete text to write.";

    /// <summary>Description of a host path parameter.</summary>
    public const string HostPathParameter = "Path of the file on the application's host.";
}
