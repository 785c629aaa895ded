"""Tests for the SandboxKit in-sandbox agent (stdlib unittest only).

Each test starts agent.py as a subprocess on this host and talks to it through a
tiny frame client. Run from the repo root:
    python3 -m unittest src/SandboxKit.Agent/test_agent.py -v
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from dataclasses import dataclass, field
from typing import Any

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent.py")
HEADER = struct.Struct(">IcI")
WAIT = 30.0  # generous: this suite also runs on slow, busy CI hosts


@dataclass
class Result:
    channel: int
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int | None = None
    exit: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    frames: list[tuple[bytes, bytes]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def code(self) -> int:
        assert self.exit is not None, f"no exit frame: {self.error}"
        return self.exit["exitCode"]

    @property
    def out(self) -> str:
        return self.stdout.decode()


class AgentClient:
    """Frame-level client: one reader thread sorts incoming frames by channel."""

    def __init__(self, workdir: str, env: dict[str, str] | None = None) -> None:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, bufsize=0,
            env={**os.environ, "SANDBOXKIT_AGENT_WORKDIR": workdir, **(env or {})})
        self._queues: dict[int, queue.Queue[tuple[bytes, bytes] | None]] = {}
        self._qlock = threading.Lock()
        self._wlock = threading.Lock()
        self._ids = itertools.count(1)
        self.all_frames: list[tuple[bytes, int, int]] = []  # (type, channel, payload length)
        threading.Thread(target=self._reader, daemon=True).start()

    def queue(self, channel: int) -> queue.Queue[tuple[bytes, bytes] | None]:
        with self._qlock:
            return self._queues.setdefault(channel, queue.Queue())

    def _read_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.proc.stdout.read(n - len(buf))  # type: ignore[union-attr]
            except ValueError:  # close() closed the pipe under this thread: that is EOF too
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _reader(self) -> None:
        while (header := self._read_exact(9)) is not None:
            length, kind, channel = HEADER.unpack(header)
            payload = self._read_exact(length - 5)
            if payload is None:
                break
            self.all_frames.append((kind, channel, len(payload)))
            self.queue(channel).put((kind, payload))
        with self._qlock:
            for q in self._queues.values():
                q.put(None)

    def channel(self) -> int:
        return next(self._ids)

    def send(self, kind: bytes, channel: int, payload: bytes = b"") -> None:
        data = memoryview(HEADER.pack(len(payload) + 5, kind, channel) + payload)
        with self._wlock:
            while data:  # unbuffered pipe: write() may be partial
                data = data[self.proc.stdin.write(data):]  # type: ignore[union-attr]

    def send_json(self, kind: bytes, channel: int, obj: Any) -> None:
        self.send(kind, channel, json.dumps(obj).encode())

    def frame(self, channel: int, timeout: float = WAIT) -> tuple[bytes, bytes]:
        try:
            item = self.queue(channel).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no frame on channel {channel} within {timeout} s (agent running: "
                f"{self.proc.poll() is None}); agent log: {self.stderr_log()[-2000:]!r}") from None
        if item is None:
            raise AssertionError("agent closed its stdout")
        return item

    def start(self, command: str | None = None, **opts: Any) -> int:
        ch = self.channel()
        req = dict(opts)
        if command is not None:
            req["command"] = command
        self.send_json(b"R", ch, req)
        return ch

    def collect(self, ch: int, timeout: float = WAIT) -> Result:
        res, start = Result(ch), time.monotonic()
        while True:
            kind, payload = self.frame(ch, timeout)
            res.frames.append((kind, payload))
            if kind == b"s":
                res.pid = json.loads(payload)["pid"]
            elif kind == b"o":
                res.stdout += payload
            elif kind == b"e":
                res.stderr += payload
            elif kind == b"x":
                res.exit = json.loads(payload)
            elif kind == b"r":
                res.error = json.loads(payload)
            if kind in (b"x", b"r"):
                res.elapsed = time.monotonic() - start
                return res

    def run(self, command: str | None = None, **opts: Any) -> Result:
        start = time.monotonic()
        res = self.collect(self.start(command, **opts))
        res.elapsed = time.monotonic() - start
        return res

    def file(self, kind: bytes, req: dict[str, Any], data: bytes | None = None) -> Result:
        """Like file_request; the `f` result (JSON) lands in .exit."""
        ch = self.channel()
        self.send_json(kind, ch, req)
        if data is not None:
            for i in range(0, len(data), 50_000):
                self.send(b"I", ch, data[i:i + 50_000])
            self.send(b"C", ch)
        res = Result(ch)
        while True:
            kind_, payload = self.frame(ch)
            res.frames.append((kind_, payload))
            if kind_ == b"o":
                res.stdout += payload
            elif kind_ == b"f":
                res.exit = json.loads(payload)
                return res
            elif kind_ == b"r":
                res.error = json.loads(payload)
                return res
            else:
                raise AssertionError(f"unexpected frame {kind_!r}")

    def ping(self, payload: bytes = b"ping", channel: int = 0) -> None:
        self.send(b"P", channel, payload)
        assert self.frame(channel) == (b"p", payload)

    def close(self) -> int:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            self.proc.stdout.close()  # type: ignore[union-attr]

    def stderr_log(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is sid."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":
            found.append(int(name))
    return found


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


WARM_BOOT = b"read -r BASH_EXECUTION_STRING <&"  # in every warm shell's `-c` text


def proc_stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat fields after the comm field (state ppid pgrp session ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def warm_shells(agent_pid: int) -> list[int]:
    """Live children of the agent that were spawned as warm shells (idle or running)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        if fields is None or fields[0] == b"Z" or int(fields[1]) != agent_pid:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 4 and argv[3] == b"-c" and WARM_BOOT in argv[4]:
            found.append(int(name))
    return found


def warm_ready(pid: int) -> bool:
    """The shell ran its prelude (oom_score_adj is 1000) and sleeps in its blocking read."""
    fields = proc_stat(pid)
    try:
        with open(f"/proc/{pid}/oom_score_adj", "rb") as f:
            adj = int(f.read())
    except (OSError, ValueError):
        return False
    return fields is not None and fields[0] == b"S" and adj == 1000


