#!/usr/bin/env python3
"""SandboxKit Python context driver.

One process is one live Python interpreter ("context") whose state persists across cells.
The supervisor starts it as ``python3 -u python_driver.py`` with:

  fd 3  requests  (driver reads)   4-byte big-endian length + UTF-8 JSON object
  fd 4  events    (driver writes)  same framing
  fd 0  /dev/null; fd 1 / fd 2 pipes the supervisor reads as the context's stdout / stderr

and interrupts a running cell with SIGINT. README.md next to this file is the protocol's
reference; this file only uses the standard library and uses IPython / matplotlib when they
are importable in the image.
"""

import ast
import base64
import builtins
import io
import json
import linecache
import os
import platform
import queue
import re
import signal
import sys
import threading
import traceback
import types

# A request longer than this is refused (and its bytes skipped), never buffered.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Every event payload stays at or below this, 64 KiB under 16 MiB so that a reader that
# allocates "16 MiB" buffers, or counts the 4 header bytes, is never surprised.
MAX_EVENT_BYTES = 16 * 1024 * 1024 - 64 * 1024
REQUEST_FD = 3
EVENT_FD = 4
PROTOCOL_VERSION = 1

_DRIVER_FILE = os.path.abspath(__file__)
_DRIVER_DIR = os.path.dirname(_DRIVER_FILE)
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

# Mime types whose values travel base64-encoded (Jupyter's convention for binary data).
_TEXTUAL_IMAGE_TYPES = ("image/svg+xml",)


def _is_binary_mime(mime):
    if mime in _TEXTUAL_IMAGE_TYPES:
        return False
    return mime.startswith(("image/", "audio/", "video/")) or mime in (
        "application/pdf",
        "application/octet-stream",
        "application/zip",
    )


def _is_json_mime(mime):
    return mime == "application/json" or mime.endswith("+json")


def _jsonable(value, depth=0):
    """Copy of value with only JSON types (metadata from user code can hold anything)."""
    if depth > 32:
        return None
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    try:
        return str(value)
    except Exception:
        return None


def _fix_surrogates(text):
    # Strings from user code may hold lone surrogates (surrogateescape'd file names,
    # bad C extensions); they are not valid UTF-8, so they become U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _encode_json(obj):
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _fix_surrogates(text).encode("utf-8")


