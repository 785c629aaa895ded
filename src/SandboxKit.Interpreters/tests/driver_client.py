"""A test-side supervisor: starts a driver with fd 3/4 pipes exactly as SandboxKit's does
and speaks the framing. Used by the unittest suites; standard library only."""

import fcntl
import json
import os
import select
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER_DIR = os.path.dirname(HERE)
PYTHON_DRIVER = os.path.join(DRIVER_DIR, "python_driver.py")


def _high(fd):
    # Move a pipe end above 9 so that dup2 into 3/4 in the child can never clobber another.
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class DriverProcess:
    def __init__(self, argv, env=None, cwd=None, start_timeout=60.0):
        req_r, req_w = (_high(fd) for fd in os.pipe())
        ev_r, ev_w = (_high(fd) for fd in os.pipe())
        out_r, out_w = (_high(fd) for fd in os.pipe())
        err_r, err_w = (_high(fd) for fd in os.pipe())
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("SANDBOXKIT_CONTEXT_ID", "test-context")
        full_env.setdefault("MPLBACKEND", "Agg")

        def child_setup():
            os.dup2(req_r, 3)
            os.dup2(ev_w, 4)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)

        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
            preexec_fn=child_setup, close_fds=False)
        for fd in (req_r, ev_w, out_w, err_w):
            os.close(fd)
        self.req_w, self.ev_r, self.out_r, self.err_r = req_w, ev_r, out_r, err_r
        self.buffer = b""
        self.stdout = b""
        self.stderr = b""
        self.log = []  # ("stdout"|"stderr", bytes) and ("event", dict), in arrival order
        self.events_eof = False
        self.ready = self.next_event(timeout=start_timeout)

    # ---- writing -----------------------------------------------------------------------
    def send_raw(self, data):
        os.write(self.req_w, data)

    def send(self, message):
        payload = json.dumps(message).encode("utf-8")
        self.send_raw(len(payload).to_bytes(4, "big") + payload)

    def close_requests(self):
        if self.req_w is not None:
            os.close(self.req_w)
            self.req_w = None

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)

    # ---- reading -----------------------------------------------------------------------
    def _pump(self, timeout, events_too=True):
        """One select round over stdout, stderr and (unless events_too is False) fd 4."""
        fds = [fd for fd in (self.out_r, self.err_r) if fd is not None]
        if not self.events_eof and events_too:
            fds.append(self.ev_r)
        if not fds:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in (self.out_r, self.err_r):
            if fd is not None and fd in ready:
                chunk = os.read(fd, 1 << 20)
                name = "stdout" if fd == self.out_r else "stderr"
                if not chunk:
                    os.close(fd)
                    if name == "stdout":
                        self.out_r = None
                    else:
                        self.err_r = None
                    continue
                if name == "stdout":
                    self.stdout += chunk
                else:
                    self.stderr += chunk
                self.log.append((name, chunk))
        if self.ev_r in ready:
            chunk = os.read(self.ev_r, 1 << 20)
            if not chunk:
                self.events_eof = True
            self.buffer += chunk

    def _take_frame(self):
        if len(self.buffer) < 4:
            return None
        n = int.from_bytes(self.buffer[:4], "big")
        if len(self.buffer) < 4 + n:
            return None
        # The driver flushes stdout/stderr before writing an event, so everything printed
        # before it is in those pipes now: read it before logging the event. (Output printed
        # after the event may come along too; two pipes cannot order more finely.)
        while True:
            before = len(self.log)
            self._pump(0, events_too=False)
            if len(self.log) == before:
                break
        payload, self.buffer = self.buffer[4:4 + n], self.buffer[4 + n:]
        if n > 16 * 1024 * 1024:
            raise AssertionError("event frame of {} bytes exceeds 16 MiB".format(n))
        event = json.loads(payload.decode("utf-8"))
        event["_bytes"] = n
        self.log.append(("event", event))
        return event

    def next_event(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            event = self._take_frame()
            if event is not None:
                return event
            if self.events_eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no event within {} s; stderr: {!r}".format(timeout, self.stderr[-2000:]))
            self._pump(min(remaining, 0.5))

    def execute(self, code, cell_id=None, timeout=60.0, interrupt_after=None):
        """Run one cell; returns (events up to and including done, stdout text of the cell)."""
        cell_id = cell_id or "cell-{}".format(time.monotonic_ns())
        start_out = len(self.stdout)
        start_log = len(self.log)
        self.send({"type": "execute", "id": cell_id, "code": code})
        events = []
        deadline = time.monotonic() + timeout
        interrupted = False
        while True:
            wait = 0.2 if interrupt_after is not None and not interrupted else deadline - time.monotonic()
            try:
                event = self.next_event(timeout=max(0.05, wait))
            except TimeoutError:
                if interrupt_after is not None and not interrupted:
                    if time.monotonic() >= deadline - timeout + interrupt_after:
                        self.interrupt()
                        interrupted = True
                    continue
                raise
            if event is None:
                raise AssertionError("driver closed fd 4 during the cell; stderr: {!r}".format(self.stderr[-2000:]))
            events.append(event)
            if event["type"] == "done" and event.get("id") == cell_id:
                break
            if interrupt_after is not None and not interrupted and time.monotonic() >= deadline - timeout + interrupt_after:
                self.interrupt()
                interrupted = True
        self.last_log = self.log[start_log:]
        return events, self.stdout[start_out:].decode("utf-8", "replace")

    def drain_output(self, seconds=0.3):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._pump(0.05)

    def wait_exit(self, timeout=10.0):
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self._pump(0.05)
        return self.proc.wait(timeout=max(0.1, end - time.monotonic()))

    def close(self):
        try:
            self.close_requests()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self.ev_r, self.out_r, self.err_r):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.ev_r = self.out_r = self.err_r = None


def results(events, main=None):
    out = [e for e in events if e["type"] == "result"]
    if main is not None:
        out = [e for e in out if e["isMainResult"] is main]
    return out


def error_of(events):
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) <= 1, errors
    return errors[0] if errors else None


def done_of(events):
    assert events and events[-1]["type"] == "done", events
    return events[-1]
