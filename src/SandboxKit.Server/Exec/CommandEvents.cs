using System.Runtime.CompilerServices;
using System.Text;
using SandboxKit.Contracts;

namespace SandboxKit.Server.Exec;

/// <summary>A command's updates as the API's <see cref="CommandEvent"/>s (SSE, WebSocket): output decoded as UTF-8 per stream.</summary>
internal static class CommandEvents
{
    public static async IAsyncEnumerable<CommandEvent> ReadEventsAsync(this CommandHandle handle, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var stdout = Encoding.UTF8.GetDecoder();
        var stderr = Encoding.UTF8.GetDecoder();
        await foreach (var update in handle.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            switch (update)
            {
                case CommandUpdate.Started s:
                    yield return new CommandEvent { Type = CommandEventTypes.Started, Pid = s.Pid };
                    break;
                case CommandUpdate.Output o:
                    var text = Decode(o.IsStderr ? stderr : stdout, o.Bytes.Span);
                    if (text.Length > 0)
                    {
                        yield return new CommandEvent { Type = o.IsStderr ? CommandEventTypes.Stderr : CommandEventTypes.Stdout, Data = text };
                    }
                    break;
                case CommandUpdate.Exited x:
                    yield return new CommandEvent { Type = CommandEventTypes.Exited, Result = x.Result };
                    yield break;
            }
        }
    }

    /// <summary>Decodes a chunk of a UTF-8 stream; a character split across chunks is completed by the next one.</summary>
    public static string Decode(Decoder decoder, ReadOnlySpan<byte> bytes)
    {
        var chars = new char[decoder.GetCharCount(bytes, flush: false)];
        var count = decoder.GetChars(bytes, chars, flush: false);
        return new string(chars, 0, count);
    }
}
