"""The worker process of the python tool: runs step code sent by the pool, one call at a time.

`plugins.python_zygote` forks it from a clean template process and calls `serve`. Every
message on the socket is a frame: an 8-byte little-endian length, then the payload. Requests
are msgpack (`Request`), replies JSON (`Reply`): JSON because a result must be JSON-like, so
the conversion happens here, where the result's own classes live. This module imports only
the standard library and msgspec, so that a worker starts fast.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import functools
import importlib
import inspect
import io
import linecache
import os
import signal
import sys
import traceback
import types
from typing import Any, NamedTuple

import msgspec

FILENAME = "<step code>"
MAX_OUTPUT = 64 * 1024  # bytes of stdout (and of stderr) kept per call
HEADER = 8  # bytes of the little-endian payload length before each frame

_MODULE = "__noetl_step__"  # not "__main__": a script's `if __name__ == "__main__"` must not run
_BODY = "__step__"  # the function a top-level `return` turns the code into
_PR_SET_PDEATHSIG = 1


class Origin(msgspec.Struct, array_like=True):
    """Where the code's lines sit in their file (`noetl.messages.CodeLines`, whose wire
    form this is): line n is `first + n - 1`, or `lines[n - 1]` (the last past its end)."""

    file: str
    first: int = 1
    lines: list[int] = []

    def line_of(self, n: int) -> int:
        """The file line of code line `n`."""
        if not self.lines:
            return self.first + n - 1
        return self.lines[min(max(n, 1), len(self.lines)) - 1]


class Request(msgspec.Struct, array_like=True):
    """One call: the code, its args (also bound as `input_data`), `libs` to import, the
    execution's `context` (workload, vars, step results, execution_id), bound read-only,
    the code's `origin`, which errors name instead of FILENAME's lines, and `max_result`,
    the bytes its result's JSON may take (0: no bound)."""

    code: str
    args: dict[str, Any]
    libs: dict[str, str]
    context: dict[str, Any] = {}
    origin: Origin | None = None
    max_result: int = 0


class Reply(msgspec.Struct, omit_defaults=True):
    """The outcome of one call; `too_large`, or `exception`, `message` and `traceback`, are
    set when not `ok`, and `where` (`FILE:LINE` of the innermost line of the code that
    failed) when the request had an origin."""

    ok: bool
    result: Any = None
    too_large: int = 0  # not `ok`: the result's JSON took this many bytes, over `max_result`
    exception: str = ""
    message: str = ""
    traceback: str = ""
    where: str = ""
    stdout: str = ""
    stderr: str = ""


def frame(payload: bytes) -> bytes:
    """`payload` with its length header, ready to write to the socket."""
    return len(payload).to_bytes(HEADER, "little") + payload


def serve(fd: int, parent: int) -> None:
    """Answer requests on the socket `fd` until the pool closes it (then exit quietly)."""
    exit_with_parent(parent)
    os.set_inheritable(fd, False)  # subprocesses of user code must not hold the channel open
    while True:
        header = _read(fd, HEADER)
        if len(header) < HEADER:
            return
        request = _DECODER.decode(_read(fd, int.from_bytes(header, "little")))
        _write_all(fd, frame(_encode(_ENCODER, run(request), request.max_result)))


def run(request: Request) -> Reply:
    """Run one request's code with stdout and stderr captured; never raises."""
    stdout, stderr = _Capture(), _Capture()
    cwd = os.getcwd()
    sys.stdout, sys.stderr = stdout, stderr
    try:
        reply = Reply(ok=True, result=_execute(request))
    except BaseException as exc:  # SystemExit included: whatever the code raises fails the step
        reply = _failure(exc, request.origin)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        sys.modules.pop(_MODULE, None)
        with contextlib.suppress(OSError):  # gone, if the code deleted it
            os.chdir(cwd)  # relative paths in the next call mean what they meant here
    reply.stdout, reply.stderr = stdout.text(), stderr.text()
    return reply


class _Program(NamedTuple):
    code: types.CodeType
    wrapped: bool  # the code has a top-level `return` and runs as the body of `_BODY`
    lines: list[str]


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> _Program:
    # Cached: loops and hot steps send the same code again and again.
    lines = source.splitlines(keepends=True)
    try:
        return _Program(compile(source, FILENAME, "exec"), False, lines)
    except SyntaxError as exc:
        if exc.msg != "'return' outside function":
            raise
    # Wrap the parsed statements, not the text, so line numbers stay those of the source.
    tree = ast.parse(source, FILENAME)
    module = ast.parse(f"def {_BODY}():\n    pass\n", FILENAME)
    body = module.body[0]
    assert isinstance(body, ast.FunctionDef)
    body.body = tree.body
    return _Program(compile(module, FILENAME, "exec"), True, lines)