def _truncate_text(text, max_bytes):
    """Keep the head and tail of text so that its JSON encoding stays under max_bytes."""
    marker = "\n[... SandboxKit truncated {} characters ...]\n"
    encoded = len(_encode_json(text))
    if encoded <= max_bytes:
        return text, False
    keep = max(0, int(len(text) * (max_bytes / float(encoded)) * 0.95) - 100)
    while True:
        head, tail = text[: keep // 2], text[len(text) - keep // 2:] if keep >= 2 else ""
        candidate = head + marker.format(len(text) - len(head) - len(tail)) + tail
        if len(_encode_json(candidate)) <= max_bytes or keep == 0:
            return candidate, True
        keep = int(keep * 0.8)


def _fit_event(event):
    """Encode an event, shrinking it under MAX_EVENT_BYTES when user data made it huge.

    Results: the largest non-text/plain entries are dropped first, then text/plain is cut
    (head and tail kept); what happened is recorded in metadata["sandboxkit"].
    Errors: traceback, then value are cut the same way.
    """
    payload = _encode_json(event)
    if len(payload) <= MAX_EVENT_BYTES:
        return payload
    event = dict(event)
    budget = MAX_EVENT_BYTES - 4096
    if event.get("type") == "result":
        data = dict(event.get("data") or {})
        metadata = dict(event.get("metadata") or {})
        note = {"truncated": True, "dropped": [], "originalBytes": len(payload)}
        sizes = sorted(((len(_encode_json(v)), k) for k, v in data.items() if k != "text/plain"), reverse=True)
        for _, mime in sizes:
            if len(_encode_json(data)) <= budget:
                break
            del data[mime]
            metadata.pop(mime, None)
            note["dropped"].append(mime)
        if "text/plain" not in data:
            data["text/plain"] = "[result too large for one event: dropped {}]".format(", ".join(note["dropped"]))
        others = len(_encode_json({k: v for k, v in data.items() if k != "text/plain"}))
        text, cut = _truncate_text(data["text/plain"], max(1024, budget - others))
        if cut:
            data["text/plain"] = text
            note["textPlainCut"] = True
        metadata["sandboxkit"] = note
        event["data"], event["metadata"] = data, metadata
    elif event.get("type") == "error":
        event["traceback"], _ = _truncate_text(event.get("traceback") or "", budget // 2)
        event["value"], _ = _truncate_text(event.get("value") or "", budget // 4)
    payload = _encode_json(event)
    if len(payload) > MAX_EVENT_BYTES:  # cannot happen with the budgets above; stay well-formed anyway
        payload = _encode_json({"type": event.get("type"), "id": event.get("id"),
                                "data": {"text/plain": "[event too large]"}, "isMainResult": False})
    return payload


def _flush_stdio():
    """Push everything user code printed to fd 1/2 before an event is written to fd 4."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    if _libc_fflush is not None:
        try:
            _libc_fflush(None)  # C-level stdio buffers of extensions (printf)
        except Exception:
            pass


def _load_fflush():
    try:
        import ctypes

        fn = ctypes.CDLL(None).fflush
        fn.argtypes = [ctypes.c_void_p]
        return fn
    except Exception:
        return None


_libc_fflush = _load_fflush()


class Driver:
    """The protocol side: framing, the request reader, interrupts and event writing."""

    def __init__(self):
        self.pid = os.getpid()
        self.requests = queue.Queue()
        self.write_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.busy = False           # a request is being handled by the main thread
        self.exiting = False
        self.cell_id = None         # id of the running cell (results are attributed to it)
        self.cell_active = False    # SIGINT raises KeyboardInterrupt only while True
        self.in_critical = False    # main thread is writing a frame: defer the interrupt
        self.pending_interrupt = False
        self.backend = None

    # ---- signals -------------------------------------------------------------------
    def on_sigint(self, signum, frame):
        # Runs in the main thread between bytecodes. Idle: nothing to interrupt.
        if not self.cell_active:
            return
        if self.in_critical:
            self.pending_interrupt = True
            return
        # Raised from C, so the traceback ends in the user's frame, not in this handler.
        signal.default_int_handler(signum, frame)

    # ---- events --------------------------------------------------------------------
    def send(self, event):
        """Write one event frame. Thread-safe; a frame is never torn by an interrupt."""
        if os.getpid() != self.pid:
            return  # a fork()ed child of user code must not speak the protocol
        payload = _fit_event(event)
        frame = len(payload).to_bytes(4, "big") + payload
        main = threading.current_thread() is threading.main_thread()
        with self.write_lock:
            if main:
                self.in_critical = True
            try:
                _flush_stdio()
                view = memoryview(frame)
                while view:
                    try:
                        n = os.write(EVENT_FD, view)
                    except (BrokenPipeError, ConnectionResetError):
                        os._exit(0)  # nobody reads events any more: the supervisor is gone
                    except BlockingIOError:
                        # The supervisor made our end non-blocking: wait until writable.
                        import select

                        select.select([], [EVENT_FD], [], 1.0)
                        continue
                    view = view[n:]
            finally:
                if main:
                    self.in_critical = False
        if main and self.pending_interrupt and self.cell_active:
            self.pending_interrupt = False
            raise KeyboardInterrupt

    def send_result(self, data, metadata, is_main):
        cell = self.cell_id
        if cell is None:
            # display() from a thread or callback after its cell ended: there is no cell
            # whose "done" has not been sent, so it cannot be attributed; say so on stderr.
            try:
                sys.stderr.write("[sandboxkit] display() outside a running cell was dropped\n")
            except Exception:
                pass
            return
        bundle = normalize_bundle(data)
        if not bundle:
            return
        event = {"type": "result", "id": cell, "data": bundle, "isMainResult": bool(is_main)}
        md = _jsonable(metadata) if metadata else None
        if isinstance(md, dict) and md:
            event["metadata"] = md
        self.send(event)

    # ---- requests ------------------------------------------------------------------
    def _read_exact(self, n):
        chunks, remaining = [], n
        while remaining:
            chunk = os.read(REQUEST_FD, min(remaining, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _skip(self, n):
        while n:
            chunk = os.read(REQUEST_FD, min(n, 1 << 20))
            if not chunk:
                return False
            n -= len(chunk)
        return True

    def reader(self):
        """Reader thread: frames from fd 3 into the queue; EOF/shutdown end the process.

        It runs beside a busy main thread, so a shutdown (or the supervisor going away)
        ends the context at once even while a cell loops forever.
        """
        try:
            while True:
                header = self._read_exact(4)
                if header is None:
                    break
                length = int.from_bytes(header, "big")
                if length > MAX_REQUEST_BYTES:
                    if not self._skip(length):
                        break
                    self.requests.put(("bad", None, "request of {} bytes exceeds the {} byte limit".format(length, MAX_REQUEST_BYTES)))
                    continue
                payload = self._read_exact(length)
                if payload is None:
                    break
                try:
                    message = json.loads(payload.decode("utf-8"))
                except Exception as exc:  # bad UTF-8, bad JSON, absurd nesting
                    self.requests.put(("bad", None, "request is not valid UTF-8 JSON: {}".format(exc)))
                    continue
                if not isinstance(message, dict):
                    self.requests.put(("bad", None, "request is not a JSON object"))
                    continue
                if message.get("type") == "shutdown":
                    break
                self.requests.put(("request", message, None))
        except OSError:
            pass
        self.request_exit()

    def request_exit(self):
        with self.state_lock:
            self.exiting = True
            if not self.busy:
                self.requests.put(("exit", None, None))
                return
        os._exit(0)  # a cell is running: do not wait for it

    def serve(self):
        thread = threading.Thread(target=self.reader, name="sandboxkit-requests", daemon=True)
        thread.start()
        while True:
            kind, message, problem = self.requests.get()
            with self.state_lock:
                if self.exiting or kind == "exit":
                    break
                self.busy = True
            try:
                if kind == "bad":
                    self.protocol_error(None, problem)
                else:
                    self.handle(message)
            finally:
                with self.state_lock:
                    self.busy = False
                    exiting = self.exiting
            if exiting:
                break
        _flush_stdio()
        # os._exit: user threads that are not daemons, or atexit hooks of user code,
        # must not keep a context alive that the supervisor asked to end.
        os._exit(0)

    def protocol_error(self, request_id, problem):
        self.send({"type": "error", "id": request_id, "name": "ProtocolError", "value": problem, "traceback": ""})
        self.send({"type": "done", "id": request_id, "executionCount": self.backend.execution_count, "status": "error"})

    def handle(self, message):
        kind = message.get("type")
        request_id = message.get("id") if isinstance(message.get("id"), str) else None
        if kind != "execute":
            self.protocol_error(request_id, "unknown request type {!r}".format(kind))
            return
        code = message.get("code")
        if request_id is None or not isinstance(code, str):
            self.protocol_error(request_id, "execute needs a string id and a string code")
            return
        self.run_cell(request_id, code)

    def run_cell(self, cell_id, code):
        self.cell_id = cell_id
        self.pending_interrupt = False
        error, count = None, self.backend.execution_count
        try:
            error, count = self.backend.run(code)
        except KeyboardInterrupt as exc:
            # An interrupt that landed in the driver's own code around the cell.
            error = {"name": "KeyboardInterrupt", "value": str(exc), "traceback": "KeyboardInterrupt\n", "_interrupt": True}
        finally:
            self.cell_active = False
            self.pending_interrupt = False
        status = "ok"
        if error is not None:
            status = "interrupted" if error.pop("_interrupt", False) else "error"
            self.send(dict({"type": "error", "id": cell_id}, **error))
        self.cell_id = None
        self.send({"type": "done", "id": cell_id, "executionCount": count, "status": status})


def normalize_bundle(data):
    """Mime bundle → {mime: str}: binary types base64, JSON types as JSON text."""
    out = {}
    if not isinstance(data, dict):
        return out
    for mime, value in data.items():
        if not isinstance(mime, str) or value is None:
            continue
        try:
            if _is_json_mime(mime):
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("utf-8", "replace")
                if isinstance(value, str):
                    try:
                        json.loads(value)
                    except ValueError:
                        value = json.dumps(value)
                else:
                    value = json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)
            elif _is_binary_mime(mime):
                if isinstance(value, (bytes, bytearray, memoryview)):
                    value = base64.b64encode(bytes(value)).decode("ascii")
                else:
                    value = "".join(str(value).split())  # already base64; drop line breaks
            else:
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("utf-8", "replace")
                elif isinstance(value, (list, tuple)):
                    value = "".join(str(v) for v in value)
                elif not isinstance(value, str):
                    value = str(value)
        except Exception:
            continue
        out[mime] = value
    return out


# ---- matplotlib -----------------------------------------------------------------------
# Figures become image/png results like Jupyter's inline backend: shown by plt.show() or
# left open when the cell ends. The backend is chosen when matplotlib itself is imported,
# through rcParams, not through MPLBACKEND, so that subprocesses keep the plain Agg setting.

_MPL_BACKEND_MODULE = "_sandboxkit_mpl_backend"

_MPL_BACKEND_SOURCE = '''
import matplotlib
from matplotlib.backends import backend_agg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.figure import Figure

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def new_figure_manager(num, *args, FigureClass=Figure, **kwargs):
    return new_figure_manager_given_figure(num, FigureClass(*args, **kwargs))


def new_figure_manager_given_figure(num, figure):
    if hasattr(FigureCanvasAgg, "new_manager"):
        return FigureCanvasAgg.new_manager(figure, num)
    return backend_agg.new_figure_manager_given_figure(num, figure)


def draw_if_interactive():
    pass


def show(*args, **kwargs):
    _sandboxkit_flush(force=True)
'''


def figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


class Figures:
    """Open-figure capture for the backend above (plain mode, or IPython without matplotlib_inline)."""

    def __init__(self, driver):
        self.driver = driver
        self.shown = {}  # id(figure) -> figure displayed in this cell (skipped if unchanged)

    def begin_cell(self):
        self.shown.clear()

    def mark_shown(self, fig):
        self.shown[id(fig)] = fig

    def flush(self, force=False):
        pyplot = sys.modules.get("matplotlib.pyplot")
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        if pyplot is None or helpers is None:
            return
        backend = str(sys.modules["matplotlib"].get_backend())
        if backend != "module://" + _MPL_BACKEND_MODULE and backend.lower() != "agg":
            return  # the user picked another backend (inline, svg, ...): leave it alone
        managers = list(helpers.Gcf.get_all_fig_managers())
        if not managers:
            return
        try:
            for manager in managers:
                fig = manager.canvas.figure
                if not force and id(fig) in self.shown and not getattr(fig, "stale", True):
                    continue  # already displayed this cell and not changed since
                self.driver.send_result(
                    {"image/png": figure_png(fig), "text/plain": repr(fig)}, None, False)
        finally:
            pyplot.close("all")


class _BackendLoader:
    """Loader for the in-memory matplotlib backend module (no file on disk needed)."""

    def __init__(self, figures):
        self.figures = figures

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__dict__["_sandboxkit_flush"] = self.figures.flush
        exec(compile(_MPL_BACKEND_SOURCE, "<sandboxkit matplotlib backend>", "exec"), module.__dict__)


class _PostImportLoader:
    """Wraps matplotlib's loader to pick the backend right after matplotlib is imported."""

    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception as exc:  # never break `import matplotlib` over the backend choice
            sys.stderr.write("[sandboxkit] matplotlib backend setup failed: {}\n".format(exc))

    def __getattr__(self, name):
        return getattr(self.loader, name)


class MatplotlibFinder:
    """sys.meta_path entry: serves the backend module and hooks the first matplotlib import."""

    def __init__(self, figures, inline_backend):
        self.figures = figures
        self.inline_backend = inline_backend  # "module://matplotlib_inline.backend_inline" or None
        self.hooked = False

    def find_spec(self, fullname, path=None, target=None):
        import importlib.util

        if fullname == _MPL_BACKEND_MODULE:
            return importlib.util.spec_from_loader(fullname, _BackendLoader(self.figures))
        if fullname != "matplotlib" or self.hooked:
            return None
        self.hooked = True
        spec = importlib.util.find_spec("matplotlib")
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PostImportLoader(spec.loader, self.configure)
        return spec

    def configure(self, mpl):
        chosen = os.environ.get("MPLBACKEND", "")
        if chosen and chosen.lower() != "agg":
            return  # explicitly set by the session: respected
        mpl.use(self.inline_backend or "module://" + _MPL_BACKEND_MODULE)


def _figure_class():
    module = sys.modules.get("matplotlib.figure")
    return getattr(module, "Figure", None) if module else None


# ---- rich display without IPython -----------------------------------------------------

_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)


def _repr_method(obj, name):
    # Same guards as IPython: classes are not rendered through their unbound methods, and
    # objects that claim every attribute (mocks, proxies) are not trusted.
    if isinstance(obj, type):
        return None
    try:
        if hasattr(obj, "_ipython_canary_method_should_not_exist_"):
            return None
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def format_bundle(obj, figures=None, include=None, exclude=None):
    """(data, metadata) for obj, honouring _repr_mimebundle_ and _repr_*_ like IPython."""
    data, metadata = {}, {}
    fig_class = _figure_class()
    if fig_class is not None and isinstance(obj, fig_class):
        data["image/png"] = figure_png(obj)
        if figures is not None:
            figures.mark_shown(obj)
    method = _repr_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            produced = method(include=include, exclude=exclude)
        except TypeError:
            produced = method()
        except Exception:
            traceback.print_exc()
            produced = None
        if isinstance(produced, tuple) and len(produced) == 2:
            produced, md = produced
            if isinstance(md, dict):
                metadata.update(md)
        if isinstance(produced, dict):
            data.update(produced)
    for mime, name in _REPR_METHODS:
        if mime in data:
            continue
        method = _repr_method(obj, name)
        if method is None:
            continue
        try:
            produced = method()
        except NotImplementedError:
            continue
        except Exception:
            sys.stderr.write("[sandboxkit] {} of {} failed:\n".format(name, type(obj).__name__))
            traceback.print_exc()
            continue
        if isinstance(produced, tuple) and len(produced) == 2:
            produced, md = produced
            if md:
                metadata[mime] = md
        if produced is not None:
            data[mime] = produced
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)  # an exception here is the cell's error, as in IPython
    if include:
        data = {k: v for k, v in data.items() if k in include or k == "text/plain"}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude or k == "text/plain"}
    return data, metadata


