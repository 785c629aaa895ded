"""Protocol tests of python_driver.py, run as `python3 -m unittest` from this folder.

Each test starts the driver as the supervisor does (fd 3/4 pipes, SIGINT) and talks to it
through the protocol only. Modes and interpreters:
  PlainModeTests      the interpreter running the tests, IPython forced off
  IPythonModeTests    the first interpreter with IPython (this one, then /usr/bin/python3)
  Rich*Tests          matplotlib / pandas, with the first interpreter that has both
Environment overrides: SANDBOXKIT_TEST_PYTHON (plain mode), SANDBOXKIT_TEST_IPYTHON_PYTHON.
"""

import base64
import json
import os
import struct
import subprocess
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver_client import PYTHON_DRIVER, DriverProcess, done_of, error_of, results  # noqa: E402

ANSI = "\x1b["


def has_modules(python, *modules):
    code = "import " + ", ".join(modules)
    try:
        return subprocess.run([python, "-c", code], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def first_with(candidates, *modules):
    for python in candidates:
        if python and os.path.exists(python) and has_modules(python, *modules):
            return python
    return None


CANDIDATES = [os.environ.get("SANDBOXKIT_TEST_IPYTHON_PYTHON"), sys.executable, "/usr/bin/python3"]
PLAIN_PYTHON = os.environ.get("SANDBOXKIT_TEST_PYTHON") or sys.executable
IPYTHON_PYTHON = first_with(CANDIDATES, "IPython")
RICH_PYTHON = first_with(CANDIDATES, "matplotlib", "pandas")
RICH_IPYTHON_PYTHON = first_with(CANDIDATES, "matplotlib", "pandas", "IPython")


def check_png(b64):
    """Decode a base64 PNG fully: signature, chunk CRCs, IHDR size > 0, IDAT inflates to the
    exact size the header implies. Returns (width, height)."""
    data = base64.b64decode(b64, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, "bad CRC in " + kind.decode()
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert width > 0 and height > 0
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    raw = zlib.decompress(idat)
    if interlace == 0:
        assert len(raw) == height * (1 + (width * channels * depth + 7) // 8), "IDAT size does not match IHDR"
    return width, height


class DriverTestCase(unittest.TestCase):
    python = None
    ipython = False

    def start(self, **kwargs):
        env = dict(os.environ, SANDBOXKIT_PYTHON_IPYTHON="1" if self.ipython else "0", MPLBACKEND="Agg")
        env.pop("PYTHONSTARTUP", None)
        d = DriverProcess([self.python, "-u", PYTHON_DRIVER], env=env, **kwargs)
        self.addCleanup(d.close)
        self.assertIsNotNone(d.ready, "no ready event; stderr: {!r}".format(d.stderr))
        return d

    def run_ok(self, d, code, **kwargs):
        events, out = d.execute(code, **kwargs)
        done = done_of(events)
        self.assertEqual(done["status"], "ok", (code, events, d.stderr[-3000:]))
        return events, out

    def main_text(self, events):
        mains = results(events, main=True)
        self.assertEqual(len(mains), 1, events)
        return mains[0]["data"]["text/plain"]


class CoreTests:
    """Behaviour every mode must have."""

    def test_ready_event(self):
        d = self.start()
        self.assertEqual(d.ready["type"], "ready")
        self.assertEqual(d.ready["language"], "python")
        self.assertEqual(d.ready["ipython"], self.ipython)
        self.assertRegex(d.ready["version"], r"^3\.\d+\.\d+")

    def test_state_persists_and_last_expression_is_main_result(self):
        d = self.start()
        events, _ = self.run_ok(d, "x = 40\ndef inc(v):\n    return v + 1")
        self.assertEqual(results(events), [])
        events, _ = self.run_ok(d, "y = inc(x)\ny + 1")
        self.assertEqual(self.main_text(events), "42")
        events, _ = self.run_ok(d, "y;")  # trailing semicolon: computed, not shown
        self.assertEqual(results(events), [])
        events, _ = self.run_ok(d, "None")
        self.assertEqual(results(events), [])

    def test_execution_count(self):
        d = self.start()
        counts = [done_of(d.execute(code)[0])["executionCount"] for code in ("1", "1/0", "2", "   ")]
        self.assertEqual(counts, [1, 2, 3, 3])

    def test_display_rich_reprs(self):
        d = self.start()
        self.run_ok(d, "\n".join([
            "import base64",
            "PNG = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==')",
            "class Rich:",
            "    def _repr_html_(self): return '<b>bold</b>'",
            "    def _repr_markdown_(self): return '# title'",
            "    def _repr_svg_(self): return '<svg xmlns=\"http://www.w3.org/2000/svg\"/>'",
            "    def _repr_png_(self): return PNG",
            "    def _repr_json_(self): return {'a': [1, 2]}",
            "    def __repr__(self): return 'Rich()'",
        ]))
        events, _ = self.run_ok(d, "display(Rich())\nRich()")
        shown, main = results(events)
        self.assertFalse(shown["isMainResult"])
        self.assertTrue(main["isMainResult"])
        for result in (shown, main):
            data = result["data"]
            self.assertEqual(data["text/html"], "<b>bold</b>")
            self.assertEqual(data["text/markdown"], "# title")
            self.assertIn("<svg", data["image/svg+xml"])
            self.assertEqual(check_png(data["image/png"]), (1, 1))
            self.assertEqual(json.loads(data["application/json"]), {"a": [1, 2]})
            self.assertEqual(data["text/plain"], "Rich()")

    def test_display_raw_bundle_and_mimebundle(self):
        d = self.start()
        events, _ = self.run_ok(d, "\n".join([
            "display({'text/html': '<i>raw</i>', 'text/plain': 'raw'}, raw=True)",
            "class B:",
            "    def _repr_mimebundle_(self, include=None, exclude=None):",
            "        return {'text/markdown': '*m*', 'text/plain': 'B'}",
            "display(B())",
        ]))
        raw, bundle = results(events)
        self.assertEqual(raw["data"], {"text/html": "<i>raw</i>", "text/plain": "raw"})
        self.assertEqual(bundle["data"]["text/markdown"], "*m*")

    def test_exception_is_structured_and_state_survives(self):
        d = self.start()
        self.run_ok(d, "kept = 'yes'")
        events, _ = d.execute("def f():\n    return 1 / 0\nf()")
        err = error_of(events)
        self.assertEqual(err["name"], "ZeroDivisionError")
        self.assertEqual(err["value"], "division by zero")
        self.assertIn("return 1 / 0", err["traceback"])
        self.assertNotIn(ANSI, err["traceback"])
        self.assertNotIn("python_driver.py", err["traceback"])
        self.assertEqual(done_of(events)["status"], "error")
        self.assertEqual(events[-2]["type"], "error")
        events, _ = self.run_ok(d, "kept")
        self.assertEqual(self.main_text(events), "'yes'")

    def test_syntax_error(self):
        d = self.start()
        events, _ = d.execute("x = (")
        self.assertEqual(error_of(events)["name"], "SyntaxError")
        self.assertEqual(done_of(events)["status"], "error")

    def assert_interrupted(self, d, code):
        started = time.monotonic()
        events, _ = d.execute(code, interrupt_after=0.7, timeout=20)
        self.assertLess(time.monotonic() - started, 10)
        err = error_of(events)
        self.assertEqual(err["name"], "KeyboardInterrupt", events)
        self.assertNotIn("python_driver.py", err["traceback"])
        self.assertEqual(done_of(events)["status"], "interrupted")
        events, _ = self.run_ok(d, "state")
        self.assertEqual(self.main_text(events), "'kept'")

    def test_interrupt_busy_loop(self):
        d = self.start()
        self.run_ok(d, "state = 'kept'")
        self.assert_interrupted(d, "while True:\n    pass")

    def test_interrupt_sleep(self):
        d = self.start()
        self.run_ok(d, "state = 'kept'\nimport time")
        self.assert_interrupted(d, "time.sleep(100)")

    def test_interrupt_awaited_future(self):
        d = self.start()
        self.run_ok(d, "state = 'kept'\nimport asyncio")
        self.assert_interrupted(d, "await asyncio.get_running_loop().create_future()")
        events, _ = self.run_ok(d, "await asyncio.sleep(0.01)\n'loop ok'")
        self.assertEqual(self.main_text(events), "'loop ok'")

    def test_sigint_while_idle_is_harmless(self):
        d = self.start()
        self.run_ok(d, "v = 1")
        for _ in range(5):
            d.interrupt()
            time.sleep(0.05)
        d.drain_output(0.3)
        self.assertIsNone(d.proc.poll())
        events, _ = self.run_ok(d, "v + 1")
        self.assertEqual(self.main_text(events), "2")

    def test_top_level_await_and_tasks_outlive_cells(self):
        d = self.start()
        events, _ = self.run_ok(d, "import asyncio\nawait asyncio.sleep(0.01)\n7 * 6")
        self.assertEqual(self.main_text(events), "42")
        self.run_ok(d, "async def later():\n    await asyncio.sleep(0.05)\n    return 'done later'\ntask = asyncio.ensure_future(later())")
        events, _ = self.run_ok(d, "await task")
        self.assertEqual(self.main_text(events), "'done later'")

    def test_stdout_order_relative_to_events(self):
        d = self.start()
        events, out = self.run_ok(d, "print('before')\ndisplay({'text/plain': 'shown'}, raw=True)\nprint('after')\n'value'")
        self.assertEqual(out, "before\nafter\n")
        # Contract: output printed before an event is readable before that event.
        seen, checks = "", []
        for kind, item in d.last_log:
            if kind == "stdout":
                seen += item.decode()
            elif kind == "event":
                checks.append((item["type"], item.get("data", {}).get("text/plain"), seen))
        self.assertEqual(checks[0][:2], ("result", "shown"))
        self.assertTrue(checks[0][2].startswith("before\n"), checks)
        self.assertEqual(checks[1][:2], ("result", "'value'"))
        self.assertEqual(checks[1][2], "before\nafter\n")
        self.assertEqual(checks[2][0], "done")

    def test_subprocess_and_stderr_output_arrive(self):
        d = self.start()
        events, out = self.run_ok(d, "import subprocess, sys\nsubprocess.run(['echo', 'from child'])\nprint('err line', file=sys.stderr)")
        self.assertIn("from child", out)
        d.drain_output(0.2)
        self.assertIn(b"err line", d.stderr)

    def test_protocol_fds_not_inherited(self):
        d = self.start()
        code = ("import subprocess\n"
                "subprocess.run(['sh', '-c', 'for f in 3 4; do [ -e /proc/$$/fd/$f ] && echo leaked$f; done; echo checked'], close_fds=False)")
        _, out = self.run_ok(d, code)
        self.assertIn("checked", out)
        self.assertNotIn("leaked", out)

    def test_huge_stdout(self):
        d = self.start()
        _, out = self.run_ok(d, "import sys\nsys.stdout.write('y' * (20 * 1024 * 1024))\nsys.stdout.flush()", timeout=120)
        self.assertEqual(len(out), 20 * 1024 * 1024)

    def test_huge_result_is_truncated_under_16_mib(self):
        d = self.start()
        events, _ = self.run_ok(d, "'ab' * (15 * 1024 * 1024)", timeout=120)
        main = results(events, main=True)[0]
        self.assertLessEqual(main["_bytes"], 16 * 1024 * 1024)
        self.assertTrue(main["metadata"]["sandboxkit"]["truncated"])
        self.assertIn("SandboxKit truncated", main["data"]["text/plain"])
        events, _ = self.run_ok(d, "display({'text/plain': 'small', 'text/html': 'h' * (20 * 1024 * 1024)}, raw=True)", timeout=120)
        shown = results(events)[0]
        self.assertEqual(shown["data"], {"text/plain": "small"})
        self.assertEqual(shown["metadata"]["sandboxkit"]["dropped"], ["text/html"])

    def test_lone_surrogates_stay_valid_utf8(self):
        d = self.start()
        events, _ = self.run_ok(d, "display({'text/plain': 'a\\udcffb'}, raw=True)")
        self.assertEqual(results(events)[0]["data"]["text/plain"], "a\ufffdb")

    def test_malformed_requests(self):
        d = self.start()
        bad = [b"not json", json.dumps([1, 2]).encode(), b"\xff\xfe", json.dumps({"type": "nope", "id": "q"}).encode(),
               json.dumps({"type": "execute", "id": "c"}).encode()]
        for payload in bad:
            d.send_raw(len(payload).to_bytes(4, "big") + payload)
            err = d.next_event()
            done = d.next_event()
            self.assertEqual((err["type"], err["name"]), ("error", "ProtocolError"), err)
            self.assertEqual((done["type"], done["status"]), ("done", "error"))
        self.assertEqual(err["id"], "c")
        events, _ = self.run_ok(d, "'still alive'")
        self.assertEqual(self.main_text(events), "'still alive'")

    def test_oversized_request_is_skipped_and_reported(self):
        d = self.start()
        size = 16 * 1024 * 1024 + 1
        d.send_raw(size.to_bytes(4, "big"))
        chunk = b" " * (1024 * 1024)
        sent = 0
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            d.send_raw(part)
            sent += len(part)
        err, done = d.next_event(), d.next_event()
        self.assertEqual(err["name"], "ProtocolError")
        self.assertIn("exceeds", err["value"])
        self.assertIsNone(done["id"])
        events, _ = self.run_ok(d, "1 + 1")
        self.assertEqual(self.main_text(events), "2")

    def test_eof_exits_zero(self):
        d = self.start()
        self.run_ok(d, "z = 1")
        d.close_requests()
        self.assertEqual(d.wait_exit(), 0)

    def test_shutdown_exits_zero_even_while_busy(self):
        d = self.start()
        d.send({"type": "execute", "id": "busy", "code": "while True:\n    pass"})
        time.sleep(0.3)
        started = time.monotonic()
        d.send({"type": "shutdown"})
        self.assertEqual(d.wait_exit(), 0)
        self.assertLess(time.monotonic() - started, 5)

    def test_sys_exit_is_an_error_and_context_lives(self):
        d = self.start()
        self.run_ok(d, "alive = 'yes'")
        for code in ("import sys\nsys.exit(3)", "exit()", "raise SystemExit('bye')"):
            events, _ = d.execute(code)
            self.assertEqual(error_of(events)["name"], "SystemExit", code)
            self.assertEqual(done_of(events)["status"], "error")
        events, _ = self.run_ok(d, "alive")
        self.assertEqual(self.main_text(events), "'yes'")

    def test_os_exit_ends_the_process(self):
        d = self.start()
        d.send({"type": "execute", "id": "bye", "code": "import os\nprint('last words', flush=True)\nos._exit(7)"})
        self.assertEqual(d.wait_exit(), 7)
        self.assertIsNone(d.next_event(timeout=5))
        self.assertIn(b"last words", d.stdout)


class RichTests:
    """matplotlib and pandas (needs an interpreter that has them)."""

    def figure_results(self, events):
        return [r for r in results(events, main=False) if "image/png" in r["data"]]

    def test_pyplot_show_gives_png(self):
        d = self.start()
        events, _ = self.run_ok(d, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()", timeout=120)
        figures = self.figure_results(events)
        self.assertEqual(len(figures), 1, events)
        width, height = check_png(figures[0]["data"]["image/png"])
        self.assertGreater(width * height, 100)

    def test_open_figure_captured_at_cell_end_and_closed(self):
        d = self.start()
        events, _ = self.run_ok(d, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar([1, 2], [3, 4]);", timeout=120)
        self.assertEqual(len(self.figure_results(events)), 1, events)
        check_png(self.figure_results(events)[0]["data"]["image/png"])
        events, _ = self.run_ok(d, "len(plt.get_fignums())")
        self.assertEqual(self.main_text(events), "0")
        self.assertEqual(self.figure_results(events), [])

    def test_figure_as_value(self):
        d = self.start()
        events, _ = self.run_ok(d, "import matplotlib.pyplot as plt\nfig = plt.figure()\nplt.plot([0, 1])\nplt.close(fig)\nfig", timeout=120)
        main = results(events, main=True)[0]
        check_png(main["data"]["image/png"])

    def test_subprocess_keeps_plain_agg_backend(self):
        d = self.start()
        _, out = self.run_ok(d, "import os, subprocess, sys\nimport matplotlib\nsubprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"MPLBACKEND\"))'])")
        self.assertIn("Agg", out)

    def test_dataframe_html(self):
        d = self.start()
        events, _ = self.run_ok(d, "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})", timeout=120)
        data = results(events, main=True)[0]["data"]
        self.assertIn("<table", data["text/html"])
        self.assertIn("a", data["text/plain"])


class IPythonOnlyTests:
    def test_magics_work(self):
        d = self.start()
        events, out = self.run_ok(d, "%timeit -n 3 -r 1 sum(range(10))")
        self.assertIn("loop", out)
        events, _ = self.run_ok(d, "%who_ls")
        self.assertIn("[", self.main_text(events))

    def test_ipython_display_objects(self):
        d = self.start()
        events, _ = self.run_ok(d, "from IPython.display import HTML, Markdown, SVG, JSON\n"
                                   "display(HTML('<p>h</p>'), Markdown('**m**'), SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'), JSON({'k': 1}))")
        data = [r["data"] for r in results(events)]
        self.assertEqual(data[0]["text/html"], "<p>h</p>")
        self.assertEqual(data[1]["text/markdown"], "**m**")
        self.assertIn("<svg", data[2]["image/svg+xml"])
        self.assertEqual(json.loads(data[3]["application/json"]), {"k": 1})

    def test_no_out_prompt_on_stdout(self):
        d = self.start()
        _, out = self.run_ok(d, "123")
        self.assertNotIn("Out[", out)


class PlainModeTests(CoreTests, DriverTestCase):
    python = PLAIN_PYTHON
    ipython = False


@unittest.skipIf(IPYTHON_PYTHON is None, "no interpreter with IPython")
class IPythonModeTests(CoreTests, IPythonOnlyTests, DriverTestCase):
    python = IPYTHON_PYTHON
    ipython = True


@unittest.skipIf(RICH_PYTHON is None, "no interpreter with matplotlib and pandas")
class RichPlainModeTests(RichTests, DriverTestCase):
    python = RICH_PYTHON
    ipython = False


@unittest.skipIf(RICH_IPYTHON_PYTHON is None, "no interpreter with matplotlib, pandas and IPython")
class RichIPythonModeTests(RichTests, DriverTestCase):
    python = RICH_IPYTHON_PYTHON
    ipython = True


if __name__ == "__main__":
    unittest.main()
