namespace SandboxKit.Server.Api;

/// <summary>
/// The web terminal: a line-oriented console over the command WebSocket. Each line runs in the session's shell
/// state (cd and exports stick); while a command runs, typed lines go to its stdin. Full-screen programs (vim, top)
/// need a PTY and are not supported.
/// </summary>
internal static class TerminalPage
{
    public const string Html = """
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SandboxKit terminal</title>
<style>
  body { margin: 0; background: #111; color: #ddd; font: 14px/1.4 ui-monospace, Menlo, Consolas, monospace; }
  header { padding: 8px 12px; background: #222; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
  header input { background: #111; color: #ddd; border: 1px solid #444; padding: 4px 6px; font: inherit; }
  button { background: #2d6cdf; color: #fff; border: 0; padding: 5px 10px; font: inherit; cursor: pointer; }
  button.secondary { background: #444; }
  #out { padding: 12px; white-space: pre-wrap; word-break: break-all; height: calc(100vh - 110px); overflow-y: auto; }
  .err { color: #f77; } .info { color: #7ad; } .cmd { color: #9e9; }
  #line { display: flex; padding: 0 12px 12px; gap: 6px; }
  #prompt { color: #9e9; white-space: nowrap; }
  #input { flex: 1; background: #111; color: #ddd; border: 0; outline: none; font: inherit; }
</style>
</head>
<body>
<header>
  <label>API key <input id="key" type="password" placeholder="(none)" size="18"></label>
  <label>session <input id="session" placeholder="new" size="34"></label>
  <button id="connect">Connect</button>
  <button id="interrupt" class="secondary" title="Send SIGINT to the running command">Ctrl+C</button>
  <button id="end" class="secondary" title="Delete the session">Delete session</button>
</header>
<div id="out"></div>
<div id="line"><span id="prompt">$</span><input id="input" autocomplete="off" spellcheck="false" disabled></div>
<script>
const $ = id => document.getElementById(id);
const out = $("out"), input = $("input");
let session = null, socket = null, running = false, cwd = "/workspace";
$("key").value = sessionStorage.getItem("sandboxkit-key") || "";
function print(text, cls) { const s = document.createElement("span"); if (cls) s.className = cls; s.textContent = text; out.appendChild(s); out.scrollTop = out.scrollHeight; }
function headers() { const k = $("key").value; sessionStorage.setItem("sandboxkit-key", k); const h = { "Content-Type": "application/json" }; if (k) h["Authorization"] = "Bearer " + k; return h; }
function setPrompt() { $("prompt").textContent = cwd + " $"; }
// While a command runs the prompt is hidden: what is typed goes to the command's stdin.
function setRunning(value) { running = value; document.body.dataset.running = value; $("prompt").style.visibility = value ? "hidden" : "visible"; }
async function connect() {
  let id = $("session").value.trim();
  const r = id ? await fetch("/v1/sessions/" + encodeURIComponent(id), { headers: headers() })
               : await fetch("/v1/sessions", { method: "POST", headers: headers(), body: "{}" });
  const body = await r.json();
  if (!r.ok) { print((body.title || "error") + ": " + (body.detail || "") + "\n", "err"); return; }
  session = body.id; $("session").value = session; input.disabled = false; input.focus();
  print("connected to session " + session + " (" + body.image + ", network " + body.networkMode + ")\n", "info"); setPrompt();
}
function run(command) {
  print(cwd + " $ " + command + "\n", "cmd");
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const key = $("key").value;
  setRunning(true);
  socket = new WebSocket(scheme + location.host + "/v1/sessions/" + session + "/commands/ws" + (key ? "?access_token=" + encodeURIComponent(key) : ""));
  socket.onopen = () => socket.send(JSON.stringify({ command, timeoutSeconds: 3600 }));
  socket.onmessage = m => {
    const e = JSON.parse(m.data);
    if (e.type === "stdout") print(e.data);
    else if (e.type === "stderr") print(e.data, "err");
    else if (e.type === "error") { print("error: " + e.error + "\n", "err"); setRunning(false); }
    else if (e.type === "exited") {
      setRunning(false);
      const r = e.result; if (r.workingDirectory) cwd = r.workingDirectory;
      if (r.timedOut) print("[timed out]\n", "err"); else if (r.exitCode !== 0) print("[exit " + r.exitCode + (r.oomKilled ? ", out of memory" : "") + "]\n", "err");
      setPrompt();
    }
  };
  socket.onclose = () => { socket = null; setRunning(false); };
}
input.addEventListener("keydown", ev => {
  if (ev.key !== "Enter") return;
  const text = input.value; input.value = "";
  // While a command runs, a line is its input; once it has exited (even before the socket closes) a line is a new command.
  if (running && socket && socket.readyState === WebSocket.OPEN) { print(text + "\n"); socket.send(JSON.stringify({ stdin: text + "\n" })); }
  else if (text.trim()) run(text);
});
$("connect").onclick = connect;
$("interrupt").onclick = () => { if (running && socket) socket.send(JSON.stringify({ signal: 2 })); };
$("end").onclick = async () => { if (!session) return; await fetch("/v1/sessions/" + session, { method: "DELETE", headers: headers() }); print("session deleted\n", "info"); session = null; input.disabled = true; };
</script>
</body>
</html>
""";
}
