#!/usr/bin/env python3
"""SandboxKit in-sandbox agent.

One long-lived process per sandbox container. It speaks a length-framed binary
protocol on stdin/stdout (docs/agent-protocol.md), runs every command as its own
`bash -c` process in a new session with real stdout/stderr pipes and a real exit
status, and keeps the session's state (working directory and exported
variables) by having each command's shell dump that state to an extra pipe in
an EXIT trap. Also serves simple file operations. Python 3.11 stdlib only.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import queue
import re
import select
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections import deque
from typing import Any, Callable

VERSION = "0.1.0"
MAX_PAYLOAD = 16 * 1024 * 1024
CHUNK = 64 * 1024
HEADER = struct.Struct(">IcI")  # L (= 5 + payload length), type, channel
ARG_STRLEN_MAX = 128 * 1024 - 1  # Linux MAX_ARG_STRLEN: longest single argv/env string
INLINE_SCRIPT_MAX = 100 * 1024  # longer scripts are run from a file instead of `-c`
STATE_FD_MIN = 100  # state pipe lives at a high fd so user redirections (3..9) cannot hit it
# Command shells. Absolute: the session PATH may be anything. Debian's bash-static is the same
# bash release and configuration linked statically: without the dynamic loader a shell starts
# with ~30% fewer page faults, the main cost of a command on VMs where faults are expensive
# (docs/benchmarks.md). Shells still get argv[0] "bash", so $0 and $BASH read as for /bin/bash.
BASH = shutil.which("bash-static") or shutil.which("bash") or "/bin/bash"
INTERPRETERS = {"python": ("python3", ".py"), "node": ("node", ".js"), "bash": ("bash", ".sh")}
NOT_PERSISTED = {"SHLVL", "_", "__SBK_BASH_ENV"}  # bash (or the prelude) rewrites these
# 0: every command spawns its own shell. 1 (default): a warm shell is spawned when the
# agent starts and after each command. 2: also as soon as a warm shell is taken, betting
# that the command leaves the state unchanged (if not, that shell is replaced when it
# finishes): helps commands sent back to back, but the spawn competes for CPU with the
# running command and is wasted when the command changes the state.
WARM_MODE = os.environ.get("SANDBOXKIT_AGENT_WARM", "1")
WARM_ENABLED = WARM_MODE != "0"
WARM_REFILL_ON_TAKE = WARM_MODE == "2"
WARM_WAIT = 1.0  # s: longest a command waits for a warm shell whose spawn is under way
# Session variables that bash acts on at startup in ways the warm bootstrap could not
# reproduce (or that would trace/alter the bootstrap itself): such sessions run cold.
# (TMOUT would time out the bootstrap's blocking `read`.)
WARM_UNSAFE_ENV = ("BASH_ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT", "SECONDS", "TMOUT")

ERRNO_CODES = {
    errno.ENOENT: "not_found", errno.EISDIR: "is_directory", errno.ENOTDIR: "not_directory",
    errno.EACCES: "permission_denied", errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied", errno.EEXIST: "exists", errno.ENOTEMPTY: "not_empty",
    errno.EINVAL: "invalid", errno.ENAMETOOLONG: "invalid", errno.ELOOP: "invalid",
    errno.EBUSY: "busy",
}

# The prelude runs before the command's script via BASH_ENV, so the `-c` text stays
# exactly the user's (line numbers and syntax-error echoes are untouched). It:
# - raises oom_score_adj with a builtin redirection, so the kernel OOM-kills commands
#   and never the agent,
# - installs an EXIT trap (only when state persists) that dumps, with builtins only (no
#   fork): "$PWD" NUL, the `export -p` listing, NUL. A shell killed mid-dump leaves no
#   final NUL and the dump is ignored. (`export -p` is one builtin call; enumerating
#   names with `${!A@}`..`${!_@}` and `printf` per variable measured 5-10x slower.)
# - hands back a BASH_ENV the session itself had exported, and sources it as bash would.
_TRAP = ('{ builtin set +eux; } 2>/dev/null; { builtin printf "%s\\0" "$PWD"; '
         'builtin export -p; builtin printf "\\0"; } >&@FD@ 2>/dev/null')

# One `export -p` record: `declare -FLAGS NAME[=VALUE]` or, in posix mode,
# `export [-FLAGS] NAME[=VALUE]`; VALUE is "double quoted", $'ANSI-C quoted' or an (array).
_QUOTED = rb'"(?:[^"\\]|\\.)*"|\$\'(?:[^\'\\]|\\.)*\''
_EXPORT_RECORD = re.compile(
    rb"(?:declare|export)(?: -([A-Za-z-]+))? ([A-Za-z_][A-Za-z0-9_]*)"
    rb"(?:=(" + _QUOTED + rb"|\((?:[^\"'\\)]|\\.|" + _QUOTED + rb"|'[^']*')*\)))?\n", re.S)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DQ_ESCAPE = re.compile(rb'\\([$`"\\\n])')
_ANSI_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_ANSI_NAMED = {b"a": b"\a", b"b": b"\b", b"e": b"\x1b", b"E": b"\x1b", b"f": b"\f",
               b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _ansi_unescape(m: re.Match[bytes]) -> bytes:
    if m.group(1):
        return bytes([int(m.group(1), 8) & 0xFF])
    if m.group(2):
        return bytes([int(m.group(2), 16)])
    return _ANSI_NAMED.get(m.group(3), m.group(3))


def parse_export_p(text: bytes) -> dict[str, str] | None:
    """Exported scalars from `export -p` output; None if it does not parse."""
    env: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _EXPORT_RECORD.match(text, pos)
        if m is None:
            return None
        pos = m.end()
        flags, name, value = m.group(1) or b"x", m.group(2), m.group(3)
        if value is None or value.startswith(b"(") or b"a" in flags or b"A" in flags:
            continue  # exported but unset, or an array (never reaches a child's env)
        if value.startswith(b'"'):
            raw = _DQ_ESCAPE.sub(rb"\1", value[1:-1])
        else:
            raw = _ANSI_ESCAPE.sub(_ansi_unescape, value[2:-1])
        env[name.decode()] = os.fsdecode(raw)
    return env


_RAISE_OOM_SCORE = "{ builtin echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null"


def _exit_trap(state_fd: int) -> str:
    return "trap -- '" + _TRAP.replace("@FD@", str(state_fd)) + "' EXIT"


def prelude_text(state_fd: int | None) -> str:
    text = _RAISE_OOM_SCORE + "\n"
    if state_fd is not None:
        text += _exit_trap(state_fd) + "\n"
    return text + ("if [[ -v __SBK_BASH_ENV ]]; then BASH_ENV=$__SBK_BASH_ENV; "
                   'unset __SBK_BASH_ENV; . "$BASH_ENV"; else unset BASH_ENV; fi\n')


def warm_bootstrap(state_fd: int, wake_fd: int, script_fd: int) -> str:
    """A warm shell's `-c` text, on one line so that the script's line numbers start at 1.

    It does what the prelude does for a cold shell (no BASH_ENV: warm sessions have none),
    then blocks until the agent closes the wake pipe, and reads the script from a memfd (a
    seekable fd, so `read -d ''` reads it in blocks, not byte by byte) into
    BASH_EXECUTION_STRING, which `bash -c SCRIPT` sets to SCRIPT anyway: no helper variable
    is left behind. It closes both fds, restarts SECONDS (the shell may have idled), and
    ends with the prelude's last command (`unset BASH_ENV`, a no-op here) so that `$_` is
    what a cold shell's script sees. Then `eval` runs the script."""
    return (f"{_RAISE_OOM_SCORE}; {_exit_trap(state_fd)}; "
            f"read -r BASH_EXECUTION_STRING <&{wake_fd}; "
            f'IFS= read -r -d "" BASH_EXECUTION_STRING <&{script_fd}; '
            f"exec {wake_fd}<&- {script_fd}<&-; SECONDS=0; unset BASH_ENV; "
            'eval "$BASH_EXECUTION_STRING"')


