'use strict';
// SandboxKit JavaScript context driver.
//
// One process is one live JavaScript context whose globals persist across cells. The
// supervisor starts it as `node node_driver.js` with fd 3 = requests (we read), fd 4 =
// events (we write), both framed as 4-byte big-endian length + UTF-8 JSON object; fd 1/2 are
// the context's stdout/stderr; SIGINT interrupts the running cell. README.md next to this
// file is the protocol's reference. Standard library only, plus the vendored acorn parser
// (acorn.js, MIT) used to rewrite cells for top-level await and redeclarable let/const.
//
// Interrupts. A cell's code runs under vm's breakOnSigint: SIGINT terminates it (node cancels
// the termination at the vm call, so the process survives). A cell with top-level await is
// a generator resumed by the driver inside such a vm run at every await, so its code after
// an await is covered too; terminating JavaScript anywhere outside a vm run is not safe in
// node (it corrupts node's async-hook stack), so callbacks (timers, other async functions'
// continuations) are not. Node's SIGINT
// watchdog puts SIGINT back to "exit the process" whenever no breakOnSigint run is active,
// so a helper worker thread keeps one registered at all times (a run that only waits);
// when SIGINT reaches the helper instead of a cell, it tells the main thread, which abandons
// an awaited promise. The main thread itself never listens for SIGINT: a libuv listener
// would take the signal from the watchdog (user code's process.on('SIGINT') is therefore
// kept aside and called from our handler).

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const util = require('util');
const net = require('net');
const Module = require('module');
const { pathToFileURL } = require('url');
const EventEmitter = require('events');

const MAX_REQUEST_BYTES = 16 * 1024 * 1024;
// Events stay 64 KiB under 16 MiB (room for a reader that counts the header too).
const MAX_EVENT_BYTES = 16 * 1024 * 1024 - 64 * 1024;
const PROTOCOL_VERSION = 1;
const DRIVER_FILE = __filename;

// User code shares our realm and can replace any global: keep our own references.
const jsonStringify = JSON.stringify;
const jsonParse = JSON.parse;
const inspect = util.inspect;
const BufferFrom = Buffer.from;
const BufferByteLength = Buffer.byteLength;

let acorn = null;
try {
  acorn = require('./acorn.js');
} catch (e) {
  acorn = null; // without it cells still run, without top-level await (see README)
}

// ---- pipes --------------------------------------------------------------------------------

// Reopen an inherited fd through /proc so that the new one is close-on-exec (node opens
// everything O_CLOEXEC) and children of user code do not inherit the protocol pipes.
function reopenCloexec(fd, flags) {
  try {
    const fresh = fs.openSync(`/proc/self/fd/${fd}`, flags);
    fs.closeSync(fd);
    return fresh;
  } catch (e) {
    return fd; // sockets cannot be reopened this way; keep the original
  }
}

function requireFd(fd) {
  try {
    fs.fstatSync(fd);
    return true;
  } catch (e) {
    return false;
  }
}

if (!requireFd(3) || !requireFd(4)) {
  process.stderr.write('node_driver.js: fd 3 (requests) and fd 4 (events) must be open; see README.md\n');
  process.exit(2);
}

const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
// O_NONBLOCK on open: a FIFO open never waits for the other side here.
const requestFd = reopenCloexec(3, O_RDONLY | O_NONBLOCK);
const eventFd = reopenCloexec(4, O_WRONLY | O_NONBLOCK);

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms) {
  Atomics.wait(sleepCell, 0, 0, ms);
}

// Synchronous stdout/stderr: output printed before an event reaches fd 1/2 before the
// event reaches fd 4, nothing is lost on process.exit(), and children sharing the pipes
// see them blocking as usual.
for (const stream of [process.stdout, process.stderr]) {
  try {
    if (stream._handle && typeof stream._handle.setBlocking === 'function') stream._handle.setBlocking(true);
  } catch (e) {
    // a file or TTY is synchronous already
  }
}

function stdioPending() {
  return (process.stdout.writableLength || 0) + (process.stderr.writableLength || 0) > 0;
}

// ---- events -------------------------------------------------------------------------------

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
function wellFormed(text) {
  // Lone surrogates are not valid UTF-8 (and strict JSON readers reject their escapes).
  return LONE_SURROGATE.test(text) ? text.replace(LONE_SURROGATE, '\uFFFD') : text;
}

function encodeJson(value) {
  LONE_SURROGATE.lastIndex = 0;
  return BufferFrom(jsonStringify(value, (k, v) => (typeof v === 'string' ? (LONE_SURROGATE.lastIndex = 0, wellFormed(v)) : v)), 'utf8');
}

