using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using SandboxKit.Client.Internal;
using SandboxKit.Contracts;
using WireMock;
using WireMock.Logging;
using WireMock.RequestBuilders;
using WireMock.ResponseBuilders;
using WireMock.Server;

namespace SandboxKit.Client.Tests;

/// <summary>A WireMock server per test, and helpers to build clients and canned answers.</summary>
public abstract class WireMockTestBase
{
    protected WireMockServer Server { get; private set; } = null!;

    protected Uri BaseUri => new(Server.Url!);

    [SetUp]
    public void StartServer() => Server = WireMockServer.Start();

    [TearDown]
    public void StopServer()
    {
        Server.Stop();
        Server.Dispose();
    }

    /// <summary>Options with short retry delays so retry tests stay fast.</summary>
    protected SandboxClientOptions FastOptions(Action<SandboxClientOptions>? tweak = null)
    {
        var options = new SandboxClientOptions
        {
            BaseAddress = BaseUri,
            RetryDelay = TimeSpan.FromMilliseconds(10),
        };
        tweak?.Invoke(options);
        return options;
    }

    protected SandboxClient CreateClient(Action<SandboxClientOptions>? tweak = null) => new(FastOptions(tweak));

    /// <summary>A client whose primary handler is given (e.g. to count attempts or point at a closed port).</summary>
    internal static SandboxClient CreateClient(SandboxClientOptions options, HttpMessageHandler primaryHandler) =>
        new(new SandboxConnection(options, loggerFactory: null, primaryHandler));

    protected IReadOnlyList<ILogEntry> Requests(string method, string path) =>
        Server.LogEntries
            .Where(e => e.RequestMessage.Method.Equals(method, StringComparison.OrdinalIgnoreCase) && e.RequestMessage.Path == path)
            .OrderBy(e => e.RequestMessage.DateTime)
            .ToList();

    /// <summary>Maps GET /v1/sessions/{id} and answers a running session, so <c>AttachSessionAsync</c> works.</summary>
    protected async Task<SandboxSession> AttachAsync(SandboxClient client, string sessionId = "s1")
    {
        Server.Given(Request.Create().WithPath($"/v1/sessions/{sessionId}").UsingGet())
            .RespondWith(Json(200, Session(sessionId)));
        return await client.AttachSessionAsync(sessionId);
    }

    internal static string? Header(IRequestMessage request, string name) =>
        request.Headers?.FirstOrDefault(h => h.Key.Equals(name, StringComparison.OrdinalIgnoreCase)).Value?.FirstOrDefault();

    /// <summary>A query parameter decoded as ASP.NET Core decodes it (names too, e.g. <c>metadata%5Bteam%5D</c>).</summary>
    internal static string? Query(IRequestMessage request, string name) =>
        System.Web.HttpUtility.ParseQueryString(request.RawQuery ?? string.Empty)[name];

    internal static IResponseBuilder Json<T>(int status, T value, JsonTypeInfo<T> typeInfo) =>
        Response.Create()
            .WithStatusCode(status)
            .WithHeader("Content-Type", "application/json")
            .WithBody(JsonSerializer.Serialize(value, typeInfo));

    internal static IResponseBuilder Json(int status, SessionInfo value) => Json(status, value, SandboxJsonContext.Default.SessionInfo);

    internal static IResponseBuilder Json(int status, ExecuteResult value) => Json(status, value, SandboxJsonContext.Default.ExecuteResult);

    internal static IResponseBuilder Problem(int status, string code, string title = "Problem", string? detail = null, string requestId = "req-1") =>
        Response.Create()
            .WithStatusCode(status)
            .WithHeader("Content-Type", "application/problem+json")
            .WithBody(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["type"] = $"https://sandboxkit.dev/problems/{code}",
                ["title"] = title,
                ["status"] = status,
                ["detail"] = detail ?? $"{title} (detail)",
                ["code"] = code,
                ["requestId"] = requestId,
            }));

    internal static SessionInfo Session(string id, string status = "running", string? userId = null, DateTimeOffset? lastActivity = null)
    {
        var now = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        return new SessionInfo
        {
            Id = id,
            Status = status,
            Image = "sandboxkit/sandbox:test",
            UserId = userId,
            Metadata = new Dictionary<string, string>(),
            CreatedAt = now,
            LastActivityAt = lastActivity ?? now,
            ExpiresAt = now.AddMinutes(30),
            MaxExpiresAt = now.AddHours(4),
            MemoryBytes = 512L * 1024 * 1024,
            Cpus = 0.5,
            PidsLimit = 256,
            NetworkMode = "none",
            Runtime = "runc",
        };
    }

    internal static ExecuteResult Result(int exitCode = 0, string stdout = "", string stderr = "", bool timedOut = false) => new()
    {
        ExitCode = exitCode,
        Stdout = stdout,
        Stderr = stderr,
        TimedOut = timedOut,
        OomKilled = false,
        Truncated = false,
        StdoutBytes = stdout.Length,
        StderrBytes = stderr.Length,
        DurationMs = 12.5,
        WorkingDirectory = "/workspace",
    };
}

/// <summary>Counts the attempts that reach the wire, then forwards them.</summary>
internal sealed class CountingHandler(HttpMessageHandler inner) : DelegatingHandler(inner)
{
    private int _count;

    public int Count => Volatile.Read(ref _count);

    public List<string?> IdempotencyKeys { get; } = [];

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _count);
        lock (IdempotencyKeys)
        {
            IdempotencyKeys.Add(request.Headers.TryGetValues("Idempotency-Key", out var values) ? values.FirstOrDefault() : null);
        }

        return base.SendAsync(request, cancellationToken);
    }
}

/// <summary>A read-only stream that hands out 1-3 bytes per read (seeded), to split SSE frames and UTF-8 sequences anywhere.</summary>
internal sealed class TricklingStream(byte[] data, int seed) : Stream
{
    private readonly Random _random = new(seed);
    private int _position;

    public int Reads { get; private set; }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => data.Length;
    public override long Position { get => _position; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        var n = Math.Min(Math.Min(_random.Next(1, 4), buffer.Length), data.Length - _position);
        data.AsSpan(_position, n).CopyTo(buffer);
        _position += n;
        Reads++;
        return n;
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        return Read(buffer.Span);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