def wait_warm(client: AgentClient, timeout: float = 10.0) -> int:
    """The agent's single idle warm shell, once it is there, ready, and stays so for a
    moment (a stale one is killed just before `x`; give the kill time to land)."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        shells = warm_shells(client.proc.pid)
        if len(shells) == 1 and warm_ready(shells[0]):
            if seen == shells[0]:
                return seen
            seen = shells[0]
        else:
            seen = None
        if time.monotonic() > deadline:
            raise AssertionError(f"no single ready warm shell: {shells}")
        time.sleep(0.005)


class AgentTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.workdir = os.path.realpath(tempfile.mkdtemp(prefix="sbk-test-"))
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.agent = self.new_agent()
        self.to_kill: list[int] = []

    AGENT_ENV: dict[str, str] = {}  # for every agent a test starts

    def new_agent(self, **env: str) -> AgentClient:
        client = AgentClient(self.workdir, {**self.AGENT_ENV, **env})
        self.addCleanup(client.log.close)
        kind, payload = client.frame(0)
        self.assertEqual(kind, b"h")
        return client

    def tearDown(self) -> None:
        for pid in self.to_kill:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        if self.agent.proc.poll() is None:
            rc = self.agent.close()
            self.assertEqual(rc, 0, self.agent.stderr_log())

    def assertRan(self, res: Result, code: int = 0) -> None:
        self.assertIsNone(res.error, res.error)
        self.assertEqual(res.code, code, (res.stdout, res.stderr, res.exit))


class FramingTests(AgentTestCase):
    def test_hello_and_ping(self) -> None:
        client = self.new_agent()
        try:
            self.agent.ping(b"\x00\xffbinary ping", channel=7)
            self.agent.ping(b"", channel=0)
        finally:
            client.close()

    def test_oversized_frame_length_exits_2(self) -> None:
        self.agent.ping()
        self.agent.proc.stdin.write(struct.pack(">I", 16 * 1024 * 1024 + 6) + b"R\0\0\0\1")  # type: ignore[union-attr]
        self.assertEqual(self.agent.close(), 2)

    def test_undersized_frame_length_exits_2(self) -> None:
        self.agent.proc.stdin.write(struct.pack(">I", 4) + b"P\0\0\0\0")  # type: ignore[union-attr]
        self.assertEqual(self.agent.close(), 2)

    def test_bad_requests_get_r_and_agent_keeps_working(self) -> None:
        a = self.agent
        cases = [(b"R", b"{not json"), (b"R", b"[1,2]"), (b"R", b"{}"), (b"Z", b"{}"),
                 (b"R", b'{"command": "true", "stdin": "tty"}'),
                 (b"R", b'{"code": "1", "language": "cobol"}'),
                 (b"G", b'{"path": 5}'), (b"R", b'{"command": "true", "env": {"A": 1}}')]
        for kind, payload in cases:
            ch = a.channel()
            a.send(kind, ch, payload)
            frame_kind, body = a.frame(ch)
            self.assertEqual(frame_kind, b"r", (kind, payload))
            self.assertEqual(json.loads(body)["code"], "invalid", (kind, payload))
        a.send(b"R", 0, b'{"command": "true"}')  # channel 0 is control
        self.assertEqual(json.loads(a.frame(0)[1])["code"], "invalid")
        for kind in (b"I", b"C", b"K"):  # idle channels: ignored, no reply
            a.send(kind, 999, b"{}")
        self.assertRan(a.run("echo still alive"))
        self.assertEqual(a.queue(999).qsize(), 0)

    def test_duplicate_channel_is_busy(self) -> None:
        a = self.agent
        ch = a.start("sleep 0.5; echo one")
        a.send_json(b"R", ch, {"command": "echo two"})
        frames = []
        while not frames or frames[-1][0] != b"x":
            frames.append(a.frame(ch))
        errors = [json.loads(p) for k, p in frames if k == b"r"]
        self.assertEqual([e["code"] for e in errors], ["busy"])
        self.assertEqual(b"".join(p for k, p in frames if k == b"o"), b"one\n")

    def test_output_that_looks_like_frames_or_markers(self) -> None:
        fake = HEADER.pack(5 + 14, b"x", 1) + b'{"exitCode":0}' + b"\xff\xff\xff\xff__DONE__\n"
        script = "printf '" + "".join(f"\\{b:03o}" for b in fake) + "'; printf '__EXIT__ 0\\n' >&2"
        res = self.agent.run(script)
        self.assertRan(res)
        self.assertEqual(res.stdout, fake)
        self.assertEqual(res.stderr, b"__EXIT__ 0\n")
        self.agent.ping()


class CommandTests(AgentTestCase):
    def test_echo(self) -> None:
        res = self.agent.run("echo hello")
        self.assertRan(res)
        self.assertEqual(res.stdout, b"hello\n")
        self.assertEqual(res.stderr, b"")
        self.assertIsInstance(res.pid, int)
        self.assertEqual([k for k, _ in res.frames], [b"s", b"o", b"x"])
        x = res.exit
        assert x is not None
        self.assertEqual((x["signal"], x["timedOut"], x["oomKilled"], x["cwd"]),
                         (None, False, False, self.workdir))
        self.assertGreater(x["durationMs"], 0)

    def test_separate_stdout_stderr(self) -> None:
        res = self.agent.run("echo out1; echo err1 >&2; echo out2; echo err2 >&2")
        self.assertEqual((res.stdout, res.stderr), (b"out1\nout2\n", b"err1\nerr2\n"))

    def test_merge_stderr(self) -> None:
        res = self.agent.run("echo a; echo b >&2; echo c", mergeStderr=True)
        self.assertEqual((res.stdout, res.stderr), (b"a\nb\nc\n", b""))

    def test_exit_codes(self) -> None:
        self.assertRan(self.agent.run("exit 3"), 3)
        self.assertRan(self.agent.run("false"), 1)
        self.assertRan(self.agent.run("set -e; false; echo unreachable"), 1)
        res = self.agent.run("kill -9 $$")
        self.assertEqual((res.code, res.exit["signal"]), (137, 9))  # type: ignore[index]
        res = self.agent.run("kill -TERM $$")
        self.assertEqual((res.code, res.exit["signal"]), (143, 15))  # type: ignore[index]

    def test_syntax_error_exit_2(self) -> None:
        res = self.agent.run("echo a; if then")
        self.assertRan(res, 2)
        self.assertIn(b"syntax error", res.stderr)
        self.assertIn(b"line 1", res.stderr)
        self.assertNotIn(b"trap", res.stderr)  # the prelude never shows up
        res = self.agent.run("echo a\nfi")
        self.assertRan(res, 2)
        self.assertEqual(res.stdout, b"a\n")
        self.assertIn(b"line 2", res.stderr)

    def test_binary_output_round_trip(self) -> None:
        res = self.agent.run(r"printf 'a\0b\377\376\n'; printf '\0\377\200' >&2")
        self.assertEqual(res.stdout, b"a\0b\xff\xfe\n")
        self.assertEqual(res.stderr, b"\0\xff\x80")

    def test_large_output_streams_fully(self) -> None:
        res = self.agent.run("python3 -c \"import sys; sys.stdout.buffer.write(bytes(range(256)) * 19532 + b'end')\"")
        self.assertRan(res)
        self.assertEqual(res.stdout, bytes(range(256)) * 19532 + b"end")
        self.assertGreater(len(res.stdout), 5_000_000)
        sizes = [len(p) for k, p in res.frames if k == b"o"]
        self.assertLessEqual(max(sizes), 64 * 1024)

    def test_heredoc_with_nested_quotes(self) -> None:
        script = ("cat <<'EOF'\nHe said \"it's\" `not` $HOME \\n 'q'\nEOF\n"
                  "cat <<EOF\nx=\"$((1 + 2))\" 'single' \"double\"\nEOF\n")
        res = self.agent.run(script)
        self.assertRan(res)
        self.assertEqual(res.out, "He said \"it's\" `not` $HOME \\n 'q'\nx=\"3\" 'single' \"double\"\n")

    def test_ps1_change_is_harmless(self) -> None:
        # No prompt watching, so a prompt change cannot confuse the agent. (bash unsets
        # PS1 in every non-interactive shell, so it does not carry over to the next one.)
        res = self.agent.run("export PS1='__DONE__ $ '; PS2='> '; echo \"[$PS1]\"")
        self.assertEqual(res.out, "[__DONE__ $ ]\n")
        self.assertEqual(self.agent.run("echo next").out, "next\n")

    def test_exec_replaces_shell(self) -> None:
        os.mkdir(os.path.join(self.workdir, "sub"))
        self.assertRan(self.agent.run("cd sub"))
        res = self.agent.run("cd /; export EXECED=1; exec echo hi")
        self.assertRan(res)
        self.assertEqual(res.stdout, b"hi\n")
        # exec replaced the shell before its EXIT trap: state is unchanged
        self.assertEqual(self.agent.run("pwd; echo ${EXECED-unset}").out,
                         f"{self.workdir}/sub\nunset\n")

    def test_huge_script_runs_from_file(self) -> None:
        script = "x=1\n# " + "a" * 300_000 + "\necho done $x; export AFTER_HUGE=1\n"
        res = self.agent.run(script)
        self.assertRan(res)
        self.assertEqual(res.stdout, b"done 1\n")
        self.assertEqual(self.agent.run("echo $AFTER_HUGE").out, "1\n")

    def test_no_agent_fds_leak_into_commands(self) -> None:
        res = self.agent.run("ls /proc/$$/fd")  # the shell's fds, listed by a child
        fds = sorted(int(fd) for fd in res.out.split())
        self.assertEqual(fds[:3], [0, 1, 2])
        self.assertTrue(all(fd >= 100 for fd in fds[3:]), fds)  # only the state pipe
        self.assertLessEqual(len(fds), 4, fds)

    def test_oom_score_adj_raised_for_commands(self) -> None:
        self.assertEqual(self.agent.run("cat /proc/self/oom_score_adj").out, "1000\n")

    def test_oom_killed_detection(self) -> None:
        events = os.path.join(self.workdir, "memory.events")
        with open(events, "w") as f:
            f.write("oom 0\noom_kill 0\n")
        client = self.new_agent(SANDBOXKIT_AGENT_OOM_EVENTS=events)
        try:
            res = client.run(f"echo 'oom_kill 1' > {events}; kill -9 $$")
            self.assertTrue(res.exit["oomKilled"])  # type: ignore[index]
            res = client.run("kill -9 $$")  # counter unchanged: a plain SIGKILL
            self.assertFalse(res.exit["oomKilled"])  # type: ignore[index]
            res = client.run(f"echo 'oom_kill 2' > {events}; exit 1")  # not killed
            self.assertFalse(res.exit["oomKilled"])  # type: ignore[index]
        finally:
            client.close()

    def test_concurrent_commands(self) -> None:
        start = time.monotonic()
        channels = [self.agent.start("sleep 1; echo $N; echo e$N >&2", env={"N": str(i)})
                    for i in range(4)]
        results = [self.agent.collect(ch) for ch in channels]
        elapsed = time.monotonic() - start
        for i, res in enumerate(results):
            self.assertRan(res)
            self.assertEqual((res.out, res.stderr), (f"{i}\n", f"e{i}\n".encode()))
        self.assertLess(elapsed, 3.0, "commands did not run concurrently")


class StdinTests(AgentTestCase):
    def test_closed_stdin_reads_eof(self) -> None:
        res = self.agent.run("cat; echo cat=$?; read -r line; echo read=$?", timeoutMs=10_000)
        self.assertEqual(res.out, "cat=0\nread=1\n")
        self.assertFalse(res.exit["timedOut"])  # type: ignore[index]

    def test_stdin_text(self) -> None:
        res = self.agent.run("cat", stdinText="héllo\nwörld\n")
        self.assertEqual(res.stdout, "héllo\nwörld\n".encode())

    def test_stdin_pipe_frames(self) -> None:
        a = self.agent
        ch = a.start("cat; echo END", stdin="pipe", stdinText="first-")
        a.send(b"I", ch, b"abc")
        a.send(b"I", ch, b"\x00\xff")
        a.send(b"C", ch)
        res = a.collect(ch)
        self.assertEqual(res.stdout, b"first-abc\x00\xffEND\n")

    def test_stdin_pipe_large_input(self) -> None:
        a = self.agent
        ch = a.start("wc -c", stdin="pipe")
        for _ in range(32):
            a.send(b"I", ch, b"x" * 65536)
        a.send(b"C", ch)
        self.assertEqual(a.collect(ch).out.strip(), str(32 * 65536))

    def test_stdin_pipe_command_that_ignores_input(self) -> None:
        a = self.agent
        ch = a.start("exec 0<&-; sleep 0.3; echo done", stdin="pipe")
        for _ in range(8):
            a.send(b"I", ch, b"y" * 65536)
        res = a.collect(ch)
        self.assertRan(res)
        self.assertEqual(res.out, "done\n")
        a.send(b"C", ch)  # late close for a finished channel: ignored
        a.ping()


class StateTests(AgentTestCase):
    def test_cd_and_export_persist(self) -> None:
        a = self.agent
        tmp = os.path.join(self.workdir, "d")
        os.mkdir(tmp)
        res = a.run(f"cd {tmp} && export A=1 && B=2")
        self.assertEqual(res.exit["cwd"], tmp)  # type: ignore[index]
        self.assertEqual(a.run("pwd; echo $A; echo ${B-unset}").out, f"{tmp}\n1\nunset\n")
        self.assertEqual(a.run("cd -").out, f"{self.workdir}\n")  # OLDPWD persisted too
        self.assertEqual(a.run("unset A; export -n PATH_X; pwd").out, f"{self.workdir}\n")
        self.assertEqual(a.run("echo ${A-gone}").out, "gone\n")

    def test_tricky_values_persist(self) -> None:
        a = self.agent
        a.run("export Q='it'\\''s \"q\" $HOME `x` \\\\' NL=$'a\\nb' BIN=$'\\xff\\x01\\t' "
              "U=héllo EMPTY=; declare -ax ARR=(1 2); declare -rx RO=ro")
        res = a.run("printf '%s|' \"$Q\" \"$NL\" \"$BIN\" \"$U\" \"${EMPTY-unset}\" \"$RO\"")
        self.assertEqual(res.stdout, "it's \"q\" $HOME `x` \\\\|a\nb|".encode() + b"\xff\x01\t|"
                         + "héllo||ro|".encode())

    def test_posix_mode_and_shell_options_do_not_break_state(self) -> None:
        a = self.agent
        res = a.run("set -eux; set -o posix; cd /; export PX='a b'")
        self.assertRan(res)
        self.assertNotIn(b"export -p", res.stderr)  # the trap is not traced
        self.assertEqual(a.run("echo \"$PX\"; pwd").out, "a b\n/\n")

    def test_venv_like_path_export(self) -> None:
        a = self.agent
        venv = os.path.join(self.workdir, "venv")
        os.makedirs(f"{venv}/bin")
        with open(f"{venv}/bin/mytool", "w") as f:
            f.write("#!/bin/sh\necho from-venv\n")
        os.chmod(f"{venv}/bin/mytool", 0o755)
        self.assertRan(a.run(f"export VIRTUAL_ENV={venv}; export PATH=\"$VIRTUAL_ENV/bin:$PATH\""))
        self.assertEqual(a.run("mytool; echo $VIRTUAL_ENV").out, f"from-venv\n{venv}\n")

    def test_shlvl_stays_stable(self) -> None:
        first = self.agent.run("echo $SHLVL").out
        self.assertEqual(self.agent.run("echo $SHLVL").out, first)

    def test_state_unchanged_when_killed_or_trap_replaced(self) -> None:
        a = self.agent
        self.assertEqual(a.run("cd /; export K=1; kill -9 $$").code, 137)
        res = a.run("cd /; export T=1; trap 'echo bye' EXIT")
        self.assertEqual(res.out, "bye\n")
        self.assertEqual(a.run("pwd; echo ${K-unset} ${T-unset}").out, f"{self.workdir}\nunset unset\n")

    def test_deleted_cwd_falls_back(self) -> None:
        a = self.agent
        self.assertRan(a.run("mkdir gone && cd gone"))
        res = a.run('rmdir "$PWD"')
        self.assertRan(res)
        self.assertEqual(res.exit["cwd"], self.workdir)  # type: ignore[index]
        self.assertEqual(a.run("pwd").out, f"{self.workdir}\n")

    def test_env_bigger_than_pipe_buffer(self) -> None:
        a = self.agent
        res = a.run("for i in 1 2 3 4; do export BIG$i=$(head -c 30000 /dev/zero | tr '\\0' x); done",
                    timeoutMs=20_000)
        self.assertRan(res)
        self.assertEqual(a.run("echo ${#BIG1} ${#BIG4}").out, "30000 30000\n")

    def test_oversized_variable_is_not_persisted(self) -> None:
        a = self.agent
        res = a.run("export HUGE=$(head -c 200000 /dev/zero | tr '\\0' y); export SMALL=1")
        self.assertRan(res)
        self.assertEqual(a.run("echo ${HUGE-dropped} $SMALL").out, "dropped 1\n")

    def test_env_and_cwd_overrides_are_per_command(self) -> None:
        a = self.agent
        os.mkdir(os.path.join(self.workdir, "sub"))
        a.run("export KEEP=session")
        res = a.run("echo $FOO $KEEP; pwd", env={"FOO": "bar", "KEEP": "override"}, cwd="sub")
        self.assertEqual(res.out, f"bar override\n{self.workdir}/sub\n")
        self.assertEqual(res.exit["cwd"], self.workdir)  # type: ignore[index]
        self.assertEqual(a.run("echo ${FOO-unset} $KEEP; pwd").out, f"unset session\n{self.workdir}\n")
        res = a.run("pwd", cwd="missing")
        self.assertEqual(res.error["code"], "not_found")  # type: ignore[index]

    def test_persist_state_false(self) -> None:
        a = self.agent
        self.assertRan(a.run("cd /; export NOPE=1", persistState=False))
        self.assertEqual(a.run("pwd; echo ${NOPE-unset}").out, f"{self.workdir}\nunset\n")

    def test_user_bash_env_is_honoured(self) -> None:
        a = self.agent
        self.assertEqual(a.run("echo ${BASH_ENV-none}").out, "none\n")
        rc = os.path.join(self.workdir, "rc.sh")
        with open(rc, "w") as f:
            f.write("FROM_RC=yes\n")
        a.run(f"export BASH_ENV={rc}")
        self.assertEqual(a.run("echo $FROM_RC $BASH_ENV").out, f"yes {rc}\n")


class KillTests(AgentTestCase):
    def test_timeout_kills_tree_including_term_ignoring_child(self) -> None:
        a = self.agent
        res = a.run("trap '' TERM; sleep 100 & echo $!; echo before; sleep 100", timeoutMs=500)
        self.assertTrue(res.exit["timedOut"])  # type: ignore[index]
        self.assertEqual((res.code, res.exit["signal"]), (137, 9))  # type: ignore[index]
        bg_pid, before = res.out.split()
        self.assertEqual(before, "before")
        self.assertLess(res.elapsed, 5)
        self.assertTrue(wait_dead(int(bg_pid)))
        self.assertEqual(a.run("echo usable").out, "usable\n")

    def test_timeout_kills_child_that_changed_process_group(self) -> None:
        code = "import os,time; os.setpgid(0,0); print(os.getpid(), flush=True); time.sleep(100)"
        res = self.agent.run(f"python3 -c '{code}' & sleep 100", timeoutMs=1500)
        self.assertTrue(res.exit["timedOut"])  # type: ignore[index]
        self.assertTrue(wait_dead(int(res.out)))

    def test_kill_frame(self) -> None:
        a = self.agent
        ch = a.start("sleep 100 & echo $!; sleep 100")
        kind, payload = a.frame(ch)
        self.assertEqual(kind, b"s")
        shell = json.loads(payload)["pid"]
        kind, payload = a.frame(ch)
        bg = int(payload)
        a.send_json(b"K", ch, {"signal": 15})
        res = a.collect(ch)
        self.assertEqual((res.code, res.exit["signal"], res.exit["timedOut"]), (143, 15, False))  # type: ignore[index]
        self.assertTrue(wait_dead(bg))
        # Nothing of the command outlives it, not even a child forked as the signal
        # arrived (the agent's follow-up passes run for ~1 s).
        deadline = time.monotonic() + 3
        while session_members(shell) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(session_members(shell), [])

    def test_background_process_does_not_hold_command(self) -> None:
        a = self.agent
        res = a.run("sleep 1000 & echo $!")
        self.assertRan(res)
        self.assertLess(res.elapsed, 1.0)
        pid = int(res.out)
        self.to_kill.append(pid)
        self.assertTrue(alive(pid))
        res = a.run("nohup python3 -m http.server 0 --bind 127.0.0.1 & echo $!")
        self.assertRan(res)
        self.assertLess(res.elapsed, 1.0)
        self.to_kill.append(int(res.out.split()[-1]))

    def test_eof_kills_running_commands_and_exits_0(self) -> None:
        a = self.agent
        ch = a.start("sleep 100 & echo $!; sleep 100")
        a.frame(ch)  # s
        bg = int(a.frame(ch)[1])
        self.assertEqual(a.close(), 0)
        self.assertTrue(wait_dead(bg))


class CodeTests(AgentTestCase):
    def test_python_code(self) -> None:
        res = self.agent.run(code="import os, sys\nprint(os.getcwd())\nprint(__file__)\n"
                                  "print(sys.stdin.read())", language="python", stdinText="in")
        self.assertRan(res)
        cwd, path, stdin = res.out.splitlines()
        self.assertEqual((cwd, stdin), (self.workdir, "in"))
        self.assertTrue(path.endswith(".py"))
        self.assertFalse(os.path.exists(path), "code file not deleted")

    def test_bash_code(self) -> None:
        res = self.agent.run(code="echo \"$0\" ${BASH_VERSION%%.*}; exit 4", language="bash")
        self.assertRan(res, 4)
        path, major = res.out.split()
        self.assertTrue(path.endswith(".sh") and int(major) >= 4)
        self.assertFalse(os.path.exists(path))

    @unittest.skipUnless(shutil.which("node"), "node not installed")
    def test_node_code(self) -> None:
        res = self.agent.run(code="console.log(1 + 1); console.error('e')", language="node")
        self.assertEqual((res.out, res.stderr), ("2\n", b"e\n"))


class FileTests(AgentTestCase):
    def test_write_read_binary_round_trip(self) -> None:
        a = self.agent
        data = os.urandom(300_000) + b"\0\xff"
        res = a.file(b"W", {"path": "deep/dir/f.bin"}, data)
        self.assertEqual(res.exit, {"size": len(data)})
        with open(os.path.join(self.workdir, "deep/dir/f.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.stat(os.path.join(self.workdir, "deep/dir/f.bin")).st_mode & 0o777, 0o644)
        res = a.file(b"G", {"path": os.path.join(self.workdir, "deep/dir/f.bin")})
        self.assertEqual(res.stdout, data)
        self.assertEqual(res.exit, {"size": len(data)})
        self.assertTrue(all(len(p) <= 65536 for k, p in res.frames if k == b"o"))

    def test_write_mode_append_and_relative_to_session_cwd(self) -> None:
        a = self.agent
        os.mkdir(os.path.join(self.workdir, "sub"))
        a.run("cd sub")
        self.assertEqual(a.file(b"W", {"path": "x.sh", "mode": 0o700}, b"one\n").exit, {"size": 4})
        self.assertEqual(a.file(b"W", {"path": "x.sh", "append": True}, b"two\n").exit, {"size": 8})
        path = os.path.join(self.workdir, "sub/x.sh")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"one\ntwo\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o700)
        self.assertEqual(a.file(b"W", {"path": "empty"}, b"").exit, {"size": 0})

    def test_write_errors(self) -> None:
        a = self.agent
        os.mkdir(os.path.join(self.workdir, "adir"))
        self.assertEqual(a.file(b"W", {"path": "adir"}, b"x").error["code"], "is_directory")  # type: ignore[index]
        res = a.file(b"W", {"path": "nodir/f", "parents": False}, b"x")
        self.assertEqual(res.error["code"], "not_found")  # type: ignore[index]

    def test_write_is_atomic_and_kill_discards(self) -> None:
        a = self.agent
        target = os.path.join(self.workdir, "atomic.txt")
        with open(target, "wb") as f:
            f.write(b"old")
        ch = a.channel()
        a.send_json(b"W", ch, {"path": "atomic.txt"})
        a.send(b"I", ch, b"new partial data")
        a.ping()  # the agent has processed the frames above
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"old")
        a.send_json(b"K", ch, {"signal": 9})
        kind, _ = a.frame(ch)
        self.assertEqual(kind, b"r")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(sorted(os.listdir(self.workdir)), ["atomic.txt"])  # no temp left
        ch = a.channel()  # a new file killed mid-write never appears
        a.send_json(b"W", ch, {"path": "fresh.txt"})
        a.send(b"I", ch, b"partial")
        a.send_json(b"K", ch, {})
        self.assertEqual(a.frame(ch)[0], b"r")
        self.assertEqual(sorted(os.listdir(self.workdir)), ["atomic.txt"])

    def test_list_stat_mkdir_delete(self) -> None:
        a = self.agent
        w = self.workdir
        a.run("mkdir d && printf 12345 > f && ln -s f link && mkfifo fifo")
        entries = {e["name"]: e for e in a.file(b"L", {"path": "."}).exit["entries"]}  # type: ignore[index]
        self.assertEqual({n: e["type"] for n, e in entries.items()},
                         {"d": "dir", "f": "file", "link": "symlink", "fifo": "other"})
        self.assertEqual(entries["f"]["size"], 5)
        self.assertIsInstance(entries["f"]["mtime"], float)
        st = a.file(b"T", {"path": f"{w}/f"}).exit
        self.assertEqual((st["type"], st["size"], st["mode"]), ("file", 5, os.stat(f"{w}/f").st_mode & 0o7777))  # type: ignore[index]
        self.assertEqual(a.file(b"T", {"path": "link"}).exit["type"], "symlink")  # type: ignore[index]
        self.assertEqual(a.file(b"T", {"path": "d"}).exit["type"], "dir")  # type: ignore[index]
        self.assertEqual(a.file(b"M", {"path": "m/n/o"}).exit, {})
        self.assertTrue(os.path.isdir(f"{w}/m/n/o"))
        self.assertEqual(a.file(b"M", {"path": "m", "parents": False}).error["code"], "exists")  # type: ignore[index]
        self.assertEqual(a.file(b"M", {"path": "x/y", "parents": False}).error["code"], "not_found")  # type: ignore[index]
        self.assertEqual(a.file(b"D", {"path": "m"}).error["code"], "not_empty")  # type: ignore[index]
        self.assertEqual(a.file(b"D", {"path": "m", "recursive": True}).exit, {})
        self.assertEqual(a.file(b"D", {"path": "f"}).exit, {})
        self.assertFalse(os.path.exists(f"{w}/m") or os.path.exists(f"{w}/f"))
        self.assertEqual(a.file(b"D", {"path": "link"}).exit, {})  # dangling symlink removed
        self.assertEqual(a.file(b"G", {"path": "fifo"}).error["code"], "invalid")  # type: ignore[index]

    def test_not_found_and_type_errors(self) -> None:
        a = self.agent
        for kind in (b"G", b"T", b"L", b"D"):
            res = a.file(kind, {"path": "/no/such/path"})
            self.assertEqual(res.error["code"], "not_found", kind)  # type: ignore[index]
        os.mkdir(os.path.join(self.workdir, "d"))
        with open(os.path.join(self.workdir, "f"), "w"):
            pass
        self.assertEqual(a.file(b"G", {"path": "d"}).error["code"], "is_directory")  # type: ignore[index]
        self.assertEqual(a.file(b"L", {"path": "f"}).error["code"], "not_directory")  # type: ignore[index]


class WarmShellTests(AgentTestCase):
    """The pre-spawned shell: used once, for the state it was spawned with, like `bash -c`."""

    def cold_agent(self) -> AgentClient:
        client = self.new_agent(SANDBOXKIT_AGENT_WARM="0")
        self.addCleanup(client.close)
        return client

    def test_warm_shell_is_used_once_and_replaced(self) -> None:
        a = self.agent
        w1 = wait_warm(a)
        with open(f"/proc/{w1}/oom_score_adj") as f:
            self.assertEqual(f.read(), "1000\n")  # already raised while idle
        res = a.run("echo $$; echo $BASHPID")
        self.assertRan(res)
        self.assertEqual(res.pid, w1)  # `s` carries the real pid
        self.assertEqual(res.out, f"{w1}\n{w1}\n")
        self.assertGreater(res.exit["durationMs"], 0)  # type: ignore[index]
        w2 = wait_warm(a)
        self.assertNotEqual(w2, w1)
        self.assertTrue(wait_dead(w1))
        self.assertEqual(a.run("echo again").pid, w2)
        self.assertNotEqual(wait_warm(a), w2)

    def test_state_changes_reach_the_next_warm_shell(self) -> None:
        a = self.agent
        os.mkdir(os.path.join(self.workdir, "sub"))
        a.run("export GONE=1 KEEP=1")
        w = wait_warm(a)
        res = a.run("cd sub && export A='x y' && unset GONE && export -n KEEP && B=unexported")
        self.assertRan(res)
        self.assertEqual(res.pid, w)
        w = wait_warm(a)
        res = a.run('pwd; echo "$A|${GONE-unset}|${KEEP-unset}|${B-unset}"; cd -')
        self.assertEqual(res.pid, w)  # the warm shell was spawned with the new state
        self.assertEqual(res.out, f"{self.workdir}/sub\nx y|unset|unset|unset\n{self.workdir}\n")
        w = wait_warm(a)
        self.assertEqual(a.run("pwd").out, f"{self.workdir}\n")
        # a command that does not change the state keeps the idle warm shell for the next one
        w = wait_warm(a)
        self.assertRan(a.run("cd /; export NOPE=1", persistState=False))
        self.assertEqual(wait_warm(a), w)
        res = a.run("pwd; echo ${NOPE-unset}")
        self.assertEqual((res.pid, res.out), (w, f"{self.workdir}\nunset\n"))

    def test_warm_shell_for_a_replaced_directory_is_not_used(self) -> None:
        a = self.agent
        a.run("mkdir d && cd d && touch old")
        w = wait_warm(a)
        # same path, new directory: the idle shell sits in the deleted one
        self.assertEqual(a.file(b"D", {"path": f"{self.workdir}/d", "recursive": True}).exit, {})
        self.assertEqual(a.file(b"M", {"path": f"{self.workdir}/d"}).exit, {})
        self.assertEqual(a.file(b"W", {"path": f"{self.workdir}/d/new"}, b"").exit, {"size": 0})
        res = a.run("pwd; ls")
        self.assertNotEqual(res.pid, w)
        self.assertEqual(res.out, f"{self.workdir}/d\nnew\n")
        self.assertTrue(wait_dead(w))  # replaced after that command
        w = wait_warm(a)
        self.assertEqual(a.run("ls").pid, w)

    def test_requests_the_warm_shell_does_not_fit_run_cold(self) -> None:
        a = self.agent
        os.mkdir(os.path.join(self.workdir, "sub"))
        a.run("true")  # the first command replaces the agent's PWD in the session env
        w = wait_warm(a)
        cold = [dict(command="echo $X", env={"X": "1"}), dict(command="cat", stdinText="in"),
                dict(command="echo m >&2", mergeStderr=True),
                dict(command="true", persistState=False), dict(command="-x"),
                dict(command="printf 'a\x01b'"), dict(command="echo " + "x" * 200_000)]
        for req in cold:
            res = a.run(**req)
            self.assertIsNone(res.error, req)
            self.assertNotEqual(res.pid, w, req)
        ch = a.start("cat", stdin="pipe")
        a.send(b"C", ch)
        self.assertNotEqual(a.collect(ch).pid, w)
        self.assertEqual(wait_warm(a), w)  # none of them changed the state: still idle, still usable
        res = a.run(code="import os; print(os.getpid() == os.getppid())", language="python")
        self.assertEqual((res.pid, res.out), (w, "False\n"))  # code runs go warm too
        w = wait_warm(a)
        res = a.run("pwd", cwd="sub")
        self.assertEqual((res.out, res.exit["cwd"]), (f"{self.workdir}/sub\n", self.workdir))  # type: ignore[index]
        self.assertNotEqual(res.pid, w)

    def test_concurrent_commands_take_the_warm_shell_once(self) -> None:
        a = self.agent
        w = wait_warm(a)
        start = time.monotonic()
        channels = [a.start("sleep 1; echo $$") for _ in range(4)]
        results = [a.collect(ch) for ch in channels]
        self.assertLess(time.monotonic() - start, 3.0, "commands did not run concurrently")
        for res in results:
            self.assertRan(res)
            self.assertEqual(res.out, f"{res.pid}\n")
        pids = [res.pid for res in results]
        self.assertEqual(len(set(pids)), 4)
        self.assertEqual(pids.count(w), 1)
        w2 = wait_warm(a)  # exactly one idle shell again, not one per finished command
        time.sleep(0.2)
        self.assertEqual(warm_shells(a.proc.pid), [w2])

    def test_no_warm_shell_left_after_eof_sigterm_or_agent_death(self) -> None:
        a = self.agent
        w = wait_warm(a)
        self.assertEqual(a.close(), 0)  # an idle warm shell is not a running command
        self.assertTrue(wait_dead(w))
        client = self.new_agent()
        w = wait_warm(client)
        client.proc.terminate()
        self.assertEqual(client.close(), 143)
        self.assertTrue(wait_dead(w))
        client = self.new_agent()
        w = wait_warm(client)
        client.proc.kill()  # no cleanup at all: the shell sees EOF on its wake pipe and exits
        client.close()
        self.assertTrue(wait_dead(w))
        client = self.new_agent()  # EOF while the first warm shell is still being spawned
        self.assertEqual(client.close(), 0)
        deadline = time.monotonic() + 5
        while warm_shells(client.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(warm_shells(client.proc.pid), [])

    def test_warm_shell_killed_while_idle_falls_back_to_cold(self) -> None:
        a = self.agent
        w = wait_warm(a)
        os.kill(w, 9)
        self.assertTrue(wait_dead(w))
        res = a.run("echo fine")
        self.assertEqual(res.out, "fine\n")
        self.assertNotEqual(res.pid, w)
        self.assertNotEqual(wait_warm(a), w)

    def test_closed_stdin_reads_eof_in_warm_shell(self) -> None:
        a = self.agent
        w = wait_warm(a)
        res = a.run("cat; echo cat=$?; read -r line; echo read=$?; readlink /proc/$$/fd/0",
                    timeoutMs=10_000)
        self.assertEqual(res.pid, w)
        self.assertEqual(res.out, "cat=0\nread=1\n/dev/null\n")
        self.assertFalse(res.exit["timedOut"])  # type: ignore[index]

    def test_syntax_error_exact_stderr_and_exit_code(self) -> None:
        a, cold = self.agent, self.cold_agent()
        for script, out, line, text in [("echo a; if then", b"", 1, "echo a; if then"),
                                        ("echo a\nfi\necho b", b"a\n", 2, "fi")]:
            w = wait_warm(a)
            res = a.run(script)
            self.assertEqual(res.pid, w)
            self.assertEqual((res.code, res.exit["signal"], res.stdout), (2, None, out))  # type: ignore[index]
            tail = f"line {line}: syntax error near unexpected token `{text.split()[-1]}'\n"
            self.assertEqual(res.stderr.decode(), f"bash: eval: {tail}bash: eval: line {line}: `{text}'\n")
            # the cold path's message differs only in the input name bash prints
            ref = cold.run(script)
            self.assertEqual((ref.code, ref.stdout), (2, out))
            self.assertEqual(ref.stderr.replace(b"bash: -c: ", b"bash: eval: "), res.stderr)
        res = a.run("echo $(( 1 +")  # unexpected end of file
        self.assertEqual(res.code, 2)
        self.assertIn(b"line 1: unexpected EOF", res.stderr)

    def test_warm_and_cold_shells_behave_alike(self) -> None:
        a, cold = self.agent, self.cold_agent()
        # The shell counts its own fds: a child of `ls /proc/$$/fd | wc -l` would list them while
        # the parent may still be closing its pipe ends, a race that differs run to run.
        scripts = [
            "exit 3", "false", "set -e; false; echo unreachable", "kill -9 $$", "kill -TERM $$",
            "exec echo hi", "echo \"$0|$LINENO|$#|$-|$_\"\n\necho $LINENO",
            "f() { echo \"$LINENO ${FUNCNAME[*]}\"; caller; }\nf; caller; echo $?",
            "return 3; echo after",
            "cat <<'EOF'\nHe said \"it's\" `not` $HOME \\n 'q'\nEOF\ncat <<EOF\n$((1 + 2))\nEOF",
            "cat <<EOF\nunterminated", "echo ${BASH_SOURCE[*]-none} ${BASH_LINENO[*]-none}",
            "declare -p BASH_EXECUTION_STRING SECONDS", "compgen -v", "env | sort",
            "trap -p; trap 'echo bye $?' EXIT; exit 5", "trap 'echo usr1' USR1; kill -USR1 $$; echo after",
            "set -o posix; echo $POSIXLY_CORRECT", "shopt -s extglob\necho @(a|b)",
            "shopt -s expand_aliases; alias e=echo\ne hi", "echo é ü ✓ $'\\xff' | od -c | head -2",
            "fds=(/proc/$$/fd/*); echo ${#fds[@]}", "ulimit -n; umask; cat /proc/$$/oom_score_adj",
            "sleep 0.1 & wait $!; echo $?", "echo err >&2; echo out", "read -r x; echo $? \"$x\"",
            "(exit 7); echo $?", "exec 3>&1; echo via3 >&3", "printf '%s' \"$(echo sub)\"", "",
        ]

        def norm(res: Result) -> tuple[Any, ...]:
            keep = [line for line in res.stdout.split(b"\n") if b"SANDBOXKIT_AGENT_WARM" not in line]
            return (b"\n".join(keep), res.stderr, res.code, res.exit["signal"])  # type: ignore[index]

        for script in scripts:
            w = wait_warm(a)
            res = a.run(script, timeoutMs=10_000)
            self.assertEqual(res.pid, w, script)
            ref = cold.run(script, timeoutMs=10_000)
            self.assertEqual(norm(res), norm(ref), script)
            # and the state both leave behind
            after, ref_after = a.run("pwd; env | sort"), cold.run("pwd; env | sort")
            self.assertEqual(norm(after), norm(ref_after), script)

    def test_timeout_and_kill_reach_the_whole_tree(self) -> None:
        a = self.agent
        w = wait_warm(a)
        res = a.run("trap '' TERM; sleep 100 & echo $!; sleep 100", timeoutMs=500)
        self.assertEqual(res.pid, w)
        self.assertTrue(res.exit["timedOut"])  # type: ignore[index]
        self.assertEqual((res.code, res.exit["signal"]), (137, 9))  # type: ignore[index]
        self.assertTrue(wait_dead(int(res.out)))
        self.assertLess(res.elapsed, 5)
        w = wait_warm(a)
        ch = a.start("sleep 100 & echo $!; sleep 100")
        kind, payload = a.frame(ch)
        self.assertEqual((kind, json.loads(payload)["pid"]), (b"s", w))
        bg = int(a.frame(ch)[1])
        a.send_json(b"K", ch, {"signal": 15})
        res = a.collect(ch)
        self.assertEqual((res.code, res.exit["signal"]), (143, 15))  # type: ignore[index]
        self.assertTrue(wait_dead(bg))
        deadline = time.monotonic() + 3
        while session_members(w) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(session_members(w), [])

    def test_seconds_counts_from_the_hand_over(self) -> None:
        a = self.agent
        w = wait_warm(a)
        time.sleep(1.2)
        res = a.run("echo $SECONDS")
        self.assertEqual((res.pid, res.out), (w, "0\n"))

    def test_sessions_that_bash_would_start_differently_run_cold(self) -> None:
        a = self.agent
        rc = os.path.join(self.workdir, "rc.sh")
        with open(rc, "w") as f:
            f.write("FROM_RC=yes\n")
        self.assertRan(a.run(f"export BASH_ENV={rc}"))
        time.sleep(0.2)
        self.assertEqual(warm_shells(a.proc.pid), [])  # no warm shell for this state
        self.assertEqual(a.run("echo $FROM_RC").out, "yes\n")
        self.assertRan(a.run("unset BASH_ENV"))
        w = wait_warm(a)
        self.assertEqual(a.run("echo ok").pid, w)
        # exported functions (could shadow the bootstrap's builtins) come only from the
        # agent's own environment: `export -p` does not list them, so they never persist
        client = self.new_agent(**{"BASH_FUNC_read%%": "() { echo shadowed; }"})
        try:
            res = client.run("echo -n x | read -r v; echo $?")
            self.assertEqual(res.out, "shadowed\n0\n")
            time.sleep(0.2)
            self.assertEqual(warm_shells(client.proc.pid), [])
        finally:
            client.close()


class SpeculativeWarmShellTests(WarmShellTests):
    """The same, with SANDBOXKIT_AGENT_WARM=2: the next warm shell is spawned as soon as one
    is taken, for the state before the command, and replaced if the command changes it."""
    AGENT_ENV = {"SANDBOXKIT_AGENT_WARM": "2"}

    def test_speculative_shell_is_replaced_when_the_state_changes(self) -> None:
        a = self.agent
        a.run("true")
        w1 = wait_warm(a)
        ch = a.start("sleep 0.5; cd /; export SPEC=1")
        self.assertEqual(json.loads(a.frame(ch)[1])["pid"], w1)
        deadline = time.monotonic() + 10  # spawned while the command runs, for the state before it
        while not (idle := [p for p in warm_shells(a.proc.pid) if p != w1]):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.005)
        self.assertIn(w1, warm_shells(a.proc.pid))  # still running
        w2 = idle[0]
        self.assertRan(a.collect(ch))
        self.assertTrue(wait_dead(w2))  # wrong state now
        w3 = wait_warm(a)
        res = a.run("pwd; echo $SPEC")
        self.assertEqual((res.pid, res.out), (w3, "/\n1\n"))
        w4 = wait_warm(a)  # the speculative shell for the unchanged state is kept
        time.sleep(0.1)
        self.assertEqual(a.run("echo $$").out, f"{w4}\n")


class LatencyTests(AgentTestCase):
    def test_latency_report(self) -> None:
        """Not an assertion: prints `echo hello` round trips through agents with a warm shell
        (the default, SANDBOXKIT_AGENT_WARM=1, and =2) and without (=0), next to a bare
        `bash -c` spawn and a ping, all interleaved in one run (random order per round) so
        that host load hits them alike.

        paced: before every measurement each warm agent is idle with a ready warm shell, as
        for a client that does not send commands back to back; nothing spawns in the
        background while anything is measured. back-to-back: blocks of 10 commands sent as
        fast as the client can, rotating between the agents: a warm command then may wait
        for the shell that the previous command started."""
        warm = self.agent
        spec = self.new_agent(SANDBOXKIT_AGENT_WARM="2")
        cold = self.new_agent(SANDBOXKIT_AGENT_WARM="0")
        self.addCleanup(spec.close)
        self.addCleanup(cold.close)
        rng = random.Random(1)
        env = dict(os.environ)
        for client in (warm, spec, cold):
            for _ in range(10):
                self.assertEqual(client.run("echo hello").stdout, b"hello\n")
        warm_pids: set[int] = set()

        def settle() -> int:
            wait_warm(spec)
            return wait_warm(warm)

        def run_echo(client: AgentClient) -> float:
            t = time.perf_counter()
            res = client.run("echo hello")
            ms = (time.perf_counter() - t) * 1000
            assert res.stdout == b"hello\n", res
            warm_pids.add(res.pid)  # type: ignore[arg-type]
            return ms

        def raw_spawn() -> float:
            t = time.perf_counter()
            subprocess.run(["bash", "--noprofile", "--norc", "-c", "echo hello"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True)
            return (time.perf_counter() - t) * 1000

        def ping() -> float:
            t = time.perf_counter()
            warm.ping()
            return (time.perf_counter() - t) * 1000

        n = 200
        paced: dict[str, list[float]] = {"warm": [], "cold": [], "raw": [], "ping": []}
        used_warm = 0
        for _ in range(n):
            order = list(paced)
            rng.shuffle(order)
            for kind in order:
                ready = settle()
                if kind == "warm":
                    paced[kind].append(run_echo(warm))
                    used_warm += ready in warm_pids
                elif kind == "cold":
                    paced[kind].append(run_echo(cold))
                else:
                    paced[kind].append(raw_spawn() if kind == "raw" else ping())
        burst: dict[str, list[float]] = {"warm": [], "spec": [], "cold": []}
        clients = {"warm": warm, "spec": spec, "cold": cold}
        for _ in range(n // 10):
            order = list(burst)
            rng.shuffle(order)
            for kind in order:
                settle()
                for _ in range(10):
                    burst[kind].append(run_echo(clients[kind]))

        def pct(xs: list[float], p: float) -> float:
            return sorted(xs)[int(len(xs) * p)]

        def line(label: str, xs: list[float]) -> str:
            return f"\n  {label:<46} p50 {pct(xs, .5):6.2f} ms, p90 {pct(xs, .9):6.2f} ms"

        def ratio(label: str, slow: list[float], fast: list[float]) -> str:
            return (f"\n  {label:<46} p50 x{pct(slow, .5) / pct(fast, .5):.2f},"
                    f" p90 x{pct(slow, .9) / pct(fast, .9):.2f}")

        print(line("echo, warm shell (paced):", paced["warm"])
              + line("echo, cold spawn (paced):", paced["cold"])
              + ratio("cold/warm (paced):", paced["cold"], paced["warm"])
              + f"  ({used_warm}/{n} warm runs got the ready shell)"
              + line("echo, warm shell (back-to-back):", burst["warm"])
              + line("echo, warm, WARM=2 speculative (back-to-back):", burst["spec"])
              + line("echo, cold spawn (back-to-back):", burst["cold"])
              + ratio("cold/warm (back-to-back):", burst["cold"], burst["warm"])
              + ratio("cold/warm WARM=2 (back-to-back):", burst["cold"], burst["spec"])
              + line("bare bash -c spawn (no agent):", paced["raw"])
              + line("agent ping round trip:", paced["ping"]),
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
