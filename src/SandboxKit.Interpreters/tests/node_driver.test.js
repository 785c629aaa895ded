'use strict';
// Protocol tests of node_driver.js: `node --test` from this folder. Each test starts the
// driver as the supervisor does (fd 3/4 pipes, SIGINT) and talks to it through the protocol.

const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { DriverProcess, results, errorOf, doneOf, sleep } = require('./driver_client.js');

async function start(t, options) {
  const d = await DriverProcess.start(options);
  t.after(() => d.close());
  assert.ok(d.ready, `no ready event; stderr: ${d.stderr}`);
  return d;
}

async function runOk(d, code, options) {
  const r = await d.execute(code, options);
  assert.strictEqual(doneOf(r.events).status, 'ok', JSON.stringify(r.events) + d.stderr.slice(-2000));
  return r;
}

function mainText(events) {
  const mains = results(events, true);
  assert.strictEqual(mains.length, 1, JSON.stringify(events));
  return mains[0].data['text/plain'];
}

// Full PNG check: signature, chunk CRCs, IHDR size > 0, IDAT inflates to the implied size.
function checkPng(b64) {
  const data = Buffer.from(b64, 'base64');
  assert.deepStrictEqual([...data.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  let pos = 8;
  let header = null;
  const idat = [];
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  while (pos < data.length) {
    const length = data.readUInt32BE(pos);
    const kind = data.subarray(pos + 4, pos + 8).toString('latin1');
    const body = data.subarray(pos + 8, pos + 8 + length);
    assert.strictEqual(crc32(data.subarray(pos + 4, pos + 8 + length)), data.readUInt32BE(pos + 8 + length), `CRC of ${kind}`);
    if (kind === 'IHDR') header = { width: body.readUInt32BE(0), height: body.readUInt32BE(4), depth: body[8], color: body[9] };
    if (kind === 'IDAT') idat.push(body);
    if (kind === 'IEND') break;
    pos += 12 + length;
  }
  assert.ok(header.width > 0 && header.height > 0);
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[header.color];
  const raw = zlib.inflateSync(Buffer.concat(idat));
  assert.strictEqual(raw.length, header.height * (1 + Math.ceil((header.width * channels * header.depth) / 8)));
  return header;
}

function makePng() {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (kind, body) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(body.length, 0);
    head.write(kind, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])), 0);
    return Buffer.concat([head, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(2, 0);
  ihdr.writeUInt32BE(1, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  const pixels = zlib.deflateSync(Buffer.from([0, 255, 0, 0, 0, 0, 255]));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', pixels), chunk('IEND', Buffer.alloc(0))]);
}

test('ready event', async (t) => {
  const d = await start(t);
  assert.strictEqual(d.ready.type, 'ready');
  assert.strictEqual(d.ready.language, 'javascript');
  assert.strictEqual(d.ready.version, process.versions.node);
  assert.strictEqual(d.ready.ipython, false);
});

test('globals persist, let/const/class redeclare, last expression is the main result', async (t) => {
  const d = await start(t);
  let r = await runOk(d, 'let a = 40; const b = 1; var c = 0; function inc(v) { return v + 1 } class K { get v() { return 2 } }');
  assert.deepStrictEqual(results(r.events), []);
  r = await runOk(d, 'inc(a) + b + c');
  assert.strictEqual(mainText(r.events), '42');
  r = await runOk(d, 'let a = "again"; const b = new K().v; class K {}; a + b');
  assert.strictEqual(mainText(r.events), "'again2'");
  r = await runOk(d, 'const { x, y: [z] } = { x: 1, y: [2] }; x + z');
  assert.strictEqual(mainText(r.events), '3');
  r = await runOk(d, 'console.log("no value")');
  assert.deepStrictEqual(results(r.events), []);
  r = await runOk(d, '({ list: [1, "two"], nested: { ok: true } })');
  const data = results(r.events, true)[0].data;
  assert.deepStrictEqual(JSON.parse(data['application/json']), { list: [1, 'two'], nested: { ok: true } });
  assert.match(data['text/plain'], /nested/);
});

test('execution count', async (t) => {
  const d = await start(t);
  const counts = [];
  for (const code of ['1', 'throw new Error("x")', '2', '  ']) counts.push(doneOf((await d.execute(code)).events).executionCount);
  assert.deepStrictEqual(counts, [1, 2, 3, 3]);
});

test('top-level await, with declarations kept global', async (t) => {
  const d = await start(t);
  let r = await runOk(d, 'const v = await new Promise((r) => setTimeout(() => r(21), 20)); for (var i = 0; i < 2; i++) {} function twice(n) { return 2 * n }\ntwice(v)');
  assert.strictEqual(mainText(r.events), '42');
  r = await runOk(d, '[v, i, twice(1)]');
  assert.strictEqual(r.events[0].data['application/json'], '[21,2,2]');
  r = await runOk(d, 'for await (const n of (async function* () { yield 1; yield 2 })()) console.log("n", n)');
  assert.strictEqual(r.stdout, 'n 1\nn 2\n');
});

test('display of html, markdown, svg, png, json and bundles', async (t) => {
  const d = await start(t);
  const png = makePng().toString('base64');
  const r = await runOk(d, [
    'display.html("<b>b</b>")',
    'display.markdown("# m")',
    'display.svg("<svg xmlns=\\"http://www.w3.org/2000/svg\\"/>")',
    `display.png(Buffer.from(${JSON.stringify(png)}, "base64"))`,
    'display.json({ k: [1, 2] })',
    'display({ "text/html": "<i>i</i>", "text/plain": "i" })',
    'display([1, 2])',
  ].join('\n'));
  const shown = results(r.events, false).map((e) => e.data);
  assert.strictEqual(shown.length, 7);
  assert.strictEqual(shown[0]['text/html'], '<b>b</b>');
  assert.strictEqual(shown[1]['text/markdown'], '# m');
  assert.match(shown[2]['image/svg+xml'], /<svg/);
  assert.deepStrictEqual(checkPng(shown[3]['image/png']), { width: 2, height: 1, depth: 8, color: 2 });
  assert.deepStrictEqual(JSON.parse(shown[4]['application/json']), { k: [1, 2] });
  assert.deepStrictEqual(shown[5], { 'text/html': '<i>i</i>', 'text/plain': 'i' });
  assert.strictEqual(shown[6]['text/plain'], '[ 1, 2 ]');
});

test('errors are structured and state survives', async (t) => {
  const d = await start(t);
  await runOk(d, 'let kept = "yes"');
  let r = await d.execute('function f() { return g() }\nfunction g() { throw new TypeError("bad thing") }\nf()');
  let err = errorOf(r.events);
  assert.strictEqual(err.name, 'TypeError');
  assert.strictEqual(err.value, 'bad thing');
  assert.match(err.traceback, /at g \(<cell-2>:2:/);
  assert.doesNotMatch(err.traceback, /node_driver\.js|node:vm/);
  assert.strictEqual(doneOf(r.events).status, 'error');
  r = await d.execute('await Promise.reject(new RangeError("rejected"))');
  err = errorOf(r.events);
  assert.deepStrictEqual([err.name, err.value], ['RangeError', 'rejected']);
  r = await d.execute('throw "plain string"');
  assert.deepStrictEqual([errorOf(r.events).name, errorOf(r.events).value], ['Error', 'plain string']);
  r = await d.execute('let = = 1');
  assert.strictEqual(errorOf(r.events).name, 'SyntaxError');
  r = await runOk(d, 'kept');
  assert.strictEqual(mainText(r.events), "'yes'");
});

test('errors in callbacks after a cell do not kill the context', async (t) => {
  const d = await start(t);
  await runOk(d, 'setTimeout(() => { throw new Error("late boom") }, 10); Promise.reject(new Error("nobody waits")); 1');
  await d.drain(200);
  assert.match(d.stderr, /late boom/);
  assert.match(d.stderr, /nobody waits/);
  const r = await runOk(d, '"alive"');
  assert.strictEqual(mainText(r.events), "'alive'");
});

async function assertInterrupted(d, code) {
  const started = Date.now();
  const r = await d.execute(code, { interruptAfterMs: 700, timeoutMs: 20000 });
  assert.ok(Date.now() - started < 10000);
  assert.strictEqual(errorOf(r.events).name, 'Interrupted', JSON.stringify(r.events));
  assert.strictEqual(doneOf(r.events).status, 'interrupted');
  const after = await runOk(d, 'state');
  assert.strictEqual(mainText(after.events), "'kept'");
}

test('SIGINT stops while(true){} and the context keeps its state', async (t) => {
  const d = await start(t);
  await runOk(d, 'let state = "kept"');
  await assertInterrupted(d, 'while (true) {}');
  await assertInterrupted(d, 'function spin() { for (;;) {} }\nspin()');
});

test('SIGINT abandons an awaited promise that never settles', async (t) => {
  const d = await start(t);
  await runOk(d, 'let state = "kept"');
  await assertInterrupted(d, 'await new Promise(() => {})');
  const r = await runOk(d, 'await new Promise((r) => setTimeout(() => r("timers fine"), 10))');
  assert.strictEqual(mainText(r.events), "'timers fine'");
});

test('SIGINT stops a loop that starts after a top-level await; finally blocks run', async (t) => {
  const d = await start(t);
  await runOk(d, 'let state = "kept"; let cleaned = false');
  await assertInterrupted(d, 'await new Promise((r) => setTimeout(r, 10));\nwhile (true) {}');
  await assertInterrupted(d, 'try { await new Promise(() => {}) } finally { cleaned = true }');
  const r = await runOk(d, 'cleaned');
  assert.strictEqual(mainText(r.events), 'true');
});

test('awaited rejections can be caught at top level', async (t) => {
  const d = await start(t);
  const r = await runOk(d, 'let got; try { await Promise.reject(new Error("caught me")) } catch (e) { got = e.message }\ngot + " " + (await 1 + 1)');
  assert.strictEqual(mainText(r.events), "'caught me 2'");
});

test('SIGINT while idle is harmless, also in bursts', async (t) => {
  const d = await start(t);
  await runOk(d, 'let v = 1');
  for (let i = 0; i < 20; i++) {
    d.interrupt();
    await sleep(i % 2 ? 0 : 20);
  }
  await d.drain(300);
  assert.strictEqual(d.exit, null, `driver exited: ${JSON.stringify(d.exit)}`);
  const r = await runOk(d, 'v + 1');
  assert.strictEqual(mainText(r.events), '2');
});

test('user SIGINT listeners are called without breaking interrupts', async (t) => {
  const d = await start(t);
  await runOk(d, 'let state = "kept"; let hits = 0; process.on("SIGINT", () => { hits++ })');
  await assertInterrupted(d, 'while (true) {}');
  const r = await runOk(d, 'hits');
  assert.ok(Number(mainText(r.events)) >= 0);
  d.interrupt();
  await d.drain(200);
  assert.strictEqual(d.exit, null);
});

test('stdout printed before an event is readable before it', async (t) => {
  const d = await start(t);
  await runOk(d, 'console.log("before"); display("shown"); console.log("after"); "value"');
  let seen = '';
  const checks = [];
  for (const [kind, item] of d.lastLog) {
    if (kind === 'stdout') seen += item;
    else if (kind === 'event') checks.push([item.type, item.data && item.data['text/plain'], seen]);
  }
  assert.deepStrictEqual(checks[0].slice(0, 2), ['result', "'shown'"]);
  assert.ok(checks[0][2].startsWith('before\n'));
  assert.deepStrictEqual(checks[1], ['result', "'value'", 'before\nafter\n']);
  assert.strictEqual(checks[2][0], 'done');
});

test('require() resolves from the working directory; import statements and import()', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sbk-cwd-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'local.js'), 'module.exports = { answer: 42 };');
  fs.mkdirSync(path.join(dir, 'node_modules', 'pkg'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'node_modules', 'pkg', 'index.js'), 'exports.name = "pkg";');
  fs.writeFileSync(path.join(dir, 'esm.mjs'), 'export const kind = "esm";');
  const d = await start(t, { cwd: dir });
  let r = await runOk(d, 'require("./local.js").answer + ":" + require("pkg").name');
  assert.strictEqual(mainText(r.events), "'42:pkg'");
  r = await runOk(d, 'import { answer } from "./local.js"; import * as p from "pkg"; import fs from "fs"; [answer, p.name, typeof fs.readFileSync]');
  assert.strictEqual(results(r.events, true)[0].data['application/json'], '[42,"pkg","function"]');
  r = await runOk(d, '(await import("./esm.mjs")).kind');
  assert.strictEqual(mainText(r.events), "'esm'");
  r = await runOk(d, 'process.cwd() === __dirname');
  assert.strictEqual(mainText(r.events), 'true');
});