function jsonSize(value) {
  return BufferByteLength(jsonStringify(value) || '', 'utf8');
}

function truncateText(text, maxBytes) {
  const encoded = jsonSize(text);
  if (encoded <= maxBytes) return [text, false];
  let keep = Math.max(0, Math.floor(text.length * (maxBytes / encoded) * 0.95) - 100);
  for (;;) {
    const half = Math.floor(keep / 2);
    const head = text.slice(0, half);
    const tail = half > 0 ? text.slice(text.length - half) : '';
    const candidate = `${head}\n[... SandboxKit truncated ${text.length - head.length - tail.length} characters ...]\n${tail}`;
    if (jsonSize(candidate) <= maxBytes || keep === 0) return [candidate, true];
    keep = Math.floor(keep * 0.8);
  }
}

// Encode an event below MAX_EVENT_BYTES: a huge result loses its largest non-text/plain
// entries first, then text/plain keeps head and tail; metadata.sandboxkit says what happened.
function fitEvent(event) {
  let payload = encodeJson(event);
  if (payload.length <= MAX_EVENT_BYTES) return payload;
  const budget = MAX_EVENT_BYTES - 4096;
  const copy = Object.assign({}, event);
  if (copy.type === 'result') {
    const data = Object.assign({}, copy.data);
    const metadata = Object.assign({}, copy.metadata || {});
    const note = { truncated: true, dropped: [], originalBytes: payload.length };
    const sizes = Object.keys(data).filter((k) => k !== 'text/plain').map((k) => [jsonSize(data[k]), k]).sort((a, b) => b[0] - a[0]);
    for (const [, mime] of sizes) {
      if (jsonSize(data) <= budget) break;
      delete data[mime];
      delete metadata[mime];
      note.dropped.push(mime);
    }
    if (!('text/plain' in data)) data['text/plain'] = `[result too large for one event: dropped ${note.dropped.join(', ')}]`;
    const others = {};
    for (const k of Object.keys(data)) if (k !== 'text/plain') others[k] = data[k];
    const [text, cut] = truncateText(data['text/plain'], Math.max(1024, budget - jsonSize(others)));
    if (cut) {
      data['text/plain'] = text;
      note.textPlainCut = true;
    }
    metadata.sandboxkit = note;
    copy.data = data;
    copy.metadata = metadata;
  } else if (copy.type === 'error') {
    copy.traceback = truncateText(String(copy.traceback || ''), Math.floor(budget / 2))[0];
    copy.value = truncateText(String(copy.value || ''), Math.floor(budget / 4))[0];
  }
  payload = encodeJson(copy);
  if (payload.length > MAX_EVENT_BYTES) {
    payload = encodeJson({ type: copy.type, id: copy.id, data: { 'text/plain': '[event too large]' }, isMainResult: false });
  }
  return payload;
}

function writeAll(fd, buffer) {
  let offset = 0;
  while (offset < buffer.length) {
    try {
      offset += fs.writeSync(fd, buffer, offset, buffer.length - offset);
    } catch (e) {
      if (e.code === 'EAGAIN') {
        sleepMs(2); // supervisor is behind: wait for room in the pipe
        continue;
      }
      if (e.code === 'EPIPE' || e.code === 'EBADF') process.exit(0); // nobody reads events any more
      throw e;
    }
  }
}

// Events go out in order. Normally stdout/stderr are synchronous and each event is written at
// once; if a stream was left asynchronous, events wait until it drained.
const outbox = [];
let outboxWaiting = false;
function sendEvent(event) {
  outbox.push(event);
  flushOutbox();
}

function flushOutbox() {
  while (outbox.length) {
    if (stdioPending()) {
      if (!outboxWaiting) {
        outboxWaiting = true;
        setTimeout(() => {
          outboxWaiting = false;
          flushOutbox();
        }, 5);
      }
      return;
    }
    const payload = fitEvent(outbox.shift());
    const frame = Buffer.allocUnsafe(4 + payload.length);
    frame.writeUInt32BE(payload.length, 0);
    payload.copy(frame, 4);
    writeAll(eventFd, frame);
  }
}

function whenOutboxEmpty() {
  return new Promise((resolve) => {
    const check = () => (outbox.length === 0 ? resolve() : setTimeout(check, 5));
    check();
  });
}

// ---- mime bundles -------------------------------------------------------------------------

function isBinaryMime(mime) {
  if (mime === 'image/svg+xml') return false;
  return /^(image|audio|video)\//.test(mime) || mime === 'application/pdf' || mime === 'application/octet-stream' || mime === 'application/zip';
}

function isJsonMime(mime) {
  return mime === 'application/json' || mime.endsWith('+json');
}