class _Quitter:
    """exit() / quit() that raise SystemExit like sys.exit (site's also closes sys.stdin)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "Use {}() to raise SystemExit (the context stays alive)".format(self.name)

    def __call__(self, code=None):
        raise SystemExit(code)


_SKIP_FRAME_DIRS = None


def _is_plumbing_frame(filename):
    global _SKIP_FRAME_DIRS
    if _SKIP_FRAME_DIRS is None:
        import asyncio
        import selectors

        _SKIP_FRAME_DIRS = (os.path.dirname(asyncio.__file__) + os.sep, selectors.__file__)
    return filename == _DRIVER_FILE or filename.startswith(_SKIP_FRAME_DIRS[0]) or filename == _SKIP_FRAME_DIRS[1]


def cut_driver_tail(tb):
    """Drop the driver's frames below the user's (the SIGINT handler, display(), exit()):
    the traceback then ends at the user's line. Traceback objects are mutable since 3.7."""
    prev = None
    while tb is not None:
        in_driver = tb.tb_frame.f_code.co_filename == _DRIVER_FILE
        if in_driver and prev is not None and prev.tb_frame.f_code.co_filename != _DRIVER_FILE:
            try:
                prev.tb_next = None
            except (AttributeError, TypeError):
                pass
            return
        prev, tb = tb, tb.tb_next


