using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using SandboxKit.Contracts;

namespace SandboxKit.Tests;

/// <summary>Files through the agent: binary-exact round trips on the writable places of a read-only rootfs.</summary>
[TestFixture]
public sealed class FileTests : SessionFixture
{
    protected override IDictionary<string, string?> Settings => new Dictionary<string, string?> { ["Sandbox:MaxFileBytes"] = (4 << 20).ToString() };

    private string Url(string path) => $"/v1/sessions/{SessionId}/files?path={Uri.EscapeDataString(path)}";

    [TestCase("/workspace/data/blob.bin")]
    [TestCase("/tmp/blob.bin")]
    [TestCase("relative/blob.bin")]
    public async Task Binary_round_trip_is_exact(string path)
    {
        var bytes = new byte[3 * 65536 + 17];
        new Random(42).NextBytes(bytes);
        var put = await Host.Http.PutAsync(Url(path), new ByteArrayContent(bytes));
        await ServerHost.EnsureAsync(put, HttpStatusCode.Created);
        var entry = await put.Content.ReadFromJsonAsync(SandboxJsonContext.Default.FileEntry);
        Assert.That(entry!.Size, Is.EqualTo(bytes.Length));
        Assert.That(await Host.Http.GetByteArrayAsync(Url(path)), Is.EqualTo(bytes));
        var sum = await Host.ExecuteAsync(SessionId, $"cd /workspace && sha256sum '{path}' | cut -c1-64");
        Assert.That(sum.Stdout.Trim(), Is.EqualTo(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes))));
    }

    [Test]
    public async Task Files_written_by_commands_can_be_read_and_listed_and_deleted()
    {
        await Host.ExecuteAsync(SessionId, "mkdir -p /workspace/list && printf 'x\\0y' > /workspace/list/a && mkdir /workspace/list/sub");
        Assert.That(await Host.Http.GetByteArrayAsync(Url("/workspace/list/a")), Is.EqualTo(new byte[] { (byte)'x', 0, (byte)'y' }));
        var list = await Host.Http.GetFromJsonAsync($"/v1/sessions/{SessionId}/files/list?path=/workspace/list", SandboxJsonContext.Default.FileList);
        Assert.That(list!.Entries.Select(e => (e.Name, e.Type)), Is.EqualTo(new[] { ("a", "file"), ("sub", "dir") }));

        Assert.That((await Host.Http.DeleteAsync(Url("/workspace/list"))).StatusCode, Is.EqualTo(HttpStatusCode.Conflict), "non-empty directory without recursive");
        Assert.That((await Host.Http.DeleteAsync(Url("/workspace/list") + "&recursive=true")).StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        Assert.That((await Host.Http.GetAsync(Url("/workspace/list/a"))).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task Directories_can_be_made()
    {
        var response = await Host.Http.PostAsync($"/v1/sessions/{SessionId}/directories?path=/workspace/made/deep", null);
        await ServerHost.EnsureAsync(response, HttpStatusCode.Created);
        Assert.That((await response.Content.ReadFromJsonAsync(SandboxJsonContext.Default.FileEntry))!.Type, Is.EqualTo("dir"));
        Assert.That((await Host.ExecuteAsync(SessionId, "test -d /workspace/made/deep && echo yes")).Stdout, Is.EqualTo("yes\n"));
    }

    [Test]
    public async Task Multipart_upload_writes_each_file_into_the_directory()
    {
        using var form = new MultipartFormDataContent
        {
            { new ByteArrayContent("first"u8.ToArray()), "files", "one.txt" },
            { new ByteArrayContent([0, 1, 2, 255]), "files", "two.bin" },
        };
        var response = await Host.Http.PostAsync($"/v1/sessions/{SessionId}/files?path=/workspace/up", form);
        await ServerHost.EnsureAsync(response, HttpStatusCode.Created);
        Assert.That((await Host.ExecuteAsync(SessionId, "cat /workspace/up/one.txt; od -An -tu1 /workspace/up/two.bin | tr -s ' '")).Stdout,
            Is.EqualTo("first 0 1 2 255\n"));
    }

    [Test]
    public async Task Bad_file_requests_get_clear_errors_and_leave_nothing_half_written()
    {
        Assert.That((await Host.Http.GetAsync(Url("/workspace/missing"))).StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        var readOnly = await Host.Http.PutAsync(Url("/etc/evil"), new ByteArrayContent([1]));
        Assert.That(readOnly.StatusCode, Is.EqualTo(HttpStatusCode.Forbidden));
        Assert.That((await Host.Http.PutAsync($"/v1/sessions/{SessionId}/files", new ByteArrayContent([1]))).StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));

        // The server answers 413 before reading the whole body and then closes the connection: do not pool it.
        using var tooBigRequest = new HttpRequestMessage(HttpMethod.Put, Url("/workspace/big.bin")) { Content = new ByteArrayContent(new byte[5 << 20]) };
        tooBigRequest.Headers.ConnectionClose = true;
        var tooBig = await Host.Http.SendAsync(tooBigRequest);
        Assert.That(tooBig.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        var chunked = new StreamContent(new MemoryStream(new byte[5 << 20]));
        chunked.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var request = new HttpRequestMessage(HttpMethod.Put, Url("/workspace/big2.bin")) { Content = chunked };
        request.Headers.TransferEncodingChunked = true;
        request.Headers.ConnectionClose = true;
        Assert.That((await Host.Http.SendAsync(request)).StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        Assert.That((await Host.ExecuteAsync(SessionId, "ls -A /workspace | grep -c big || true")).Stdout.Trim(), Is.EqualTo("0"));
    }
}