function toBase64(value) {
  if (Buffer.isBuffer(value)) return value.toString('base64');
  if (value instanceof ArrayBuffer) return BufferFrom(value).toString('base64');
  if (ArrayBuffer.isView(value)) return BufferFrom(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  return String(value).replace(/\s+/g, ''); // already base64
}

function safeJson(value) {
  try {
    const text = jsonStringify(value);
    return text === undefined ? 'null' : text;
  } catch (e) {
    return jsonStringify(String(value));
  }
}

function normalizeBundle(bundle) {
  const out = {};
  for (const mime of Object.keys(bundle)) {
    const value = bundle[mime];
    if (value === undefined || value === null) continue;
    if (isJsonMime(mime)) {
      if (typeof value === 'string') {
        try {
          jsonParse(value);
          out[mime] = value;
        } catch (e) {
          out[mime] = jsonStringify(value);
        }
      } else {
        out[mime] = safeJson(value);
      }
    } else if (isBinaryMime(mime)) {
      out[mime] = toBase64(value);
    } else if (Buffer.isBuffer(value) || ArrayBuffer.isView(value)) {
      out[mime] = BufferFrom(value.buffer, value.byteOffset, value.byteLength).toString('utf8');
    } else {
      out[mime] = typeof value === 'string' ? value : String(value);
    }
  }
  return out;
}

const MIME_KEY = /^[A-Za-z0-9.+-]+\/[A-Za-z0-9.+-]+$/;
function isBundle(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  const keys = Object.keys(value);
  return keys.length > 0 && keys.every((k) => MIME_KEY.test(k));
}

// application/json is added for values that are plain JSON data (bounded walk).
function plainJson(value) {
  let nodes = 0;
  let chars = 0;
  const seen = new Set();
  function plain(v, depth) {
    if (++nodes > 20000 || depth > 64) return false;
    if (typeof v === 'string') return (chars += v.length) <= 4 * 1024 * 1024; // huge: text/plain only
    if (v === null || typeof v === 'boolean') return true;
    if (typeof v === 'number') return Number.isFinite(v);
    if (typeof v !== 'object') return false;
    if (seen.has(v)) return false;
    seen.add(v);
    if (Array.isArray(v)) return v.every((x) => plain(x, depth + 1));
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) return false;
    if (Object.getOwnPropertySymbols(v).length) return false;
    return Object.keys(v).every((k) => plain(v[k], depth + 1));
  }
  try {
    return plain(value, 0) ? jsonStringify(value) : undefined;
  } catch (e) {
    return undefined;
  }
}

function valueBundle(value) {
  const data = { 'text/plain': inspect(value, { depth: 4, colors: false, maxArrayLength: 200, maxStringLength: 1 << 20, breakLength: 100 }) };
  const json = plainJson(value);
  if (json !== undefined) data['application/json'] = json;
  return data;
}

// ---- cells --------------------------------------------------------------------------------

let executionCount = 0;
let current = null; // { id, count, interrupt() }
const requests = [];
let busy = false;
const INTERRUPTED = Symbol('sandboxkit.interrupted');

function sendResult(data, metadata, isMain) {
  if (!current) {
    process.stderr.write('[sandboxkit] display() outside a running cell was dropped\n');
    return;
  }
  const bundle = normalizeBundle(data);
  if (!Object.keys(bundle).length) return;
  const event = { type: 'result', id: current.id, data: bundle, isMainResult: !!isMain };
  if (metadata && typeof metadata === 'object' && Object.keys(metadata).length) {
    try {
      event.metadata = jsonParse(safeJson(metadata));
    } catch (e) {
      // metadata that is not JSON data is left out
    }
  }
  sendEvent(event);
}

// display(value) shows a value; display({mime: data, ...}) a ready mime bundle.
function display(value, metadata) {
  sendResult(isBundle(value) ? value : valueBundle(value), metadata, false);
}
display.html = (html) => display({ 'text/html': String(html) });
display.markdown = (md) => display({ 'text/markdown': String(md) });
display.svg = (svg) => display({ 'image/svg+xml': String(svg) });
display.png = (data) => display({ 'image/png': data });
display.jpeg = (data) => display({ 'image/jpeg': data });
display.json = (value) => display({ 'application/json': value, 'text/plain': inspect(value, { depth: 4 }) });
display.latex = (tex) => display({ 'text/latex': String(tex) });