def log(msg: str) -> None:
    try:
        os.write(2, f"sandboxkit-agent[{os.getpid()}]: {msg}\n".encode(errors="replace"))
    except OSError:
        pass


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_body(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, RequestError):
        return {"code": exc.code, "message": str(exc)}
    if isinstance(exc, OSError):
        return {"code": ERRNO_CODES.get(exc.errno or 0, "internal"),
                "message": f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")}
    return {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}


def to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates from JSON: nothing sensible to keep
        return text.encode("utf-8", "replace")


def jdump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class FrameWriter:
    """Writes whole frames to fd 1; one lock so frames never interleave."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, kind: bytes, channel: int, payload: bytes | memoryview = b"") -> None:
        bufs: list[Any] = [HEADER.pack(len(payload) + 5, kind, channel)]
        if payload:
            bufs.append(payload)
        self.write(bufs)

    def write(self, bufs: list[Any]) -> None:
        """Writes already framed buffers as one unit (consumes the list)."""
        try:
            with self._lock:
                while bufs:
                    n = os.writev(self._fd, bufs[:512])  # IOV_MAX is 1024
                    while bufs and n >= len(bufs[0]):
                        n -= len(bufs.pop(0))
                    if n:
                        bufs[0] = memoryview(bufs[0])[n:]
        except OSError as e:  # server gone: nothing left to do
            log(f"stdout write failed ({e}); exiting")
            AGENT.shutdown(0)

    def json(self, kind: bytes, channel: int, obj: Any) -> None:
        self.send(kind, channel, jdump(obj))


BATCH_HOLD = 0.005  # s: longest a command's frame waits for the frames that follow it


class FrameBatch:
    """One command's frames, held briefly and written together. Every write to stdout wakes
    the container runtime's relay (containerd-shim, dockerd) and then the server's read
    loop, so a command that finishes quickly costs one write (started, output, exited)
    instead of one per frame. Results are never delayed: the exit frame flushes at once;
    streamed output reaches the server at most BATCH_HOLD later."""

    def __init__(self, out: FrameWriter, channel: int) -> None:
        self.out, self.channel = out, channel
        self.bufs: list[Any] = []
        self.size = 0
        self.since = 0.0

    def add(self, kind: bytes, payload: bytes | memoryview = b"") -> None:
        if not self.bufs:
            self.since = time.perf_counter()
        self.bufs.append(HEADER.pack(len(payload) + 5, kind, self.channel))
        if payload:
            self.bufs.append(payload)
        self.size += len(payload) + 9
        if self.size >= CHUNK:
            self.flush()

    def wait_ms(self) -> float | None:
        """How long poll() may block before the held frames are due (None: nothing held)."""
        if not self.bufs:
            return None
        return max(0.0, (self.since + BATCH_HOLD - time.perf_counter()) * 1000)

    def flush(self) -> None:
        if self.bufs:
            bufs, self.bufs, self.size = self.bufs, [], 0
            self.out.write(bufs)


# cgroup v2, then v1. SANDBOXKIT_AGENT_OOM_EVENTS replaces both (tests use a fake file).
OOM_FILES = tuple(filter(None, [os.environ.get("SANDBOXKIT_AGENT_OOM_EVENTS")])) or (
    "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def read_oom_kills() -> int | None:
    """The cgroup's `oom_kill` counter, or None when there is no such file."""
    for path in OOM_FILES:
        try:
            with open(path, "rb") as f:
                for line in f:
                    if line.startswith(b"oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return None


def _default_disposition(pid: int, sig: int) -> bool:
    """True if pid neither catches nor ignores sig (so receiving it would be fatal)."""
    mask = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith((b"SigIgn:", b"SigCgt:")):
                mask |= int(line.split()[1], 16)
    return not mask & (1 << (sig - 1))


def kill_tree(sid: int, sig: int, missed_only: bool = False) -> None:
    """Signal the process group `sid` plus every process in session `sid` or in
    group `sid` (catches children that changed their process group). With
    `missed_only`, signal only live members for which `sig` is still fatal: they
    cannot have received it yet, so re-sending is harmless."""
    for _ in range(3 if sig == signal.SIGKILL else 1):
        if not missed_only:
            try:
                os.killpg(sid, sig)
            except OSError:
                pass
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                # after the comm field: state ppid pgrp session ...
                if fields[0] == b"Z" or (int(fields[2]) != sid and int(fields[3]) != sid):
                    continue
                pid = int(name)
                if missed_only and not _default_disposition(pid, sig):
                    continue
                os.kill(pid, sig)
                found = True
            except (OSError, IndexError, ValueError):
                continue
        if not found:  # repeat only while we keep finding live members (fork races)
            break


def available(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


class Workers:
    """Reusable daemon threads: starting a fresh thread per request cost ~0.3 ms."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._queue.put(fn)
        if spawn:
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except BaseException as exc:  # run() methods catch; this is a last resort
                log(f"worker: {type(exc).__name__}: {exc}")
            with self._lock:
                self._idle += 1


class Session:
    """Working directory and exported environment shared by all commands."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        wd = os.environ.get("SANDBOXKIT_AGENT_WORKDIR") or (
            "/workspace" if os.path.isdir("/workspace") else os.getcwd())
        self.home = wd if os.path.isdir(wd) else "/"
        self.cwd = self.home
        self.env = dict(os.environ)
        self._last_listing: bytes = b""
        self._last_exported: dict[str, str] = {}

    def snapshot(self) -> tuple[str, dict[str, str]]:
        with self.lock:
            env = dict(self.env)
        return self.current_cwd(), env

    def current_cwd(self) -> str:
        """The cwd the next command starts in (a deleted cwd falls back to the home)."""
        cwd = self.cwd
        if not os.path.isdir(cwd):
            cwd = self.home if os.path.isdir(self.home) else "/"
        return cwd

    def resolve(self, path: Any) -> str:
        if not isinstance(path, str) or not path:
            raise RequestError("invalid", "'path' must be a non-empty string")
        with self.lock:
            return os.path.join(self.cwd, path)

    def apply(self, dump: bytes, base_env: dict[str, str], keep: set[str],
              keep_cwd: bool) -> None:
        """Adopt a complete state dump; incomplete or unparsable dumps are ignored."""
        cwd_raw, sep, listing = dump.partition(b"\0")
        if not sep or not listing.endswith(b"\0"):
            return
        if listing == self._last_listing:  # usual case: nothing was exported or unset
            exported = self._last_exported
        else:
            exported = parse_export_p(listing[:-1])
            if exported is not None:
                self._last_listing, self._last_exported = listing, exported
        if exported is None:
            log(f"unparsable state dump ignored: {listing[:200]!r}")
            return
        env: dict[str, str] = {}
        for name, value in exported.items():
            if name in NOT_PERSISTED or name in keep:
                continue
            size = len(name) + len(os.fsencode(value)) + 1
            if size > ARG_STRLEN_MAX:  # could never be exec'd again: would brick the session
                log(f"not persisting oversized variable {name} ({size} bytes)")
                continue
            env[name] = value
        for name, value in base_env.items():
            # bash cannot see (or change) names that are not identifiers, nor SHLVL;
            # variables overridden for this command only keep their session value.
            if name in NOT_PERSISTED or name in keep or not _IDENTIFIER.fullmatch(name):
                env[name] = value
        cwd = os.fsdecode(cwd_raw)
        with self.lock:
            self.env = env
            if cwd and not keep_cwd:
                self.cwd = cwd


def _high_fd(fd: int) -> int:
    """Move fd to a close-on-exec descriptor >= STATE_FD_MIN (user redirections use 3..9)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, STATE_FD_MIN)
    finally:
        os.close(fd)


def _script_fd(tmpdir: str) -> int:
    """An empty, seekable, anonymous file for handing a script to a warm shell."""
    try:
        fd = os.memfd_create("sandboxkit-script", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd (old kernel / sandboxing runtime)
        fd, path = tempfile.mkstemp(prefix="warm-", dir=tmpdir)
        os.unlink(path)
    return _high_fd(fd)


class WarmShell:
    """A `bash -c` started ahead of time for the session state (cwd + env) of that moment,
    with its output and state pipes already made, blocked in a builtin `read` until it is
    handed a script. Used for at most one command."""

    def __init__(self, agent: Agent, cwd: str, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        st = os.stat(cwd)
        self.cwd_id = (st.st_dev, st.st_ino)  # a directory replaced under the same path is another state
        mine: list[int] = []  # our ends, closed if the spawn fails
        theirs: list[int] = []  # the shell's ends, closed once it has them
        try:
            self.out_r, w = os.pipe()
            mine.append(self.out_r)
            theirs.append(w)
            self.err_r, w = os.pipe()
            mine.append(self.err_r)
            theirs.append(w)
            self.state_r, w = os.pipe()
            mine.append(self.state_r)
            theirs.append(state_w := _high_fd(w))
            r, self.wake_w = os.pipe()
            mine.append(self.wake_w)
            theirs.append(wake_r := _high_fd(r))
            self.script_fd: int | None = _script_fd(agent.tmpdir)
            mine.append(self.script_fd)
            boot = warm_bootstrap(state_w, wake_r, self.script_fd)
            self.proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-c", boot], executable=BASH,
                stdin=subprocess.DEVNULL, stdout=theirs[0], stderr=theirs[1], cwd=cwd, env=env,
                start_new_session=True, pass_fds=(state_w, wake_r, self.script_fd))
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self.pid = self.proc.pid

    def usable(self, session: Session) -> bool:
        """Alive, and started for exactly the state the next command would start in."""
        with session.lock:
            if session.env is not self.env and session.env != self.env:
                return False
        if session.current_cwd() != self.cwd:
            return False
        try:
            st = os.stat(self.cwd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.cwd_id and self.proc.poll() is None

    def hand_over(self, script: bytes) -> None:
        """Give the shell its script; it starts running it at once."""
        assert self.script_fd is not None
        view, done = memoryview(script), 0
        while done < len(view):
            done += os.pwrite(self.script_fd, view[done:], done)
        os.close(self.script_fd)
        self.script_fd = None
        os.close(self.wake_w)  # EOF on the wake pipe: the shell reads the script and runs it
        self.wake_w = -1

    def discard(self) -> None:
        """Kill the unused shell (it has no children: it never got a script) and reap it."""
        self.kill_now()
        try:
            self.proc.wait()
        except Exception:
            pass
        for fd in (self.out_r, self.err_r, self.state_r, self.wake_w, self.script_fd):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.wake_w, self.script_fd = -1, None

    def kill_now(self) -> None:
        """Lock-free (agent shutdown). Not yet reaped, so the pid cannot have been reused."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass


class WarmShells:
    """Keeps at most one warm shell ready for the session's current state.

    It is (re)spawned when the agent starts and after every command (request() then
    refresh(); only one thread spawns at a time). A command that may run warm calls take():
    it gets the shell if it matches the current state, waits (WARM_WAIT at most) if a spawn
    is under way and no other command is waiting for it, and otherwise runs cold."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.cond = threading.Condition()
        self.slot: WarmShell | None = None
        self.busy = False  # a refresh is pending or running
        self.again = False  # the state may have changed since the running refresh looked
        self.claimed = False  # a command is already waiting for the refresh's shell
        self.stale: list[WarmShell] = []  # killed by request(), reaped by refresh()

    @staticmethod
    def eligible_env(env: dict[str, str]) -> bool:
        return WARM_ENABLED and not any(name in env for name in WARM_UNSAFE_ENV) and not any(
            name.startswith("BASH_FUNC_") for name in env)  # exported functions could shadow builtins

    def request(self) -> bool:
        """The state may have changed. True: the caller must run refresh() (soon; takers
        wait for it). Called before the frame that lets the server send the next request.
        An idle shell that no longer fits is killed right here, so nobody sees it after."""
        if not WARM_ENABLED:
            return False
        with self.cond:
            ws = self.slot
            if ws is not None and not ws.usable(self.agent.session):
                self.slot = None
                ws.kill_now()
                self.stale.append(ws)
            if self.busy:
                self.again = True
                return False
            self.busy = True
            return True

    def refresh(self) -> None:
        """Make the slot hold a shell for the current state (keeping one that still fits)."""
        session = self.agent.session
        done = False
        try:
            while True:
                with self.cond:
                    self.again = False
                    old = self.slot
                    if old is not None and old.usable(session):
                        old = None  # still right: keep it
                        spawn = False
                    else:
                        self.slot = None
                        spawn = True
                    stale, self.stale = self.stale, []
                if old is not None:
                    stale.append(old)
                for ws in stale:
                    ws.discard()
                new = None
                if spawn:
                    cwd, env = session.snapshot()
                    if self.eligible_env(env):
                        try:
                            new = WarmShell(self.agent, cwd, env)
                        except Exception as exc:  # e.g. EAGAIN at the pids limit: run cold
                            log(f"warm shell spawn failed: {type(exc).__name__}: {exc}")
                with self.cond:
                    if new is not None:
                        self.slot = new
                    self.cond.notify_all()
                    if not self.again:  # in this lock: a request() from now on starts a refresh
                        self.busy, done = False, True
                        return
        finally:
            if not done:  # unexpected error: never leave takers waiting for nothing
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def take(self, wait: bool) -> WarmShell | None:
        """The warm shell, if it fits the current state. With `wait`, waits for one that is
        being spawned (unless another command already waits for it)."""
        session = self.agent.session
        deadline = None
        dead: list[WarmShell] = []
        taken = None
        try:
            with self.cond:
                while True:
                    ws = self.slot
                    if ws is not None:
                        if ws.usable(session):
                            self.slot, taken = None, ws
                            return ws
                        if ws.proc.returncode is not None:  # killed while idle
                            self.slot = None
                            dead.append(ws)
                    if not wait or not self.busy or (self.claimed and deadline is None):
                        return None
                    now = time.monotonic()
                    if deadline is None:
                        deadline, self.claimed = now + WARM_WAIT, True
                    elif now >= deadline:
                        return None
                    self.cond.wait(deadline - now)
        finally:
            if deadline is not None:
                with self.cond:
                    self.claimed = False
            for ws in dead:
                ws.discard()
            if taken is not None and WARM_REFILL_ON_TAKE and self.request():
                self.agent.workers.submit(self.refresh)

    def kill_now(self) -> None:
        """Agent shutdown (lock-free). A shell still being spawned exits by itself: the
        agent's exit closes its wake pipe, and it then runs an empty script."""
        ws = self.slot
        if ws is not None:
            ws.kill_now()


class Command:
    """One `R` request: a bash process plus the thread that pumps its pipes."""

    def __init__(self, agent: Agent, channel: int, req: dict[str, Any]) -> None:
        self.agent, self.channel = agent, channel
        command, code = req.get("command"), req.get("code")
        if (command is None) == (code is None):
            raise RequestError("invalid", "exactly one of 'command' or 'code' is required")
        if not isinstance(command if code is None else code, str):
            raise RequestError("invalid", "'command'/'code' must be a string")
        self.script: str = command if code is None else ""
        self.code: str | None = code
        self.language = req.get("language", "python")
        if code is not None and self.language not in INTERPRETERS:
            raise RequestError("invalid", f"unknown language {self.language!r}")
        self.timeout = req.get("timeoutMs") or 0
        if not isinstance(self.timeout, (int, float)) or self.timeout < 0:
            raise RequestError("invalid", "'timeoutMs' must be a non-negative number")
        stdin_mode = req.get("stdin", "closed")
        if stdin_mode not in ("closed", "pipe"):
            raise RequestError("invalid", "'stdin' must be 'closed' or 'pipe'")
        text = req.get("stdinText")
        if text is not None and not isinstance(text, str):
            raise RequestError("invalid", "'stdinText' must be a string")
        self.pipe_stdin = stdin_mode == "pipe"
        self.stdin_pending: deque[bytes | memoryview] = deque([to_bytes(text)] if text else [])
        self.stdin_eof = not self.pipe_stdin  # close once pending is written
        self.merge = bool(req.get("mergeStderr", False))
        self.env_override = req.get("env") or {}
        if not isinstance(self.env_override, dict) or not all(
                isinstance(k, str) and k and "=" not in k and "\0" not in k
                and isinstance(v, str) and "\0" not in v for k, v in self.env_override.items()):
            raise RequestError("invalid", "'env' must map variable names to strings")
        self.cwd_override = req.get("cwd")
        if self.cwd_override is not None and not isinstance(self.cwd_override, str):
            raise RequestError("invalid", "'cwd' must be a string")
        self.persist = req.get("persistState", True) is not False
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.pending_signal: int | None = None
        self.finished = False
        self.wake_w: int | None = None
        self.temp_files: list[str] = []
        self.warm: WarmShell | None = None  # the warm shell running this command, if any
        self.t0 = 0.0
        self.oom_before: int | None = None
        self.frames = FrameBatch(agent.out, channel)

    # ---- called from the reader thread ------------------------------------
    def feed(self, data: bytes) -> None:
        with self.lock:
            if self.pipe_stdin and not self.stdin_eof:
                self.stdin_pending.append(data)
        self._wake()

    def close_stdin(self) -> None:
        with self.lock:
            self.stdin_eof = True
        self._wake()

    def kill(self, sig: int) -> None:
        with self.lock:
            if self.finished:
                return
            if self.pid is None:
                self.pending_signal = sig
                return
        self._signal(sig)

    def _signal(self, sig: int) -> None:
        kill_tree(self.pid, sig)  # type: ignore[arg-type]
        if sig != signal.SIGKILL:
            # A shell with an EXIT trap (ours) catches terminating signals and acts on
            # them between commands. A child forked around the delivery (pre-exec, still
            # running bash's handler) swallows the signal and would keep the command
            # alive, or outlive its shell. So for ~1 s, follow-up passes re-send it to
            # tree members that evidently missed it, even after the shell has exited
            # (its session id cannot be reused while members exist).
            def follow_up() -> None:
                for delay in (0.05, 0.2, 0.75):
                    time.sleep(delay)
                    kill_tree(self.pid, sig, missed_only=True)  # type: ignore[arg-type]
            threading.Thread(target=follow_up, daemon=True).start()

    def abort(self) -> None:
        """Agent shutdown: lock-free on purpose (see Agent.shutdown)."""
        pid = self.pid
        if pid is not None and not self.finished:
            kill_tree(pid, signal.SIGKILL)
        self._remove_temp_files()

    def _wake(self) -> None:
        with self.lock:  # wake_w is cleared under this lock before it is closed
            if self.wake_w is not None:
                try:
                    os.write(self.wake_w, b"\0")
                except OSError:  # pipe full: the command thread is awake anyway
                    pass

    # ---- command thread --------------------------------------------------
    def run(self) -> None:
        fds: list[int] = []
        self.refresh_warm = False
        try:
            self._execute(fds)
        except Exception as exc:  # never let a command take the agent down
            if not isinstance(exc, (RequestError, OSError)):
                log(f"channel {self.channel}: {type(exc).__name__}: {exc}")
            with self.lock:
                self.finished = True
                started = self.pid is not None
            if started:
                kill_tree(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
            self.agent.release(self.channel)
            self.refresh_warm = self.agent.warm.request()
            self.frames.add(b"r", jdump(error_body(exc)))
            self.frames.flush()
        finally:
            with self.lock:
                self.wake_w = None
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._remove_temp_files()
        if self.refresh_warm:  # after the final frame: off this command's critical path
            self.agent.warm.refresh()

    def _remove_temp_files(self) -> None:
        while self.temp_files:
            try:
                os.unlink(self.temp_files.pop())
            except (OSError, IndexError):
                pass

    def _write_temp(self, suffix: str, text: str) -> str:
        path = os.path.join(self.agent.tmpdir, f"run-{os.getpid()}-{self.channel}{suffix}")
        self.temp_files.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            data = to_bytes(text)
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        return path

    def _pipe(self, fds: list[int]) -> tuple[int, int]:
        r, w = os.pipe()
        fds += (r, w)
        return r, w

    def _spawn_cold(self, fds: list[int], script: str, script_bytes: bytes) -> tuple[
            subprocess.Popen[bytes], int, int | None, int | None, int | None,
            dict[str, str], int | None, float]:
        """Today's path: a fresh `bash -c` for this command."""
        session = self.agent.session
        cwd, env = session.snapshot()
        base_env = dict(env)
        if self.cwd_override is not None:
            cwd = os.path.join(cwd, self.cwd_override)
            if not os.path.isdir(cwd):
                raise RequestError("not_found" if not os.path.exists(cwd) else "not_directory",
                                   f"cwd {cwd!r} is not a directory")
        env.update(self.env_override)

        out_r, out_w = self._pipe(fds)
        err_r, err_w = (None, out_w) if self.merge else self._pipe(fds)
        state_r = state_w = None
        if self.persist:
            state_r, w = self._pipe(fds)
            state_w = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, STATE_FD_MIN)
            fds.append(state_w)
        if "BASH_ENV" in env:  # the prelude restores (and sources) it
            env["__SBK_BASH_ENV"] = env["BASH_ENV"]
        env["BASH_ENV"] = self.agent.prelude(state_w)
        stdin_r = stdin_w = None
        if self.pipe_stdin or self.stdin_pending:
            stdin_r, stdin_w = self._pipe(fds)
        if len(script_bytes) < INLINE_SCRIPT_MAX:
            argv: list[str | bytes] = ["bash", "--noprofile", "--norc", "-c", script_bytes]
        else:  # a single argv string is limited to 128 KiB by the kernel
            argv = ["bash", "--noprofile", "--norc", self._write_temp(".sh", script)]

        oom_before = read_oom_kills()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, executable=BASH, stdin=stdin_r if stdin_r is not None else subprocess.DEVNULL,
            stdout=out_w, stderr=err_w, cwd=cwd, env=env, start_new_session=True,
            pass_fds=(state_w,) if state_w is not None else ())
        for fd in (out_w, err_w, state_w, stdin_r):  # keep only our ends
            if fd is not None and fd in fds:
                fds.remove(fd)
                os.close(fd)
        return proc, out_r, err_r, state_r, stdin_w, base_env, oom_before, t0

    def _warm_candidate(self, script: bytes) -> bool:
        """Whether this request may run in a warm shell, which was spawned with the session
        state, stdin /dev/null, separate stdout/stderr and the state trap. Scripts the warm
        bootstrap would not run exactly like `bash -c` does also run cold: NUL (not valid in
        an argv string), \\x01 (bash's internal quoting byte, mangled by `read` next to
        invalid UTF-8), a leading `-`/`+` (`bash -c` takes that as options), over 100 KiB."""
        return (not self.pipe_stdin and not self.stdin_pending and not self.merge
                and not self.env_override and self.cwd_override is None and self.persist
                and len(script) < INLINE_SCRIPT_MAX and b"\0" not in script
                and b"\x01" not in script and not script.startswith((b"-", b"+")))

    def start_warm(self, script: bytes, wait: bool) -> None:
        """Hand the script to the warm shell if it fits (sets self.warm and self.pid).
        Called on the reader thread without waiting, so that the shell already runs while
        the worker thread wakes up; else (or for `code`) on the worker, waiting."""
        if not self._warm_candidate(script):
            return
        warm = self.agent.warm.take(wait)
        if warm is None:
            return
        oom_before = read_oom_kills()
        t0 = time.perf_counter()  # durationMs counts from the hand-over
        try:
            warm.hand_over(script)
        except Exception as exc:  # the shell never got the script: run cold instead
            log(f"warm hand-over failed ({type(exc).__name__}: {exc}); running cold")
            warm.discard()
            return
        self.warm, self.oom_before, self.t0 = warm, oom_before, t0
        with self.lock:
            self.pid = warm.pid

    def _execute(self, fds: list[int]) -> None:
        session = self.agent.session
        warm = self.warm
        if warm is None:
            script = self.script
            if self.code is not None:
                interp, ext = INTERPRETERS[self.language]
                script = f"{interp} {shlex.quote(self._write_temp(ext, self.code))}"
            script_bytes = to_bytes(script)
            self.start_warm(script_bytes, wait=True)
            warm = self.warm
        if warm is not None:
            fds += (warm.out_r, warm.err_r, warm.state_r)
            out_r, err_r, state_r, stdin_w = warm.out_r, warm.err_r, warm.state_r, None
            proc, base_env, oom_before, t0 = warm.proc, warm.env, self.oom_before, self.t0
        else:
            proc, out_r, err_r, state_r, stdin_w, base_env, oom_before, t0 = \
                self._spawn_cold(fds, script, script_bytes)
        with self.lock:
            self.pid = proc.pid
            sig, self.pending_signal = self.pending_signal, None
        if sig is not None:
            self._signal(sig)
        if self.pipe_stdin:
            wake_r, self.wake_w = self._pipe(fds)
            os.set_blocking(self.wake_w, False)
        self.frames.add(b"s", jdump({"pid": proc.pid}))

        try:
            exit_fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # old kernel / gVisor: a waiter thread instead
            exit_fd, done_w = self._pipe(fds)
            threading.Thread(target=lambda: (proc.wait(), os.write(done_w, b"x")),
                             daemon=True).start()
        else:
            fds.append(exit_fd)

        readers: dict[int, bytes | None] = {out_r: b"o"}
        if err_r is not None:
            readers[err_r] = b"e"
        if state_r is not None:
            readers[state_r] = None  # state dump, not forwarded
        state = bytearray()
        poller = select.poll()
        for fd in readers:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        poller.register(exit_fd, select.POLLIN)
        if self.pipe_stdin:
            poller.register(wake_r, select.POLLIN)
        if stdin_w is not None:
            os.set_blocking(stdin_w, False)
            poller.register(stdin_w, select.POLLOUT)

        def pump(fd: int, limit: int = CHUNK) -> bool:
            """Read once from fd; False at EOF."""
            try:
                data = os.read(fd, limit)
            except BlockingIOError:
                return True
            if not data:
                poller.unregister(fd)
                del readers[fd]
                return False
            kind = readers[fd]
            if kind is None:
                state.extend(data)
            else:
                self.frames.add(kind, data)
            return True

        deadline = t0 + self.timeout / 1000 if self.timeout else None
        timed_out = exited = False
        while not exited:
            wait = None if deadline is None else max(0.0, (deadline - time.perf_counter()) * 1000)
            hold = self.frames.wait_ms()
            if hold == 0:
                self.frames.flush()
            elif hold is not None and (wait is None or hold < wait):
                wait = hold
            for fd, events in poller.poll(wait):
                if fd in readers:
                    pump(fd)
                elif fd == exit_fd:
                    exited = True
                elif self.pipe_stdin and fd == wake_r:
                    os.read(wake_r, 4096)
                    if stdin_w is not None:
                        poller.modify(stdin_w, select.POLLOUT)
                elif fd == stdin_w:
                    if events & (select.POLLERR | select.POLLHUP):  # command closed stdin
                        with self.lock:
                            self.stdin_pending.clear()
                            self.stdin_eof = True
                    stdin_w = self._write_stdin(stdin_w, poller, fds)
            if deadline is not None and not exited and time.perf_counter() >= deadline:
                timed_out, deadline = True, None
                kill_tree(proc.pid, signal.SIGKILL)

        # The shell has exited: everything it wrote is in the pipes. Read exactly what
        # is there now (background children may hold the write ends forever).
        with self.lock:
            self.finished = True
        rc = proc.wait()
        duration = (time.perf_counter() - t0) * 1000
        for fd in list(readers):
            left = available(fd)
            while left > 0 and fd in readers:
                n = min(left, CHUNK)
                pump(fd, n)
                left -= n
        if self.persist and rc >= 0:  # killed by a signal: keep the old state
            session.apply(bytes(state), base_env, set(self.env_override),
                          keep_cwd=self.cwd_override is not None)
        signum = -rc if rc < 0 else None
        exit_code = 128 + signum if signum is not None else rc
        oom_after = read_oom_kills() if oom_before is not None else None
        oom = (oom_after is not None and oom_after > (oom_before or 0)
               and (signum == signal.SIGKILL or exit_code == 128 + signal.SIGKILL))
        self._remove_temp_files()  # before `x`: the file is gone once the server hears of the exit
        self.agent.release(self.channel)
        # The state is known: a warm shell for it is spawned once `x` is out. Marked before
        # `x`, so that a request sent as soon as the server sees `x` waits for that shell.
        self.refresh_warm = self.agent.warm.request()
        self.frames.add(b"x", jdump({
            "exitCode": exit_code, "signal": signum, "timedOut": timed_out,
            "oomKilled": oom, "durationMs": round(duration, 3), "cwd": session.current_cwd()}))
        self.frames.flush()

    def _write_stdin(self, fd: int, poller: select.poll, fds: list[int]) -> int | None:
        """Write pending stdin without blocking; returns None once closed."""
        with self.lock:
            while self.stdin_pending:
                data = self.stdin_pending[0]
                try:
                    n = os.write(fd, data)
                except BlockingIOError:
                    return fd
                except OSError:  # EPIPE: the command closed its stdin; drop the rest
                    self.stdin_pending.clear()
                    self.stdin_eof = True
                    break
                if n < len(data):
                    self.stdin_pending[0] = memoryview(data)[n:]  # no copy of the rest
                else:
                    self.stdin_pending.popleft()
            if not self.stdin_eof:
                poller.modify(fd, 0)  # nothing to write until woken
                return fd
        poller.unregister(fd)
        fds.remove(fd)
        os.close(fd)
        return None


class Upload:
    """One `W` request: data goes to a temp file in the target dir, renamed on `C`."""

    def __init__(self, agent: Agent, channel: int, req: dict[str, Any]) -> None:
        self.agent, self.channel = agent, channel
        self.path = agent.session.resolve(req.get("path"))
        self.mode = req.get("mode")
        if self.mode is not None and (not isinstance(self.mode, int) or not 0 <= self.mode <= 0o7777):
            raise RequestError("invalid", "'mode' must be an integer 0..0o7777")
        if os.path.isdir(self.path):
            raise RequestError("is_directory", f"{self.path} is a directory")
        parent = os.path.dirname(self.path) or "/"
        if req.get("parents", True):
            os.makedirs(parent, exist_ok=True)
        self.fd, self.tmp = tempfile.mkstemp(
            dir=parent, prefix=f".{os.path.basename(self.path)}.", suffix=".sbk-tmp")
        if req.get("append"):
            try:
                with open(self.path, "rb") as src:
                    if self.mode is None:
                        self.mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
                    with open(self.fd, "wb", closefd=False) as dst:
                        shutil.copyfileobj(src, dst)
            except FileNotFoundError:
                pass
        if self.mode is None:
            self.mode = 0o644

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def commit(self) -> int:
        try:
            os.fchmod(self.fd, self.mode)
            size = os.fstat(self.fd).st_size
        finally:
            os.close(self.fd)
        os.rename(self.tmp, self.path)
        return size

    def abort(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class FileOp:
    """G/L/D/M/T: run on their own short-lived thread (reads and deletes may be big)."""

    def __init__(self, agent: Agent, channel: int, kind: bytes, req: dict[str, Any]) -> None:
        self.agent, self.channel, self.kind, self.req = agent, channel, kind, req
        self.path = agent.session.resolve(req.get("path"))
        self.cancelled = False

    def kill(self, sig: int) -> None:
        self.cancelled = True

    def abort(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        try:
            body = jdump(getattr(self, "op_" + self.kind.decode())())
            if len(body) > MAX_PAYLOAD:  # e.g. listing a huge directory: the server would drop us
                raise RequestError("invalid", f"result too large ({len(body)} bytes)")
        except Exception as exc:
            self.agent.release(self.channel)
            self.agent.out.json(b"r", self.channel, error_body(exc))
        else:
            self.agent.release(self.channel)
            self.agent.out.send(b"f", self.channel, body)

    @staticmethod
    def describe(st: os.stat_result) -> dict[str, Any]:
        kind = ("symlink" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                else "file" if stat.S_ISREG(st.st_mode) else "other")
        return {"type": kind, "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
                "mtime": st.st_mtime}

    def op_G(self) -> dict[str, Any]:
        size = 0
        # O_NONBLOCK: opening a FIFO must not hang; only regular files are read.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as f:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise RequestError("is_directory", f"{self.path} is a directory")
            if not stat.S_ISREG(mode):
                raise RequestError("invalid", f"{self.path} is not a regular file")
            os.set_blocking(fd, True)
            while chunk := f.read(CHUNK):
                if self.cancelled:
                    raise RequestError("invalid", "read cancelled")
                self.agent.out.send(b"o", self.channel, chunk)
                size += len(chunk)
        return {"size": size}

    def op_L(self) -> dict[str, Any]:
        entries = []
        with os.scandir(self.path) as it:
            for entry in it:
                try:
                    info = self.describe(entry.stat(follow_symlinks=False))
                except OSError:
                    continue  # vanished meanwhile
                entries.append({"name": entry.name, **info})
        entries.sort(key=lambda e: e["name"])
        return {"entries": entries}

    def op_T(self) -> dict[str, Any]:
        info = self.describe(os.lstat(self.path))
        if info["type"] == "symlink":
            info["target"] = os.readlink(self.path)
        return info

    def op_D(self) -> dict[str, Any]:
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(self.path)
        elif self.req.get("recursive"):
            shutil.rmtree(self.path)
        else:
            os.rmdir(self.path)
        return {}

    def op_M(self) -> dict[str, Any]:
        if self.req.get("parents", True):
            os.makedirs(self.path, exist_ok=True)
        else:
            os.mkdir(self.path)
        return {}


class Agent:
    def __init__(self) -> None:
        self.out = FrameWriter()
        self.session = Session()
        self.workers = Workers()
        self.channels: dict[int, Command | Upload | FileOp] = {}
        self.warm = WarmShells(self)
        self.lock = threading.Lock()
        self.preludes: set[str] = set()
        self.prelude_lock = threading.Lock()
        self.tmpdir = "/tmp/.sandboxkit"
        try:
            os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
            if not os.access(self.tmpdir, os.W_OK):
                raise PermissionError(self.tmpdir)
        except OSError:
            self.tmpdir = tempfile.mkdtemp(prefix="sandboxkit-")

    def prelude(self, state_fd: int | None) -> str:
        """Path of the BASH_ENV prelude for this state fd (written once, re-created if
        a command deleted it)."""
        path = os.path.join(self.tmpdir, f"prelude-{state_fd or 'nostate'}.sh")
        with self.prelude_lock:
            if path not in self.preludes or not os.path.exists(path):
                tmp = f"{path}.{threading.get_ident()}.tmp"
                os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
                with open(tmp, "w") as f:
                    f.write(prelude_text(state_fd))
                os.rename(tmp, path)
                self.preludes.add(path)
        return path

    def release(self, channel: int) -> None:
        # Called *before* the final frame is sent, so the server may reuse the id
        # as soon as it sees that frame.
        with self.lock:
            self.channels.pop(channel, None)

    def shutdown(self, code: int) -> None:
        # No locks: this may run in a signal handler while the main thread holds one.
        for item in list(self.channels.values()):
            try:
                item.abort()
            except Exception:
                pass
        try:
            self.warm.kill_now()
        except Exception:
            pass
        os._exit(code)

    def serve(self) -> None:
        spawn_warm = self.warm.request()  # before `h`: the first command waits for this shell
        self.out.json(b"h", 0, {"version": VERSION, "pid": os.getpid()})
        if spawn_warm:
            self.workers.submit(self.warm.refresh)
        buf = bytearray()
        while True:
            try:
                chunk = os.read(0, 1 << 20)
            except OSError as e:
                log(f"stdin read failed: {e}")
                chunk = b""
            if not chunk:
                log("stdin closed; killing running commands and exiting")
                self.shutdown(0)
            buf += chunk
            while len(buf) >= 4:
                (length,) = struct.unpack_from(">I", buf)
                if not 5 <= length <= MAX_PAYLOAD + 5:
                    log(f"bad frame length {length}; framing lost, exiting")
                    self.shutdown(2)
                if len(buf) < 4 + length:
                    break
                kind, channel = bytes(buf[4:5]), struct.unpack_from(">I", buf, 5)[0]
                payload = bytes(buf[9:4 + length])
                del buf[:4 + length]
                try:
                    self.dispatch(kind, channel, payload)
                except Exception as exc:  # a bad request must never stop the loop
                    log(f"{kind!r} on channel {channel}: {type(exc).__name__}: {exc}")
                    self.out.json(b"r", channel, error_body(exc))

    def dispatch(self, kind: bytes, channel: int, payload: bytes) -> None:
        if kind == b"P":
            self.out.send(b"p", channel, payload)
            return
        with self.lock:
            current = self.channels.get(channel)
        if kind in (b"I", b"C", b"K"):
            # Unknown channel: usually a race with a request that just finished, so
            # ignore it (an `r` could land on a channel id the server already reused).
            if current is None:
                log(f"{kind.decode()} for idle channel {channel} ignored")
            elif kind == b"K":
                try:
                    sig = parse_json(payload, allow_empty=True).get("signal", signal.SIGKILL)
                except RequestError:
                    sig = None
                if not isinstance(sig, int) or not 0 < sig < signal.NSIG:
                    # an `r` here would end a channel whose work is still running
                    log(f"bad K payload {payload[:100]!r} on channel {channel}; using SIGKILL")
                    sig = signal.SIGKILL
                if isinstance(current, Upload):
                    self.release(channel)
                    current.abort()
                    self.out.json(b"r", channel, {"code": "invalid", "message": "write cancelled"})
                else:
                    current.kill(sig)
            elif isinstance(current, Command):
                current.feed(payload) if kind == b"I" else current.close_stdin()
            elif isinstance(current, Upload):
                self._upload_frame(current, channel, kind, payload)
            return
        if kind not in (b"R", b"W", b"G", b"L", b"D", b"M", b"T"):
            if current is None:
                raise RequestError("invalid", f"unknown frame type {kind!r}")
            log(f"unknown frame type {kind!r} on busy channel {channel} ignored")
            return
        if current is not None:
            log(f"channel {channel} is busy; {kind.decode()} rejected")
            self.out.json(b"r", channel, {"code": "busy", "message": f"channel {channel} is in use"})
            return
        if channel == 0:
            raise RequestError("invalid", "channel 0 is reserved for control")
        req = parse_json(payload)
        item: Command | Upload | FileOp
        if kind == b"R":
            item = Command(self, channel, req)
        elif kind == b"W":
            item = Upload(self, channel, req)
        else:
            item = FileOp(self, channel, kind, req)
        with self.lock:
            self.channels[channel] = item
        if isinstance(item, Command) and item.code is None:
            item.start_warm(to_bytes(item.script), wait=False)
        if not isinstance(item, Upload):
            self.workers.submit(item.run)

    def _upload_frame(self, up: Upload, channel: int, kind: bytes, payload: bytes) -> None:
        try:
            if kind == b"I":
                up.feed(payload)
                return
            self.release(channel)
            size = up.commit()
        except Exception as exc:
            self.release(channel)
            up.abort()
            self.out.json(b"r", channel, error_body(exc))
        else:
            self.out.json(b"f", channel, {"size": size})


def parse_json(payload: bytes, allow_empty: bool = False) -> dict[str, Any]:
    if allow_empty and not payload.strip():
        return {}
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError("invalid", f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RequestError("invalid", "payload must be a JSON object")
    return obj


AGENT: Agent


def main() -> None:
    global AGENT
    sys.stdout = sys.stderr  # fd 1 carries frames only; stray prints go to the log
    AGENT = Agent()
    signal.signal(signal.SIGTERM, lambda *_: AGENT.shutdown(143))
    AGENT.serve()


if __name__ == "__main__":
    main()
