namespace SandboxKit.Agent;

/// <summary>
/// Parses bash's <c>export -p</c> listing (untrusted: written by the command's shell). Records are
/// <c>declare -FLAGS NAME[=VALUE]</c> or, in posix mode, <c>export [-FLAGS] NAME[=VALUE]</c>, one per line; VALUE is
/// <c>"double quoted"</c>, <c>$'ANSI-C quoted'</c> or an <c>(array)</c>. Exported scalars are returned; variables
/// that are exported but unset, and arrays (which never reach a child's environment), are skipped. Anything that
/// does not parse makes the whole listing invalid (null).
/// </summary>
internal static class ExportParser
{
    internal static List<KeyValuePair<string, byte[]>>? Parse(ReadOnlySpan<byte> text)
    {
        var result = new List<KeyValuePair<string, byte[]>>();
        var value = new List<byte>();
        var pos = 0;
        while (pos < text.Length)
        {
            if (!Literal(text, ref pos, "declare"u8) && !Literal(text, ref pos, "export"u8))
            {
                return null;
            }
            var isArray = false;
            if (pos + 1 < text.Length && text[pos] == ' ' && text[pos + 1] == '-')
            {
                pos += 2;
                var start = pos;
                while (pos < text.Length && (IsLetter(text[pos]) || text[pos] == '-'))
                {
                    isArray |= text[pos] is (byte)'a' or (byte)'A';
                    pos++;
                }
                if (pos == start)
                {
                    return null;
                }
            }
            if (pos >= text.Length || text[pos] != ' ')
            {
                return null;
            }
            pos++;
            var nameStart = pos;
            if (pos >= text.Length || !(IsLetter(text[pos]) || text[pos] == '_'))
            {
                return null;
            }
            while (pos < text.Length && (IsLetter(text[pos]) || IsDigit(text[pos]) || text[pos] == '_'))
            {
                pos++;
            }
            var name = EnvSnapshot.Key(text[nameStart..pos]);
            var hasValue = false;
            value.Clear();
            if (pos < text.Length && text[pos] == '=')
            {
                pos++;
                if (pos >= text.Length)
                {
                    return null;
                }
                if (text[pos] == '"')
                {
                    if (!DoubleQuoted(text, ref pos, value))
                    {
                        return null;
                    }
                    hasValue = true;
                }
                else if (text[pos] == '$' && pos + 1 < text.Length && text[pos + 1] == '\'')
                {
                    pos++;
                    if (!AnsiQuoted(text, ref pos, value))
                    {
                        return null;
                    }
                    hasValue = true;
                }
                else if (text[pos] == '(')
                {
                    if (!SkipArray(text, ref pos))
                    {
                        return null;
                    }
                    isArray = true;
                }
                else
                {
                    return null;
                }
            }
            if (pos >= text.Length || text[pos] != '\n')
            {
                return null;
            }
            pos++;
            if (hasValue && !isArray)
            {
                result.Add(new KeyValuePair<string, byte[]>(name, value.ToArray()));
            }
        }
        return result;
    }

    internal static bool IsIdentifier(string name)
    {
        if (name.Length == 0 || !(IsLetter(name[0]) || name[0] == '_'))
        {
            return false;
        }
        foreach (var c in name)
        {
            if (!(IsLetter(c) || IsDigit(c) || c == '_'))
            {
                return false;
            }
        }
        return true;
    }

    private static bool IsLetter(int c) => c is >= 'A' and <= 'Z' or >= 'a' and <= 'z';

    private static bool IsDigit(int c) => c is >= '0' and <= '9';

    private static bool Literal(ReadOnlySpan<byte> text, ref int pos, ReadOnlySpan<byte> word)
    {
        if (text[pos..].StartsWith(word))
        {
            pos += word.Length;
            return true;
        }
        return false;
    }