def format_user_traceback(exc):
    """Python's traceback text without the driver's (and asyncio's) frames on top."""
    tb = exc.__traceback__
    cut_driver_tail(tb)
    while tb is not None and _is_plumbing_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    if tb is None and not isinstance(exc, SyntaxError):
        lines = [line for line in lines if not line.startswith("Traceback (most recent call last)")]
    return "".join(lines)


def _ends_with_semicolon(code, node):
    # IPython's convention: `value;` as the last line computes but does not display.
    end_line = getattr(node, "end_lineno", None)
    if end_line is None:
        return False
    lines = code.splitlines()
    rest = lines[end_line - 1].encode("utf-8")[node.end_col_offset:].decode("utf-8", "replace") if end_line <= len(lines) else ""
    rest = rest.split("#", 1)[0].strip() + "".join(l.split("#", 1)[0].strip() for l in lines[end_line:])
    return rest.startswith(";")


class PlainBackend:
    """Cells without IPython: code-module semantics plus last-expression display,
    display(), top-level await and figure capture."""

    def __init__(self, driver):
        import __future__

        self.driver = driver
        self.execution_count = 0
        self.future_flags = 0
        self._future = __future__
        self.loop = None
        self._new_loop()
        self.figures = Figures(driver)
        sys.meta_path.insert(0, MatplotlibFinder(self.figures, None))
        main = types.ModuleType("__main__")
        main.__dict__.update({"__builtins__": builtins, "__doc__": None, "__spec__": None, "__loader__": None})
        sys.modules["__main__"] = main
        self.ns = main.__dict__
        builtins.display = self.display
        builtins.exit, builtins.quit = _Quitter("exit"), _Quitter("quit")

    def display(self, *objs, raw=False, metadata=None, include=None, exclude=None, **kwargs):
        """display(obj, ...) emits each object as a result (isMainResult false).
        display(bundle, raw=True) emits a ready mime bundle {mime: data}."""
        for obj in objs:
            if raw:
                data, md = (obj if isinstance(obj, dict) else {"text/plain": repr(obj)}), {}
            else:
                data, md = format_bundle(obj, self.figures, include, exclude)
            if metadata:
                md = dict(md, **metadata)
            self.driver.send_result(data, md, False)

    def compile(self, source, filename, mode):
        flags = self.future_flags | getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        code = compile(source, filename, mode, flags=flags, dont_inherit=True)
        for name in self._future.all_feature_names:  # `from __future__` sticks, as in the REPL
            feature = getattr(self._future, name)
            if code.co_flags & feature.compiler_flag:
                self.future_flags |= feature.compiler_flag
        return code

    def evaluate(self, code):
        import inspect

        if code.co_flags & inspect.CO_COROUTINE:  # top-level await in this part
            return self.run_coroutine(eval(code, self.ns))
        return eval(code, self.ns)

    def _new_loop(self):
        import asyncio

        # One loop for the context, also current for sync cells: tasks outlive their cell.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def run_coroutine(self, coro):
        import asyncio

        if self.loop.is_closed():
            self._new_loop()
        task = self.loop.create_task(coro)
        try:
            return self.loop.run_until_complete(task)
        except KeyboardInterrupt:
            # Abandon what the cell awaits: cancel it and let it unwind for at most 1 s.
            if not task.done():
                task.cancel()
                try:
                    self.loop.run_until_complete(asyncio.wait([task], timeout=1.0))
                except BaseException:
                    pass
            raise

    def run(self, code):
        driver = self.driver
        if not code.strip():
            return None, self.execution_count
        self.execution_count += 1
        count = self.execution_count
        filename = "<cell-{}>".format(count)
        # Source in linecache: tracebacks and inspect.getsource() show cell lines.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        self.figures.begin_cell()
        error = None
        try:
            driver.cell_active = True
            try:
                tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST | self.future_flags, dont_inherit=True)
                last = None
                if tree.body and isinstance(tree.body[-1], ast.Expr) and not _ends_with_semicolon(code, tree.body[-1]):
                    last = ast.Expression(tree.body.pop().value)
                body = self.compile(tree, filename, "exec")
                last_code = self.compile(last, filename, "eval") if last is not None else None
                self.evaluate(body)
                if last_code is not None:
                    value = self.evaluate(last_code)
                    if value is not None:
                        self.ns["_"] = value
                        data, md = format_bundle(value, self.figures)
                        driver.send_result(data, md, True)
                self.figures.flush()
            finally:
                driver.cell_active = False
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the context lives on
            driver.cell_active = False
            sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
            error = {
                "name": type(exc).__name__,
                "value": str(exc),
                "traceback": format_user_traceback(exc),
                "_interrupt": isinstance(exc, KeyboardInterrupt),
            }
            try:
                self.figures.flush()  # figures drawn before the error still show, as inline does
            except BaseException:
                pass
        return error, count