class ResultList(list[Any]):
    """A list handed to the code (an arg, or a step result in `context`) that also answers
    NoETL's loop result shape: `value['results']` is the list, `value['stats']` its
    `{total, success, failed}` (a failed item is kept as `{error: ...}`)."""

    def __getitem__(self, key: Any) -> Any:
        if key == "results":
            return list(self)
        if key == "stats":
            failed = sum(1 for item in self if isinstance(item, dict) and item.keys() == {"error"})
            return {"total": len(self), "success": len(self) - failed, "failed": failed}
        if key == "command_0":  # NoETL's shape of one SQL statement's rows
            first = self[0] if self else None
            columns = list(first) if isinstance(first, dict) else []
            rows = list(self)
            return {"status": "success", "rows": rows, "row_count": len(rows), "columns": columns}
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        """`value.get('results')`, as code written for a dict does."""
        return self[key] if key in ("results", "stats", "command_0") else default


class Statements(dict[str, Any]):
    """NoETL's mapping of SQL statements (`command_<i>`), which also answers `value[i]`
    with the rows of the last statement that returned rows (this runtime's list shape)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            return self.rows()[key]
        return super().__getitem__(key)

    def rows(self) -> list[Any]:
        """The rows of the last statement that returned rows ([] when none did)."""
        keys = [k for k, v in self.items() if isinstance(v, dict) and "rows" in v]
        if not keys:
            return []
        last = max(keys, key=lambda k: int(k.split("_", 1)[1]))
        rows: list[Any] = super().__getitem__(last)["rows"]
        return rows


def _is_statements(value: Any) -> bool:
    # As noetl.sql_shape.is_statements (this module imports nothing of the runtime).
    return (
        type(value) is dict
        and "command_0" in value
        and all(isinstance(k, str) and k.startswith("command_") and k[8:].isdigit() for k in value)
    )


def _noetl_shape(value: Any) -> Any:
    if type(value) is list:
        return ResultList(value)
    return Statements(value) if _is_statements(value) else value


def _noetl_shapes(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _noetl_shape(v) for k, v in values.items()}


def _execute(request: Request) -> Any:
    program = _compile(request.code)
    # A fresh module per call: no state leaks between calls through globals.
    module = types.ModuleType(_MODULE)
    namespace = module.__dict__
    args = _noetl_shapes(request.args)
    namespace["input_data"] = args
    # NoETL's `context`: read-only at the top, and a copy, so nothing reaches the execution.
    namespace["context"] = types.MappingProxyType(_noetl_shapes(request.context))
    namespace.update(args)
    for alias, name in request.libs.items():
        namespace[alias] = importlib.import_module(name)
    # Registered so tracebacks, `inspect.getsource` and dataclasses see the code as a module.
    linecache.cache[FILENAME] = (len(request.code), None, program.lines, FILENAME)
    sys.modules[_MODULE] = module
    exec(program.code, namespace)
    if program.wrapped:
        return namespace[_BODY]()
    main = namespace.get("main")
    if inspect.isfunction(main) and main.__module__ == _MODULE:  # defined by the code itself
        value = _call_main(main, args, namespace["context"])
        if inspect.iscoroutine(value):
            import asyncio  # only async main() needs it; keeps worker start-up short

            value = asyncio.run(value)
        return value
    return namespace.get("result")


def _call_main(main: types.FunctionType, args: dict[str, Any], context: Any) -> Any:
    """Call `main` with the args its parameters name (`input_data` and `context` too);
    `**kwargs` takes all."""
    offered = {"input_data": args, "context": context, **args}
    keywords: dict[str, Any] = {}
    missing: list[str] = []
    takes_all = False
    for param in inspect.signature(main).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            takes_all = True
        elif param.kind is param.VAR_POSITIONAL:
            continue
        elif param.name in offered:
            keywords[param.name] = offered[param.name]
        elif param.default is param.empty:
            missing.append(param.name)
    if missing:
        names = ", ".join(sorted(args)) or "none"
        raise TypeError(
            f"main() needs {', '.join(missing)}, which the args do not give (args: {names})"
        )
    if takes_all:
        keywords = {**args, **keywords}
    return main(**keywords)


def _failure(exc: BaseException, origin: Origin | None) -> Reply:
    # Start the traceback at the first frame of the step's code: the worker's frames above it
    # say nothing to the playbook's author.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the failure itself
        message = f"<{type(exc).__name__} with an unprintable message>"
    summary = traceback.TracebackException(type(exc), exc, tb)
    where = "" if origin is None else _relocate(summary, origin, set())
    formatted = "".join(summary.format())
    return Reply(
        ok=False, exception=type(exc).__name__, message=message, traceback=formatted, where=where
    )


def _relocate(summary: traceback.TracebackException, origin: Origin, seen: set[int]) -> str:
    """Name the file's lines in `summary`'s frames of the code (and in those of the
    exceptions it chains), keeping the code's own line as the source shown; the
    `FILE:LINE` of the innermost such frame of `summary` itself."""
    seen.add(id(summary))
    where = ""
    for frame_ in summary.stack:
        if frame_.filename != FILENAME or frame_.lineno is None:
            continue
        _ = frame_.line  # the code's line, read from linecache while FILENAME maps to it
        line = origin.line_of(frame_.lineno)
        if frame_.end_lineno is not None:
            frame_.end_lineno = line + frame_.end_lineno - frame_.lineno
        frame_.filename, frame_.lineno = origin.file, line
        where = f"{origin.file}:{line}"
    syntax = summary.exc_type is not None and issubclass(summary.exc_type, SyntaxError)
    if syntax and summary.filename == FILENAME and summary.lineno is not None:
        summary.filename = origin.file
        summary.lineno = str(origin.line_of(int(summary.lineno)))
        where = where or f"{origin.file}:{summary.lineno}"
    for chained in (summary.__cause__, summary.__context__):
        if chained is not None and id(chained) not in seen:
            _relocate(chained, origin, seen)
    return where


def _encode(encoder: msgspec.json.Encoder, reply: Reply, max_result: int) -> bytes:
    """The reply's JSON; a result over `max_result` bytes is replaced by its size, so the
    runner never receives it (it is encoded once: the result's own JSON goes in raw)."""
    try:
        if reply.ok:
            data = encoder.encode(reply.result)
            if max_result and len(data) > max_result:
                reply = Reply(
                    ok=False, too_large=len(data), stdout=reply.stdout, stderr=reply.stderr
                )
            else:
                reply.result = msgspec.Raw(data)
        return encoder.encode(reply)
    except Exception as exc:  # a result JSON cannot carry fails the step, not the worker
        failed = Reply(
            ok=False,
            exception=type(exc).__name__,
            message=f"the result cannot be converted to JSON: {exc}",
            stdout=reply.stdout,
            stderr=reply.stderr,
        )
        return encoder.encode(failed)


def _jsonable(value: Any) -> Any:
    """What JSON carries for a value msgspec has no form for: numpy-like data as lists, else str."""
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, pandas Series
    if callable(tolist):
        return tolist()
    return str(value)


class _Capture(io.TextIOBase):
    """A stand-in for stdout/stderr that keeps the first MAX_OUTPUT bytes written to it."""

    encoding = "utf-8"  # libraries read it to decide what they may print

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._kept = 0  # characters kept; at most MAX_OUTPUT, which bounds the bytes kept too
        self._written = 0

    def writable(self) -> bool:
        """Always: this is an output stream."""
        return True

    def write(self, text: str) -> int:
        """Keep `text`, or the part of it that still fits."""
        self._written += len(text)
        room = MAX_OUTPUT - self._kept
        if room > 0:
            kept = text[:room]
            self._parts.append(kept)
            self._kept += len(kept)
        return len(text)

    def text(self) -> str:
        """What was written, cut at MAX_OUTPUT bytes of UTF-8 with a note saying so."""
        text = "".join(self._parts)
        data = text.encode("utf-8", "replace")
        if self._written == self._kept and len(data) <= MAX_OUTPUT:
            return text
        kept = data[:MAX_OUTPUT].decode("utf-8", "ignore")
        return f"{kept}\n[output truncated: {self._written} characters written, 64 KiB kept]"


def _read(fd: int, size: int) -> bytes:
    """`size` bytes from `fd`, fewer only at its end. Not a buffered file: building one
    writes to more of the template's pages (each a page copy in a new worker)."""
    data = os.read(fd, size)
    while data and len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def exit_with_parent(parent: int) -> None:
    """Die with `parent`: an orphaned worker stuck in a loop would run forever. The kernel
    kills this process when its parent dies (Linux); if the parent is already gone, exit."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def prctl(option: int, value: int) -> None:
    """Linux's `prctl(option, value)`; nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.prctl(option, value)


# Built once, in the template: a worker forked from it starts with them instead of building
# its own (which wrote to some 170 of the template's pages per worker, each a page copy).
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None
_DECODER = msgspec.msgpack.Decoder(Request)
_ENCODER = msgspec.json.Encoder(enc_hook=_jsonable, decimal_format="number")