function cleanStack(stack) {
  // Frames of the driver and of node's vm plumbing say nothing about the user's code, and
  // neither do node's own frames below the outermost cell frame (timers, task queues).
  const lines = stack
    .split('\n')
    .filter((line) => !(/^\s+at /.test(line) && (line.includes(DRIVER_FILE) || line.includes('sandboxkit-resume') ||
      /\bnode:(internal\/)?vm\b/.test(line) || /at Generator\.(next|throw|return) \(<anonymous>\)/.test(line))));
  let lastCell = -1;
  lines.forEach((line, i) => {
    if (/^\s+at /.test(line) && line.includes('<cell-')) lastCell = i;
  });
  if (lastCell < 0) return lines.join('\n');
  return lines.filter((line, i) => i <= lastCell || !(/^\s+at /.test(line) && /\(?node:internal\//.test(line))).join('\n');
}

function errorFields(error) {
  if (error === INTERRUPTED) {
    return { name: 'Interrupted', value: 'interrupted by SIGINT while awaiting; the awaited promise was abandoned', traceback: 'Interrupted: interrupted by SIGINT while awaiting; the awaited promise was abandoned' };
  }
  if (error && error.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
    return { name: 'Interrupted', value: 'interrupted by SIGINT', traceback: 'Interrupted: interrupted by SIGINT' };
  }
  if (util.types.isNativeError(error) || (error && typeof error === 'object' && typeof error.stack === 'string' && 'message' in error)) {
    let name = 'Error';
    try {
      name = String(error.name || (error.constructor && error.constructor.name) || 'Error');
    } catch (e) {
      // a hostile getter
    }
    let message = '';
    try {
      message = String(error.message);
    } catch (e) {
      message = '';
    }
    let stack = `${name}: ${message}`;
    try {
      stack = cleanStack(String(error.stack || stack));
    } catch (e) {
      // keep the short form
    }
    return { name, value: message, traceback: stack };
  }
  const shown = inspect(error, { depth: 3 });
  return { name: 'Error', value: typeof error === 'string' ? error : shown, traceback: `Uncaught ${shown}` };
}

// ---- rewriting a cell with acorn -----------------------------------------------------------
//
// Top-level let/const/class become assignments to global `var`s (so a later cell can use and
// redeclare them, as in Chrome's console); a cell with top-level await runs inside an async
// arrow function whose last expression statement is returned; `import x from 'm'` becomes a
// require() of the module relative to the working directory; `import()` is routed through
// a loader that resolves relative to the working directory. Line numbers are kept: everything
// added goes on line 1 before the code or after its last line.

const PARSE_OPTIONS = { ecmaVersion: 'latest', allowAwaitOutsideFunction: true, allowHashBang: true, allowReturnOutsideFunction: false };

function parseCell(code) {
  if (!acorn) return null;
  try {
    return acorn.parse(code, Object.assign({ sourceType: 'script' }, PARSE_OPTIONS));
  } catch (e) {
    try {
      return acorn.parse(code, Object.assign({ sourceType: 'module' }, PARSE_OPTIONS));
    } catch (e2) {
      return null; // not ours to judge: V8 reports the SyntaxError (or runs syntax acorn lacks)
    }
  }
}

function patternNames(node, out) {
  if (!node) return out;
  switch (node.type) {
    case 'Identifier': out.push(node.name); break;
    case 'ObjectPattern': for (const p of node.properties) patternNames(p.type === 'RestElement' ? p.argument : p.value, out); break;
    case 'ArrayPattern': for (const e of node.elements) patternNames(e, out); break;
    case 'RestElement': patternNames(node.argument, out); break;
    case 'AssignmentPattern': patternNames(node.left, out); break;
    default: break;
  }
  return out;
}

const FUNCTION_TYPES = new Set(['FunctionDeclaration', 'FunctionExpression', 'ArrowFunctionExpression']);

// Visit every node; `inFunction` tells whether a function boundary was crossed.
function walk(node, visit, inFunction) {
  if (!node || typeof node.type !== 'string') return;
  visit(node, inFunction);
  const inner = inFunction || FUNCTION_TYPES.has(node.type) || node.type === 'ClassBody';
  for (const key of Object.keys(node)) {
    if (key === 'loc' || key === 'start' || key === 'end' || key === 'type') continue;
    const child = node[key];
    if (Array.isArray(child)) {
      for (const c of child) if (c && typeof c.type === 'string') walk(c, visit, inner);
    } else if (child && typeof child.type === 'string') {
      walk(child, visit, inner);
    }
  }
}

function applyEdits(code, edits) {
  // Insertions (start === end) at a position go before a replacement starting there.
  edits.sort((a, b) => a.start - b.start || (a.end - a.start) - (b.end - b.start));
  let out = '';
  let pos = 0;
  for (const e of edits) {
    if (e.start < pos) continue; // overlapping edit: cannot happen for the rewrites below
    out += code.slice(pos, e.start) + e.text;
    pos = e.end;
  }
  return out + code.slice(pos);
}

function prepareCell(code) {
  const ast = parseCell(code);
  if (!ast) return { source: code, isAsync: false, hasLast: true, rewritten: false };
  const edits = [];
  const hoisted = new Set();
  const functionNames = [];
  let isAsync = false;
  const insert = (at, text) => edits.push({ start: at, end: at, text });
  const replace = (start, end, text) => edits.push({ start, end, text });

  const awaits = [];
  let forAwait = false;
  walk(ast, (node, inFunction) => {
    if (node.type === 'ImportExpression') replace(node.start, node.start + 6, '__sandboxkit.importModule');
    if (inFunction) return;
    if (node.type === 'AwaitExpression') awaits.push(node);
    if (node.type === 'ForOfStatement' && node.await) forAwait = true;
  }, false);
  isAsync = awaits.length > 0 || forAwait;
  // Cells with top-level await become generators that the driver resumes itself, each step
  // inside a breakOnSigint vm run, so code after an await is interruptible too. `for await`
  // has no generator equivalent: such cells become an async function (see README).
  const asGenerator = isAsync && !forAwait;
  if (asGenerator) {
    for (const node of awaits) {
      replace(node.start, node.start + 5, '(yield');
      insert(node.end, ')');
    }
  }

  // Declarations to rewrite: top-level let/const/class/import always; `var` (also nested in
  // blocks) only when the cell becomes a function, where var would otherwise be local.
  const topLevel = [];
  for (let stmt of ast.body) {
    if (stmt.type === 'ExportNamedDeclaration' && stmt.declaration) {
      replace(stmt.start, stmt.declaration.start, '');
      stmt = stmt.declaration;
    } else if (stmt.type === 'ExportNamedDeclaration' || stmt.type === 'ExportDefaultDeclaration' || stmt.type === 'ExportAllDeclaration') {
      return { error: new SyntaxError('export statements are not supported in a cell (declare the value instead)') };
    }
    topLevel.push(stmt);
  }

  function rewriteDeclaration(decl, inForHead) {
    for (const d of decl.declarations) patternNames(d.id, []).forEach((n) => hoisted.add(n));
    const first = decl.declarations[0];
    replace(decl.start, first.start, inForHead ? '' : ';');
    for (const d of decl.declarations) {
      if (d.init) {
        insert(d.start, '(');
        insert(d.end, ')');
      } else if (!inForHead) {
        replace(d.start, d.end, decl.kind === 'var' ? 'void 0' : `(${d.id.name} = undefined)`);
      }
    }
  }

  const topSet = new Set(topLevel);
  for (const stmt of topLevel) {
    if (stmt.type === 'VariableDeclaration' && (stmt.kind !== 'var' || isAsync)) {
      rewriteDeclaration(stmt, false);
    } else if (stmt.type === 'ClassDeclaration' && stmt.id) {
      hoisted.add(stmt.id.name);
      insert(stmt.start, `;${stmt.id.name} = `);
      insert(stmt.end, ';');
    } else if (stmt.type === 'FunctionDeclaration' && isAsync) {
      functionNames.push(stmt.id.name); // hoisted inside the wrapper; published at its start
    } else if (stmt.type === 'ImportDeclaration') {
      const spec = jsonStringify(stmt.source.value);
      const parts = [];
      for (const s of stmt.specifiers) {
        hoisted.add(s.local.name);
        if (s.type === 'ImportDefaultSpecifier') parts.push(`${s.local.name} = __sandboxkit.importDefault(__sandboxkit.load(${spec}))`);
        else if (s.type === 'ImportNamespaceSpecifier') parts.push(`${s.local.name} = __sandboxkit.load(${spec})`);
        else parts.push(`${s.local.name} = __sandboxkit.load(${spec})[${jsonStringify(s.imported.name || s.imported.value)}]`);
      }
      replace(stmt.start, stmt.end, parts.length ? `;${parts.join(', ')};` : `;__sandboxkit.load(${spec});`);
    }
  }

  if (isAsync) {
    // `var` anywhere outside functions (for (var i ...), blocks) must stay global too.
    walk(ast, (node, inFunction) => {
      if (inFunction || node.type !== 'VariableDeclaration' || node.kind !== 'var' || topSet.has(node)) return;
      node.sandboxkitVar = true;
    }, false);
    walk(ast, (node, inFunction) => {
      if (inFunction) return;
      for (const key of ['init', 'left']) {
        const head = node[key];
        if ((node.type === 'ForStatement' || node.type === 'ForInStatement' || node.type === 'ForOfStatement') && head && head.sandboxkitVar) {
          head.sandboxkitDone = true;
          rewriteDeclaration(head, true);
        }
      }
    }, false);
    walk(ast, (node, inFunction) => {
      if (!inFunction && node.sandboxkitVar && !node.sandboxkitDone) rewriteDeclaration(node, false);
    }, false);
  }

  const last = ast.body[ast.body.length - 1];
  const hasLast = !!last && last.type === 'ExpressionStatement'; // a lone "string" too
  const prelude = hoisted.size ? `var ${[...hoisted].join(', ')}; ` : '';
  if (!isAsync) {
    return { source: prelude + applyEdits(code, edits), isAsync: false, hasLast, rewritten: true };
  }
  if (hasLast) {
    insert(last.expression.start, 'return (');
    insert(last.expression.end, ')');
  }
  const publish = functionNames.map((n) => `__sandboxkit.global[${jsonStringify(n)}] = ${n}; `).join('');
  const body = applyEdits(code, edits);
  if (asGenerator) {
    return { source: `${prelude}(function* () { ${publish}${body}\n}).call(this)`, isAsync: true, generator: true, hasLast, rewritten: true };
  }
  return { source: `${prelude}(async () => { ${publish}${body}\n})()`, isAsync: true, generator: false, hasLast, rewritten: true };
}

// ---- globals for user code ----------------------------------------------------------------

let cellRequire = null;
let cellRequireCwd = null;
const published = {};

function cellModuleFor(cwd) {
  if (cellRequireCwd !== cwd) {
    const filename = path.join(cwd, '[sandboxkit-cell]');
    const mod = new Module(filename, null);
    mod.filename = filename;
    mod.paths = Module._nodeModulePaths(cwd);
    mod.loaded = true;
    cellRequire = Module.createRequire(filename);
    cellRequireCwd = cwd;
    published.module = mod;
  }
  return cellRequire;
}

// require/module/exports/__filename/__dirname follow the working directory at each cell,
// unless user code replaced them.
function setCellGlobals() {
  const cwd = process.cwd();
  const req = cellModuleFor(cwd);
  const values = { require: req, module: published.module, exports: published.module.exports, __filename: path.join(cwd, '[sandboxkit-cell]'), __dirname: cwd };
  for (const [name, value] of Object.entries(values)) {
    if (!(name in globalThis) || globalThis[name] === published[`last_${name}`]) {
      globalThis[name] = value;
      published[`last_${name}`] = value;
    }
  }
}

function loadModule(spec) {
  const req = cellModuleFor(process.cwd());
  try {
    return req(spec);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') {
      e.message += `\n(${spec} is an ES module: use \`const m = await import(${jsonStringify(spec)})\` in a cell)`;
    }
    throw e;
  }
}

function importModule(spec) {
  const cwd = process.cwd();
  let target = String(spec);
  try {
    if (/^\.{1,2}(\/|$)/.test(target) || path.isAbsolute(target)) target = pathToFileURL(path.resolve(cwd, target)).href;
    else if (!/^[a-z]+:/i.test(target)) target = pathToFileURL(cellModuleFor(cwd).resolve(target)).href;
  } catch (e) {
    // leave bare specifiers to node's resolver (builtins, packages visible from here)
  }
  return import(target);
}

// Resuming a cell generator: the step runs inside this script, so under breakOnSigint.
let pendingResume = null;
const resumeScript = new vm.Script('__sandboxkit.resume()', { filename: 'sandboxkit-resume' });

function resumeStep(gen, method, arg) {
  pendingResume = () => gen[method](arg);
  return resumeScript.runInThisContext({ breakOnSigint: true, displayErrors: false });
}

// Drive a cell generator like an async function: each `(yield v)` awaits v (as `await v`
// would, via Promise.resolve), and the cell continues with its value or its rejection.
async function driveGenerator(gen, interrupted) {
  let method = 'next';
  let arg;
  for (;;) {
    const step = resumeStep(gen, method, arg);
    if (step.done) return step.value;
    try {
      arg = await Promise.race([Promise.resolve(step.value), interrupted]);
      method = 'next';
    } catch (e) {
      if (e === INTERRUPTED) {
        try {
          resumeStep(gen, 'return'); // the cell's finally blocks run (interruptible too)
        } catch (ignored) {
          // an error or a second interrupt in a finally block: the cell is interrupted anyway
        }
        throw e;
      }
      arg = e;
      method = 'throw';
    }
  }
}

Object.defineProperty(globalThis, '__sandboxkit', {
  value: Object.freeze({
    global: globalThis,
    resume: () => {
      const step = pendingResume;
      pendingResume = null;
      return step();
    },
    load: loadModule,
    importModule,
    importDefault: (m) => (m && m.__esModule && 'default' in m ? m.default : m),
  }),
  enumerable: false,
  writable: false,
  configurable: false,
});
globalThis.display = display;

// ---- running cells -------------------------------------------------------------------------

async function runCell(id, code) {
  if (!code.trim()) {
    sendEvent({ type: 'done', id, executionCount, status: 'ok' });
    return;
  }
  executionCount += 1;
  const count = executionCount;
  let rejectInterrupt;
  const interrupted = new Promise((resolve, reject) => {
    rejectInterrupt = reject;
  });
  interrupted.catch(() => {});
  current = { id, count, interrupt: () => rejectInterrupt(INTERRUPTED) };
  let error = null;
  let value;
  let hasLast = false;
  try {
    setCellGlobals();
    const prepared = prepareCell(code);
    if (prepared.error) throw prepared.error;
    hasLast = prepared.hasLast;
    const script = new vm.Script(prepared.source, { filename: `<cell-${count}>` });
    value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
    if (prepared.generator) value = await driveGenerator(value, interrupted);
    else if (prepared.isAsync) value = await Promise.race([value, interrupted]);
  } catch (e) {
    error = e;
  }
  if (error === null && hasLast && value !== undefined) {
    try {
      sendResult(valueBundle(value), null, true);
    } catch (e) {
      error = e; // inspect() ran a user getter or custom inspector that threw
    }
  }
  let status = 'ok';
  if (error !== null) {
    const fields = errorFields(error);
    status = fields.name === 'Interrupted' ? 'interrupted' : 'error';
    sendEvent(Object.assign({ type: 'error', id }, fields));
  }
  current = null;
  sendEvent({ type: 'done', id, executionCount: count, status });
  await whenOutboxEmpty();
}

function protocolError(id, problem) {
  sendEvent({ type: 'error', id, name: 'ProtocolError', value: problem, traceback: '' });
  sendEvent({ type: 'done', id, executionCount, status: 'error' });
}

async function handle(message) {
  const id = typeof message.id === 'string' ? message.id : null;
  if (message.type !== 'execute') return protocolError(id, `unknown request type ${jsonStringify(message.type)}`);
  if (id === null || typeof message.code !== 'string') return protocolError(id, 'execute needs a string id and a string code');
  return runCell(id, message.code);
}

function pump() {
  if (busy || !requests.length) return;
  busy = true;
  const item = requests.shift();
  // A fresh macrotask: the cell never runs inside the fd 3 reader's callback.
  setImmediate(async () => {
    try {
      if (item.problem) protocolError(null, item.problem);
      else await handle(item.message);
    } catch (e) {
      process.stderr.write(`[sandboxkit] driver error: ${e && e.stack}\n`);
    } finally {
      busy = false;
      pump();
    }
  });
}

// ---- fd 3 reader ---------------------------------------------------------------------------

function startReader() {
  const socket = new net.Socket({ fd: requestFd, readable: true, writable: false });
  let chunks = [];
  let buffered = 0;
  let need = 4;
  let inHeader = true;
  let skipping = 0;
  let skippedLength = 0;

  function take(n) {
    const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    chunks = rest.length ? [rest] : [];
    buffered = rest.length;
    return out;
  }

  socket.on('data', (chunk) => {
    if (skipping > 0) {
      // Bytes of an oversized request are dropped as they arrive, never stored.
      const drop = Math.min(skipping, chunk.length);
      skipping -= drop;
      chunk = chunk.subarray(drop);
      if (skipping === 0) {
        requests.push({ problem: `request of ${skippedLength} bytes exceeds the ${MAX_REQUEST_BYTES} byte limit` });
        pump();
      }
      if (!chunk.length) return;
    }
    chunks.push(chunk);
    buffered += chunk.length;
    while (buffered >= need && skipping === 0) {
      if (inHeader) {
        const length = take(4).readUInt32BE(0);
        if (length > MAX_REQUEST_BYTES) {
          skippedLength = length;
          const drop = Math.min(length, buffered);
          take(drop);
          skipping = length - drop;
          if (skipping === 0) {
            requests.push({ problem: `request of ${length} bytes exceeds the ${MAX_REQUEST_BYTES} byte limit` });
            pump();
          }
          need = 4;
          continue;
        }
        need = length;
        inHeader = false;
      } else {
        const payload = take(need);
        need = 4;
        inHeader = true;
        let message;
        try {
          message = jsonParse(new util.TextDecoder('utf-8', { fatal: true }).decode(payload));
        } catch (e) {
          requests.push({ problem: `request is not valid UTF-8 JSON: ${e.message}` });
          pump();
          continue;
        }
        if (message === null || typeof message !== 'object' || Array.isArray(message)) {
          requests.push({ problem: 'request is not a JSON object' });
        } else if (message.type === 'shutdown') {
          shutdown();
          return;
        } else {
          requests.push({ message });
        }
        pump();
      }
    }
  });
  socket.on('end', shutdown);
  socket.on('error', shutdown);
}

function shutdown() {
  flushOutbox();
  process.exit(0);
}

// ---- SIGINT --------------------------------------------------------------------------------

const userSigint = new EventEmitter();

function onSigint() {
  if (current) current.interrupt();
  try {
    userSigint.emit('SIGINT', 'SIGINT');
  } catch (e) {
    process.stderr.write(`[sandboxkit] SIGINT listener threw: ${e && e.stack}\n`);
  }
}

// Keep user listeners away from libuv (see the top of this file); they still run on SIGINT.
function divertSigintListeners() {
  for (const method of ['on', 'addListener', 'once', 'prependListener', 'prependOnceListener', 'off', 'removeListener']) {
    const original = process[method];
    if (typeof original !== 'function') continue;
    process[method] = function (event, listener) {
      if (event === 'SIGINT') {
        userSigint[method](event, listener);
        return this;
      }
      return original.apply(this, arguments);
    };
  }
  const removeAll = process.removeAllListeners;
  process.removeAllListeners = function (event) {
    if (event === 'SIGINT') {
      userSigint.removeAllListeners('SIGINT');
      return this;
    }
    return removeAll.apply(this, arguments);
  };
}

const HELPER_SOURCE = `
const { parentPort } = require('worker_threads');
const vm = require('vm');
// Two nested breakOnSigint runs: a SIGINT stops the inner one, the outer one stays
// registered, so node never falls back to its exit-on-SIGINT handler in between.
globalThis.__wait = new Int32Array(new SharedArrayBuffer(4));
globalThis.__inner = () => vm.runInThisContext('for (;;) Atomics.wait(__wait, 0, 0, 3600000)', { breakOnSigint: true, filename: 'sandboxkit-sigint-inner' });
globalThis.__outer = () => {
  parentPort.postMessage('armed');
  for (;;) {
    try { __inner(); } catch (e) { parentPort.postMessage('sigint'); }
  }
};
for (;;) {
  try { vm.runInThisContext('__outer()', { breakOnSigint: true, filename: 'sandboxkit-sigint-outer' }); }
  catch (e) { parentPort.postMessage('sigint'); }
}
`;

function startSigintHelper() {
  return new Promise((resolve) => {
    let settled = false;
    let timer = null;
    const fallback = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // Without the helper a listener catches SIGINT between cells; breakOnSigint still
      // stops synchronous code (with a microsecond window at each cell's start and end).
      process.stderr.write(`[sandboxkit] SIGINT helper unavailable (${why}); using a process listener\n`);
      process.on('SIGINT', onSigint);
      resolve(false);
    };
    let worker;
    try {
      const { Worker } = require('worker_threads');
      worker = new Worker(HELPER_SOURCE, { eval: true, stdout: true, stderr: true, resourceLimits: { maxOldGenerationSizeMb: 32 } });
    } catch (e) {
      fallback(e.message);
      return;
    }
    worker.on('message', (message) => {
      if (message === 'armed' && !settled) {
        settled = true;
        clearTimeout(timer);
        worker.unref(); // from now on fd 3 keeps the process alive, not the helper
        divertSigintListeners();
        resolve(true);
      } else if (message === 'sigint') {
        onSigint();
      }
    });
    worker.on('error', (e) => fallback(e && e.message));
    worker.on('exit', () => {
      if (settled) process.stderr.write('[sandboxkit] SIGINT helper exited; SIGINT may now end the context\n');
      fallback('helper exited');
    });
    timer = setTimeout(() => fallback('no answer in 10 s'), 10000);
  });
}

// ---- start ---------------------------------------------------------------------------------

process.on('uncaughtException', (error) => {
  // A callback of an earlier cell threw: report it on stderr; the context lives on.
  try {
    process.stderr.write(`Uncaught ${errorFields(error).traceback}\n`);
  } catch (e) {
    // nothing left to report with
  }
});
process.on('unhandledRejection', (reason) => {
  try {
    process.stderr.write(`Unhandled promise rejection: ${errorFields(reason).traceback}\n`);
  } catch (e) {
    // nothing left to report with
  }
});

async function main() {
  const helper = await startSigintHelper();
  startReader();
  sendEvent({
    type: 'ready',
    language: 'javascript',
    version: process.versions.node,
    ipython: false,
    protocol: PROTOCOL_VERSION,
    pid: process.pid,
    parser: acorn ? `acorn ${acorn.version}` : null,
    sigintHelper: helper,
  });
}

main();
