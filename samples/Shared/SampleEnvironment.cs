using System.ClientModel;
using System.ClientModel.Primitives;
using Microsoft.Extensions.AI;
using OpenAI;

namespace SandboxKit.Samples;

/// <summary>Where the samples find the server and the model.</summary>
public static class SampleEnvironment
{
    /// <summary>The server: the first argument, else SANDBOXKIT_URL, else http://127.0.0.1:5000.</summary>
    public static Uri ServerUrl(string[] args)
    {
        var url = args.FirstOrDefault(a => !a.StartsWith('-'))
            ?? (Environment.GetEnvironmentVariable("SANDBOXKIT_URL") is { Length: > 0 } fromEnv ? fromEnv : "http://127.0.0.1:5000");
        return new Uri(url);
    }

    /// <summary>The server's API key, from SANDBOXKIT_API_KEY (none when unset).</summary>
    public static string? ApiKey => Environment.GetEnvironmentVariable("SANDBOXKIT_API_KEY") is { Length: > 0 } key ? key : null;

    /// <summary>
    /// The model's chat client when one is configured, else <see langword="null"/> (the sample then runs its script):
    /// Azure OpenAI (AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY, AZURE_OPENAI_DEPLOYMENT),
    /// an OpenAI-compatible endpoint (OPENAI_API_KEY, optional OPENAI_BASE_URL and OPENAI_MODEL),
    /// or Ollama through its OpenAI-compatible API (OLLAMA_MODEL, optional OLLAMA_ENDPOINT).
    /// </summary>
    /// <param name="mode">What the sample prints: "model &lt;name&gt; (...)" or "scripted (no model configured)".</param>
    public static IChatClient? CreateModelClient(out string mode)
    {
        var azureEndpoint = Get("AZURE_OPENAI_ENDPOINT");
        var azureKey = Get("AZURE_OPENAI_API_KEY");
        var azureDeployment = Get("AZURE_OPENAI_DEPLOYMENT");
        if (azureEndpoint is not null && azureKey is not null && azureDeployment is not null)
        {
            // Azure OpenAI's v1 API is OpenAI-compatible; it takes the key in an api-key header.
            var options = new OpenAIClientOptions { Endpoint = new Uri(azureEndpoint.TrimEnd('/') + "/openai/v1/") };
            options.AddPolicy(new HeaderPolicy("api-key", azureKey), PipelinePosition.PerCall);
            mode = $"model {azureDeployment} (Azure OpenAI at {azureEndpoint})";
            return new OpenAIClient(new ApiKeyCredential(azureKey), options).GetChatClient(azureDeployment).AsIChatClient();
        }

        if (Get("OPENAI_API_KEY") is { } openAiKey)
        {
            var model = Get("OPENAI_MODEL") ?? "gpt-4o-mini";
            var options = new OpenAIClientOptions();
            if (Get("OPENAI_BASE_URL") is { } baseUrl)
            {
                options.Endpoint = new Uri(baseUrl);
            }
            mode = $"model {model} (OpenAI-compatible at {options.Endpoint?.ToString() ?? "api.openai.com"})";
            return new OpenAIClient(new ApiKeyCredential(openAiKey), options).GetChatClient(model).AsIChatClient();
        }

        if (Get("OLLAMA_MODEL") is { } ollamaModel)
        {
            var endpoint = Get("OLLAMA_ENDPOINT") ?? "http://localhost:11434";
            var options = new OpenAIClientOptions { Endpoint = new Uri(endpoint.TrimEnd('/') + "/v1/") };
            mode = $"model {ollamaModel} (Ollama at {endpoint})";
            return new OpenAIClient(new ApiKeyCredential("ollama"), options).GetChatClient(ollamaModel).AsIChatClient();
        }

        mode = "scripted (no model configured)";
        return null;
    }

    private static string? Get(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } value ? value : null;

    private sealed class HeaderPolicy(string name, string value) : PipelinePolicy
    {
        public override void Process(PipelineMessage message, IReadOnlyList<PipelinePolicy> pipeline, int currentIndex)
        {
            message.Request.Headers.Set(name, value);
            ProcessNext(message, pipeline, currentIndex);
        }

        public override ValueTask ProcessAsync(PipelineMessage message, IReadOnlyList<PipelinePolicy> pipeline, int currentIndex)
        {
            message.Request.Headers.Set(name, value);
            return ProcessNextAsync(message, pipeline, currentIndex);
        }
    }
}