class IPythonBackend:
    """Cells through IPython's InteractiveShell: magics, autoawait, rich display, IPython tracebacks."""

    def __init__(self, driver):
        from IPython.core.displayhook import DisplayHook
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets import Type
        from traitlets.config import Config

        backend = self
        self.driver = driver
        self.errors = []
        self.awaiting_interrupted = False

        class _Hook(DisplayHook):
            # The value of the last expression: a result event, never "Out[n]:" on stdout.
            def write_output_prompt(self):
                pass

            def write_format_data(self, format_dict, md_dict=None):
                driver.send_result(format_dict, md_dict, True)

            def finish_displayhook(self):
                pass

        class _Publisher(DisplayPublisher):
            def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
                driver.send_result(data, metadata, False)

            def clear_output(self, wait=False):
                pass

        class SandboxShell(InteractiveShell):
            displayhook_class = Type(_Hook)
            display_pub_class = Type(_Publisher)

            def _showtraceback(self, etype, evalue, stb):
                # Every traceback IPython would print is kept for the cell's error event.
                text = _ANSI_RE.sub("", self.InteractiveTB.stb2text(stb))
                if backend.awaiting_interrupted and isinstance(evalue, KeyboardInterrupt):
                    # Raised in the event loop, not in user code: its frames are the
                    # driver's and asyncio's, which tell the user nothing.
                    text = "KeyboardInterrupt: interrupted while awaiting; the awaited task was cancelled\n"
                backend.errors.append({
                    "name": getattr(etype, "__name__", str(etype)),
                    "value": str(evalue),
                    "traceback": text,
                    "_interrupt": isinstance(evalue, KeyboardInterrupt) or etype is KeyboardInterrupt,
                })

            def showtraceback(self, exc_tuple=None, *args, **kwargs):
                exc = exc_tuple if exc_tuple is not None else sys.exc_info()
                if exc and exc[2] is not None:
                    cut_driver_tail(exc[2])
                return super().showtraceback(exc_tuple, *args, **kwargs)

            def ask_exit(self):
                # exit / quit behave like sys.exit: a SystemExit error, the context stays.
                raise SystemExit(0)

        config = Config()
        config.HistoryManager.hist_file = ":memory:"  # several contexts, read-only homes
        config.InteractiveShell.colors = "NoColor"
        config.InteractiveShell.autoawait = True
        try:
            self.shell = SandboxShell.instance(config=config)
        except Exception:
            del config.InteractiveShell.colors  # a future IPython that renamed the colour names
            self.shell = SandboxShell.instance(config=config)
        try:
            self.shell.InteractiveTB.set_colors("NoColor")
        except Exception:
            pass
        self.shell.loop_runner = self.loop_runner
        # Sync cells that schedule tasks (asyncio.ensure_future) must use the loop that
        # awaiting cells run, or the task is "attached to a different loop".
        self.loop = self._asyncio_loop()
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.figures = Figures(driver)
        inline = None
        try:
            import importlib.util

            if importlib.util.find_spec("matplotlib_inline") is not None:
                inline = "module://matplotlib_inline.backend_inline"
        except Exception:
            inline = None
        self.inline = inline
        sys.meta_path.insert(0, MatplotlibFinder(self.figures, inline))
        if inline is None:
            # Figure objects as values still render, through our own capture.
            formatter = self.shell.display_formatter.formatters["image/png"]
            formatter.for_type_by_name("matplotlib.figure", "Figure", self._figure_png)

    def _figure_png(self, fig):
        self.figures.mark_shown(fig)
        return figure_png(fig)

    @property
    def execution_count(self):
        return self.shell.execution_count - 1

    @staticmethod
    def _asyncio_loop():
        import asyncio

        try:
            from IPython.core.async_helpers import get_asyncio_loop

            return get_asyncio_loop()
        except ImportError:  # IPython 7
            return asyncio.new_event_loop()

    def loop_runner(self, coro):
        import asyncio

        loop = self.loop
        if loop.is_closed():
            self.loop = loop = self._asyncio_loop()
            asyncio.set_event_loop(loop)
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except KeyboardInterrupt:
            # The cell awaited something: cancel it so it does not resume in a later cell.
            self.awaiting_interrupted = True
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(asyncio.wait([task], timeout=1.0))
                except BaseException:
                    pass
            raise

    def run(self, code):
        driver = self.driver
        shell = self.shell
        self.errors = []
        self.awaiting_interrupted = False
        before = shell.execution_count
        self.figures.begin_cell()
        try:
            driver.cell_active = True
            try:
                shell.run_cell(code, store_history=True, silent=False)
                if self.inline is None:
                    self.figures.flush()
            finally:
                driver.cell_active = False
        except KeyboardInterrupt:
            self.errors.append({"name": "KeyboardInterrupt", "value": "", "traceback": "KeyboardInterrupt\n", "_interrupt": True})
        if code.strip():
            if shell.execution_count == before:
                shell.execution_count += 1  # IPython was interrupted before counting the cell
            count = before
        else:
            count = before - 1
        error = None
        if self.errors:
            interrupts = [e for e in self.errors if e["_interrupt"]]
            error = interrupts[-1] if interrupts else self.errors[0]
        return error, count


