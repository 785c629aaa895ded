'use strict';
// A test-side supervisor for the drivers: starts one with fd 3/4 (and fd 1/2) as real pipes
// (FIFOs, which node can create; the supervisor uses anonymous pipes, the same kernel object)
// and speaks the framing. Reads are synchronous polls of non-blocking fds.

const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawn, execFileSync } = require('child_process');

const DRIVER_DIR = path.resolve(__dirname, '..');
const NODE_DRIVER = path.join(DRIVER_DIR, 'node_driver.js');
const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;

function readAvailable(fd) {
  const chunks = [];
  const buf = Buffer.allocUnsafe(1 << 20);
  for (;;) {
    let n;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN') return { data: Buffer.concat(chunks), eof: false };
      throw e;
    }
    if (n === 0) return { data: Buffer.concat(chunks), eof: true };
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class DriverProcess {
  static async start({ argv = [process.execPath, NODE_DRIVER], env = process.env, cwd, startTimeout = 30000 } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sbk-driver-'));
    const fifo = (name) => {
      const p = path.join(dir, name);
      execFileSync('mkfifo', [p]);
      return p;
    };
    const [req, ev, out, err] = ['req', 'ev', 'out', 'err'].map(fifo);
    // Open order matters for FIFOs: a reader end first with O_NONBLOCK, then the writer.
    const reqChild = fs.openSync(req, O_RDONLY | O_NONBLOCK);
    const reqParent = fs.openSync(req, O_WRONLY);
    const parentEnds = {};
    const childEnds = {};
    for (const [name, p] of [['ev', ev], ['out', out], ['err', err]]) {
      parentEnds[name] = fs.openSync(p, O_RDONLY | O_NONBLOCK);
      childEnds[name] = fs.openSync(p, O_WRONLY);
    }
    const fullEnv = Object.assign({ SANDBOXKIT_CONTEXT_ID: 'test-context', MPLBACKEND: 'Agg' }, env);
    const child = spawn(argv[0], argv.slice(1), {
      stdio: ['ignore', childEnds.out, childEnds.err, reqChild, childEnds.ev],
      env: fullEnv,
      cwd,
    });
    for (const fd of [reqChild, childEnds.out, childEnds.err, childEnds.ev]) fs.closeSync(fd);
    const d = new DriverProcess(child, dir, reqParent, parentEnds);
    d.ready = await d.nextEvent(startTimeout);
    return d;
  }

  constructor(child, dir, reqFd, ends) {
    this.child = child;
    this.dir = dir;
    this.reqFd = reqFd;
    this.evFd = ends.ev;
    this.outFd = ends.out;
    this.errFd = ends.err;
    this.buffer = Buffer.alloc(0);
    this.stdout = '';
    this.stderr = '';
    this.log = [];
    this.eventsEof = false;
    this.exit = null;
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
      this.exit = { code, signal };
      resolve(this.exit);
    }));
  }

  sendRaw(buffer) {
    let off = 0;
    while (off < buffer.length) {
      try {
        off += fs.writeSync(this.reqFd, buffer, off, buffer.length - off);
      } catch (e) {
        if (e.code !== 'EAGAIN') throw e;
      }
    }
  }

  send(message) {
    const payload = Buffer.from(JSON.stringify(message), 'utf8');
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length, 0);
    this.sendRaw(Buffer.concat([header, payload]));
  }

  closeRequests() {
    if (this.reqFd !== null) {
      fs.closeSync(this.reqFd);
      this.reqFd = null;
    }
  }

  interrupt() {
    this.child.kill('SIGINT');
  }

  poll() {
    this.pollOutput();
    if (!this.eventsEof) {
      const { data, eof } = readAvailable(this.evFd);
      if (data.length) this.buffer = Buffer.concat([this.buffer, data]);
      if (eof && this.exit !== null) this.eventsEof = true;
    }
  }

  pollOutput() {
    for (const [name, fd] of [['stdout', this.outFd], ['stderr', this.errFd]]) {
      if (fd === null) continue;
      const { data } = readAvailable(fd);
      if (data.length) {
        this[name] += data.toString('utf8');
        this.log.push([name, data.toString('utf8')]);
      }
    }
  }

  takeFrame() {
    if (this.buffer.length < 4) return null;
    const n = this.buffer.readUInt32BE(0);
    if (n > 16 * 1024 * 1024) throw new Error(`event frame of ${n} bytes exceeds 16 MiB`);
    if (this.buffer.length < 4 + n) return null;
    // The driver flushes stdout/stderr before writing an event, so what was printed before it
    // is in those pipes now: read it before logging the event (later output may come along).
    this.pollOutput();
    const payload = this.buffer.subarray(4, 4 + n);
    this.buffer = this.buffer.subarray(4 + n);
    const event = JSON.parse(payload.toString('utf8'));
    event._bytes = n;
    this.log.push(['event', event]);
    return event;
  }

  async nextEvent(timeoutMs = 30000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      const event = this.takeFrame();
      if (event) return event;
      if (this.eventsEof || (this.exit !== null && this.buffer.length < 4)) {
        this.poll();
        const last = this.takeFrame();
        if (last) return last;
        return null;
      }
      if (Date.now() > deadline) throw new Error(`no event within ${timeoutMs} ms; stderr: ${this.stderr.slice(-2000)}`);
      await sleep(5);
    }
  }

  // Runs one cell; resolves to { events, stdout } with events up to and including done.
  async execute(code, { id, timeoutMs = 60000, interruptAfterMs } = {}) {
    const cellId = id || `cell-${process.hrtime.bigint()}`;
    const startOut = this.stdout.length;
    const startLog = this.log.length;
    this.send({ type: 'execute', id: cellId, code });
    const events = [];
    let timer = null;
    if (interruptAfterMs !== undefined) timer = setTimeout(() => this.interrupt(), interruptAfterMs);
    try {
      for (;;) {
        const event = await this.nextEvent(timeoutMs);
        if (!event) throw new Error(`driver ended during the cell; stderr: ${this.stderr.slice(-2000)}`);
        events.push(event);
        if (event.type === 'done' && event.id === cellId) break;
      }
    } finally {
      if (timer) clearTimeout(timer);
    }
    this.poll();
    this.lastLog = this.log.slice(startLog);
    return { events, stdout: this.stdout.slice(startOut) };
  }

  async drain(ms = 300) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      this.poll();
      await sleep(10);
    }
  }

  async waitExit(timeoutMs = 10000) {
    const timeout = sleep(timeoutMs).then(() => null);
    const result = await Promise.race([this.exited, timeout]);
    this.poll();
    return result;
  }

  async close() {
    this.closeRequests();
    if (this.exit === null) {
      const r = await this.waitExit(5000);
      if (!r) {
        this.child.kill('SIGKILL');
        await this.exited;
      }
    }
    for (const key of ['evFd', 'outFd', 'errFd']) {
      if (this[key] !== null) {
        try {
          fs.closeSync(this[key]);
        } catch (e) {
          // already closed
        }
        this[key] = null;
      }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

const results = (events, main) => events.filter((e) => e.type === 'result' && (main === undefined || e.isMainResult === main));
function errorOf(events) {
  const errors = events.filter((e) => e.type === 'error');
  if (errors.length > 1) throw new Error(`more than one error event: ${JSON.stringify(errors)}`);
  return errors[0] || null;
}
function doneOf(events) {
  const last = events[events.length - 1];
  if (!last || last.type !== 'done') throw new Error(`last event is not done: ${JSON.stringify(events)}`);
  return last;
}

module.exports = { DriverProcess, NODE_DRIVER, DRIVER_DIR, results, errorOf, doneOf, sleep };