    // "..." : a backslash escapes any byte; only \$ \` \" \\ and \newline lose it (bash's double-quote rules).
    private static bool DoubleQuoted(ReadOnlySpan<byte> text, ref int pos, List<byte> value)
    {
        pos++; // opening quote
        while (pos < text.Length)
        {
            var c = text[pos];
            if (c == '"')
            {
                pos++;
                return true;
            }
            if (c == '\\')
            {
                if (pos + 1 >= text.Length)
                {
                    return false;
                }
                var next = text[pos + 1];
                if (next is (byte)'$' or (byte)'`' or (byte)'"' or (byte)'\\' or (byte)'\n')
                {
                    value.Add(next);
                }
                else
                {
                    value.Add(c);
                    value.Add(next);
                }
                pos += 2;
                continue;
            }
            value.Add(c);
            pos++;
        }
        return false;
    }

    // $'...' : \ooo (1-3 octal digits), \xHH (1-2 hex digits), the named escapes, else the escaped byte itself.
    private static bool AnsiQuoted(ReadOnlySpan<byte> text, ref int pos, List<byte> value)
    {
        pos++; // opening quote
        while (pos < text.Length)
        {
            var c = text[pos];
            if (c == '\'')
            {
                pos++;
                return true;
            }
            if (c != '\\')
            {
                value.Add(c);
                pos++;
                continue;
            }
            if (pos + 1 >= text.Length)
            {
                return false;
            }
            var e = text[pos + 1];
            pos += 2;
            if (e is >= (byte)'0' and <= (byte)'7')
            {
                var n = e - '0';
                for (var i = 0; i < 2 && pos < text.Length && text[pos] is >= (byte)'0' and <= (byte)'7'; i++)
                {
                    n = n * 8 + (text[pos] - '0');
                    pos++;
                }
                value.Add((byte)(n & 0xFF));
                continue;
            }
            if (e == 'x' && pos < text.Length && HexValue(text[pos]) >= 0)
            {
                var n = HexValue(text[pos]);
                pos++;
                if (pos < text.Length && HexValue(text[pos]) >= 0)
                {
                    n = n * 16 + HexValue(text[pos]);
                    pos++;
                }
                value.Add((byte)n);
                continue;
            }
            value.Add(e switch
            {
                (byte)'a' => 0x07,
                (byte)'b' => 0x08,
                (byte)'e' or (byte)'E' => 0x1B,
                (byte)'f' => 0x0C,
                (byte)'n' => 0x0A,
                (byte)'r' => 0x0D,
                (byte)'t' => 0x09,
                (byte)'v' => 0x0B,
                _ => e,
            });
        }
        return false;
    }

    private static int HexValue(byte c) => c switch
    {
        >= (byte)'0' and <= (byte)'9' => c - '0',
        >= (byte)'a' and <= (byte)'f' => c - 'a' + 10,
        >= (byte)'A' and <= (byte)'F' => c - 'A' + 10,
        _ => -1,
    };

    // (...) : elements with quoted parts; a ')' inside quotes or after a backslash does not end it.
    private static bool SkipArray(ReadOnlySpan<byte> text, ref int pos)
    {
        pos++; // (
        var scratch = new List<byte>();
        while (pos < text.Length)
        {
            var c = text[pos];
            if (c == ')')
            {
                pos++;
                return true;
            }
            if (c == '\\')
            {
                pos += 2;
                continue;
            }
            if (c == '"')
            {
                scratch.Clear();
                if (!DoubleQuoted(text, ref pos, scratch))
                {
                    return false;
                }
                continue;
            }
            if (c == '$' && pos + 1 < text.Length && text[pos + 1] == '\'')
            {
                pos++;
                scratch.Clear();
                if (!AnsiQuoted(text, ref pos, scratch))
                {
                    return false;
                }
                continue;
            }
            if (c == '\'')
            {
                var end = text[(pos + 1)..].IndexOf((byte)'\'');
                if (end < 0)
                {
                    return false;
                }
                pos += end + 2;
                continue;
            }
            pos++;
        }
        return false;
    }
}