def _want_ipython():
    choice = os.environ.get("SANDBOXKIT_PYTHON_IPYTHON", "").strip().lower()
    if choice in ("0", "false", "no", "off"):
        return False
    try:
        import importlib.util

        return importlib.util.find_spec("IPython") is not None
    except Exception:
        return False


def main():
    driver = Driver()
    # First thing: an early SIGINT must not kill a starting context.
    signal.signal(signal.SIGINT, driver.on_sigint)
    try:
        os.fstat(REQUEST_FD)
        os.fstat(EVENT_FD)
    except OSError:
        sys.stderr.write("python_driver.py: fd 3 (requests) and fd 4 (events) must be open; see README.md\n")
        return 2
    # Children of user code must not inherit the protocol pipes.
    os.set_inheritable(REQUEST_FD, False)
    os.set_inheritable(EVENT_FD, False)
    # Blocking reads/writes on our ends (a supervisor may hand them over non-blocking).
    for fd in (REQUEST_FD, EVENT_FD):
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass
    # Like the REPL: imports resolve from the working directory, not from the driver's folder.
    if sys.path and os.path.abspath(sys.path[0] or ".") == _DRIVER_DIR:
        sys.path[0] = ""
    sys.argv = [""]
    sys.modules.setdefault("_sandboxkit_driver", sys.modules[__name__])
    ipython_version = None
    backend = None
    if _want_ipython():
        try:
            backend = IPythonBackend(driver)
            import IPython

            ipython_version = IPython.__version__
        except Exception:
            sys.stderr.write("[sandboxkit] IPython could not start, using plain Python:\n")
            traceback.print_exc()
            backend = None
    if backend is None:
        backend = PlainBackend(driver)
    driver.backend = backend
    ready = {
        "type": "ready",
        "language": "python",
        "version": platform.python_version(),
        "ipython": ipython_version is not None,
        "protocol": PROTOCOL_VERSION,
        "pid": os.getpid(),
    }
    if ipython_version:
        ready["ipythonVersion"] = ipython_version
    driver.send(ready)
    driver.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