test('child processes write to fd 1 and do not inherit the protocol pipes', async (t) => {
  const d = await start(t);
  const r = await runOk(d, 'require("child_process").execSync("for f in 3 4; do [ -e /proc/$$/fd/$f ] && echo leaked$f; done; echo from-child", { stdio: "inherit" }); 1');
  assert.match(r.stdout, /from-child/);
  assert.doesNotMatch(r.stdout, /leaked/);
});

test('huge stdout arrives whole', async (t) => {
  const d = await start(t);
  const r = await runOk(d, 'process.stdout.write("y".repeat(20 * 1024 * 1024)); 1', { timeoutMs: 120000 });
  assert.strictEqual(r.stdout.length, 20 * 1024 * 1024);
});

test('huge results stay under 16 MiB per event', async (t) => {
  const d = await start(t);
  let r = await runOk(d, '"ab".repeat(15 * 1024 * 1024)', { timeoutMs: 120000 });
  const main = results(r.events, true)[0];
  assert.ok(main._bytes <= 16 * 1024 * 1024);
  assert.ok(/more characters/.test(main.data['text/plain']), 'util.inspect shortens long strings');
  r = await runOk(d, 'display({ "text/plain": "ab".repeat(15 * 1024 * 1024) })', { timeoutMs: 120000 });
  const cut = results(r.events)[0];
  assert.ok(cut._bytes <= 16 * 1024 * 1024);
  assert.strictEqual(cut.metadata.sandboxkit.truncated, true);
  assert.strictEqual(cut.metadata.sandboxkit.textPlainCut, true);
  assert.ok(/SandboxKit truncated \d+ characters/.test(cut.data['text/plain']), 'marker in the cut text');
  assert.ok(cut.data['text/plain'].startsWith('abab') && cut.data['text/plain'].endsWith('abab'));
  r = await runOk(d, 'display({ "text/plain": "small", "text/html": "h".repeat(20 * 1024 * 1024) })', { timeoutMs: 120000 });
  const shown = results(r.events)[0];
  assert.deepStrictEqual(shown.data, { 'text/plain': 'small' });
  assert.deepStrictEqual(shown.metadata.sandboxkit.dropped, ['text/html']);
});

test('lone surrogates become U+FFFD', async (t) => {
  const d = await start(t);
  const r = await runOk(d, 'display({ "text/plain": "a\\udcffb" })');
  assert.strictEqual(results(r.events)[0].data['text/plain'], 'a\ufffdb');
});

test('malformed requests get ProtocolError and the context goes on', async (t) => {
  const d = await start(t);
  const bad = [Buffer.from('not json'), Buffer.from('[1,2]'), Buffer.from([0xff, 0xfe]), Buffer.from('{"type":"nope","id":"q"}'), Buffer.from('{"type":"execute","id":"c"}')];
  let err;
  for (const payload of bad) {
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length, 0);
    d.sendRaw(Buffer.concat([header, payload]));
    err = await d.nextEvent();
    const done = await d.nextEvent();
    assert.deepStrictEqual([err.type, err.name], ['error', 'ProtocolError'], JSON.stringify(err));
    assert.deepStrictEqual([done.type, done.status], ['done', 'error']);
  }
  assert.strictEqual(err.id, 'c');
  const r = await runOk(d, '"still alive"');
  assert.strictEqual(mainText(r.events), "'still alive'");
});

test('an oversized request is skipped and reported', async (t) => {
  const d = await start(t);
  const size = 16 * 1024 * 1024 + 1;
  const header = Buffer.alloc(4);
  header.writeUInt32BE(size, 0);
  d.sendRaw(header);
  const chunk = Buffer.alloc(1024 * 1024, 0x20);
  for (let sent = 0; sent < size; ) {
    const part = chunk.subarray(0, Math.min(chunk.length, size - sent));
    d.sendRaw(part);
    sent += part.length;
    d.poll();
  }
  const err = await d.nextEvent();
  const done = await d.nextEvent();
  assert.strictEqual(err.name, 'ProtocolError');
  assert.match(err.value, /exceeds/);
  assert.strictEqual(done.id, null);
  const r = await runOk(d, '1 + 1');
  assert.strictEqual(mainText(r.events), '2');
});

test('EOF on fd 3 exits 0', async (t) => {
  const d = await start(t);
  await runOk(d, 'let z = 1');
  d.closeRequests();
  assert.deepStrictEqual(await d.waitExit(), { code: 0, signal: null });
});

test('shutdown exits 0, also while a cell awaits', async (t) => {
  const d = await start(t);
  d.send({ type: 'execute', id: 'waiting', code: 'await new Promise(() => {})' });
  await sleep(200);
  const started = Date.now();
  d.send({ type: 'shutdown' });
  assert.deepStrictEqual(await d.waitExit(), { code: 0, signal: null });
  assert.ok(Date.now() - started < 5000);
});

test('process.exit(n) ends the context with code n after its output', async (t) => {
  const d = await start(t);
  d.send({ type: 'execute', id: 'bye', code: 'console.log("last words"); process.exit(7)' });
  assert.deepStrictEqual(await d.waitExit(), { code: 7, signal: null });
  assert.match(d.stdout, /last words/);
});
