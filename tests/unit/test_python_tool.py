"""The `python` tool: code semantics, output, errors, and the worker process pool."""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import pytest_asyncio

from noetl.config import Settings
from noetl.errors import ResultTooLarge, ToolError, ToolTimeout
from plugins import python_pool
from plugins.base import ToolContext
from plugins.python import PythonTool
from plugins.python_worker import MAX_OUTPUT, Request


def make_ctx(timeout: float | None = 10.0) -> ToolContext:
    return ToolContext(execution_id=1, command_id="cmd-1", step="step", timeout=timeout)


async def run(tool: PythonTool, code: str, ctx: ToolContext | None = None, **spec: Any) -> Any:
    return await tool.run(ctx or make_ctx(), {"code": code, **spec})


def worker_pids() -> set[int]:
    """Pids of this process's live python workers (children of the pools' templates)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if (
                child.status() != psutil.STATUS_ZOMBIE
                and child.ppid() != os.getpid()  # the template itself
                and "python_zygote" in " ".join(child.cmdline())
            ):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def template_pids() -> set[int]:
    """Pids of this process's live python worker templates."""
    return {
        child.pid
        for child in psutil.Process().children()
        if running(child.pid) and "python_zygote" in " ".join(child.cmdline())
    }


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a killed orphan may linger as a zombie until reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest_asyncio.fixture(scope="module")
async def tool() -> AsyncIterator[PythonTool]:
    tool = PythonTool(workers=2)
    yield tool
    await tool.aclose()


# --- what the code means -------------------------------------------------------------------


async def test_result_variable_and_args(tool: PythonTool) -> None:
    code = 'result = {"double": n * 2, "name": user["name"]}'
    assert await run(tool, code, args={"n": 21, "user": {"name": "ann"}}) == {
        "double": 42,
        "name": "ann",
    }


async def test_no_result_is_none(tool: PythonTool) -> None:
    assert await run(tool, "x = 1") is None


async def test_input_data_holds_all_args(tool: PythonTool) -> None:
    assert await run(tool, "result = sorted(input_data.items())", args={"b": 2, "a": 1}) == [
        ["a", 1],
        ["b", 2],
    ]


async def test_main_gets_matching_args(tool: PythonTool) -> None:
    code = "def main(a, input_data, c=5):\n    return [a, c, sorted(input_data)]"
    assert await run(tool, code, args={"a": 1, "b": 2}) == [1, 5, ["a", "b"]]


async def test_main_kwargs_takes_all_args(tool: PythonTool) -> None:
    code = "def main(a, **kwargs):\n    return {'a': a, 'rest': kwargs}"
    assert await run(tool, code, args={"a": 1, "b": 2}) == {"a": 1, "rest": {"b": 2}}


async def test_main_missing_arg_is_named(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match=r"main\(\) needs b.*args: a"):
        await run(tool, "def main(a, b):\n    return a", args={"a": 1})


async def test_async_main(tool: PythonTool) -> None:
    code = "import asyncio\nasync def main(n):\n    await asyncio.sleep(0.01)\n    return n + 1"
    assert await run(tool, code, args={"n": 1}) == 2


async def test_main_from_an_arg_is_not_called(tool: PythonTool) -> None:
    assert await run(tool, "result = main", args={"main": "not a function"}) == "not a function"


async def test_top_level_return(tool: PythonTool) -> None:
    code = "total = sum(values)\nif total > 3:\n    return {'total': total}\nreturn None"
    assert await run(tool, code, args={"values": [1, 2, 3]}) == {"total": 6}


async def test_libs_are_imported_under_their_alias(tool: PythonTool) -> None:
    code = "result = [j.dumps({'a': 1}), osp.join('a', 'b')]"
    assert await run(tool, code, libs={"j": "json", "osp": "os.path"}) == ['{"a": 1}', "a/b"]


async def test_unknown_lib_fails(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="ModuleNotFoundError: No module named 'no_such_lib'"):
        await run(tool, "result = 1", libs={"x": "no_such_lib"})


async def test_code_b64_wins_over_code(tool: PythonTool) -> None:
    encoded = base64.b64encode(b"result = 'from b64'").decode()
    assert await run(tool, "result = 'plain'", code_b64=encoded) == "from b64"


async def test_each_call_gets_fresh_globals(tool: PythonTool) -> None:
    for _ in range(4):  # more calls than workers: every worker sees the first call's name
        await run(tool, "leaked = 1")
    assert await run(tool, "result = 'leaked' in globals()") is False


async def test_working_directory_and_argv_do_not_leak(tool: PythonTool) -> None:
    start = await run(tool, "import os\nresult = os.getcwd()")
    # The runner's own directory, or the worker's private one when it runs as another user.
    assert start == (os.getcwd() if os.geteuid() != 0 else start)
    for _ in range(4):  # more calls than workers
        await run(tool, "import os\nos.chdir('/')")
    cwd, argv = await run(tool, "import os, sys\nresult = [os.getcwd(), sys.argv]")
    assert (cwd, argv) == (start, [""])


async def test_large_args_and_results_cross_the_boundary(tool: PythonTool) -> None:
    rows = [{"id": i, "name": f"user {i}", "score": i / 3} for i in range(100_000)]
    result = await run(
        tool, "result = [dict(r, double=r['id'] * 2) for r in rows]", args={"rows": rows}
    )
    assert len(result) == len(rows)
    assert result[-1] == {**rows[-1], "double": 199_998}


async def test_status_error_fails_the_step(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match=r"^quota exceeded$") as info:
        await run(tool, "result = {'status': 'error', 'error': 'quota exceeded'}")
    assert info.value.error_type == "python"
    assert info.value.details["result"]["status"] == "error"
    with pytest.raises(ToolError, match=r"^bad input$"):
        await run(tool, "return {'status': 'error', 'message': 'bad input'}")


async def test_invalid_spec(tool: PythonTool) -> None:
    ctx = make_ctx()
    with pytest.raises(ToolError, match="`code`"):
        await tool.run(ctx, {"args": {}})
    with pytest.raises(ToolError, match="libs"):
        await tool.run(ctx, {"code": "", "libs": ["json"]})
    with pytest.raises(ToolError, match="code_b64"):
        await tool.run(ctx, {"code_b64": "%%%"})
    with pytest.raises(ToolError, match="args"):
        await tool.run(ctx, {"code": "", "args": {1: "not a name"}})
    with pytest.raises(ToolError, match="args cannot be passed"):
        await tool.run(ctx, {"code": "", "args": {"x": object()}})


async def test_worker_that_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    tool = PythonTool(workers=1)
    with pytest.raises(ToolError, match="could not start the python worker template process"):
        await run(tool, "result = 1")
    await tool.aclose()


# --- results are JSON-like -----------------------------------------------------------------


async def test_result_is_converted_to_json_like_values(tool: PythonTool) -> None:
    code = """
import datetime, decimal, uuid, dataclasses

@dataclasses.dataclass
class Point:
    x: int
    y: int

class Vector:  # stands in for numpy arrays and scalars
    def tolist(self):
        return [1, 2]

class Opaque:
    def __str__(self):
        return "opaque!"

result = {
    "when": datetime.datetime(2024, 5, 1, 12, 30),
    "day": datetime.date(2024, 5, 1),
    "price": decimal.Decimal("12.50"),
    "tags": {"b"},
    "id": uuid.UUID(int=1),
    "point": Point(1, 2),
    "pair": (1, 2),
    "vector": Vector(),
    "opaque": Opaque(),
    7: "int key",
    "big": 2 ** 70,
}
"""
    assert await run(tool, code) == {
        "when": "2024-05-01T12:30:00",
        "day": "2024-05-01",
        "price": 12.5,
        "tags": ["b"],
        "id": "00000000-0000-0000-0000-000000000001",
        "point": {"x": 1, "y": 2},
        "pair": [1, 2],
        "vector": [1, 2],
        "opaque": "opaque!",
        "7": "int key",
        "big": 2**70,
    }


async def test_unconvertible_result_fails_clearly(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="the result cannot be converted to JSON"):
        await run(tool, "result = []\nresult.append(result)")


# --- printed output ------------------------------------------------------------------------


async def test_output_is_recorded() -> None:
    tool = PythonTool(workers=1)
    try:
        ctx = make_ctx()
        await run(tool, "import sys\nprint('hello')\nprint('oops', file=sys.stderr)", ctx)
        assert ctx.events == [{"kind": "output", "stdout": "hello\n", "stderr": "oops\n"}]
        quiet = make_ctx()
        await run(tool, "result = 1", quiet)
        assert quiet.events == []
    finally:
        await tool.aclose()


async def test_output_is_truncated_at_64_kib(tool: PythonTool) -> None:
    ctx = make_ctx()
    await run(tool, "for _ in range(3000):\n    print('é' * 99)", ctx)
    stdout = ctx.events[0]["stdout"]
    kept, note = stdout.rsplit("\n[output truncated", 1)
    assert len(kept.encode()) <= MAX_OUTPUT
    assert len(kept.encode()) > MAX_OUTPUT - 4
    assert "300000 characters written" in note


async def test_output_is_recorded_when_the_code_fails(tool: PythonTool) -> None:
    ctx = make_ctx()
    with pytest.raises(ToolError):
        await run(tool, "print('before')\n1 / 0", ctx)
    assert ctx.events[0]["stdout"] == "before\n"


# --- errors --------------------------------------------------------------------------------


async def test_exception_has_type_message_and_traceback(tool: PythonTool) -> None:
    code = "def helper(x):\n    return x['missing']\n\n\nresult = helper({})\n"
    with pytest.raises(ToolError) as info:
        await run(tool, code)
    error = info.value
    assert str(error) == "KeyError: 'missing'"
    assert error.error_type == "python"
    assert error.details["exception"] == "KeyError"
    traceback = error.details["traceback"]
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert 'File "<step code>", line 5, in <module>\n    result = helper({})' in traceback
    assert "File \"<step code>\", line 2, in helper\n    return x['missing']" in traceback
    assert "python_worker" not in traceback


async def test_traceback_lines_inside_top_level_return_code(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="ValueError: late") as info:
        await run(tool, "x = 1\n\nif x:\n    raise ValueError('late')\nreturn x")
    assert 'File "<step code>", line 4, in __step__' in info.value.details["traceback"]


async def test_traceback_lines_inside_main(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="ZeroDivisionError") as info:
        await run(tool, "def main():\n    return 1 / 0")
    assert 'File "<step code>", line 2, in main' in info.value.details["traceback"]


async def test_syntax_error_names_the_line(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match=r"SyntaxError: .*line 2") as info:
        await run(tool, "x = 1\ny = (\n")
    assert info.value.details["exception"] == "SyntaxError"


async def test_sys_exit_fails_the_step_but_not_the_worker(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="SystemExit: 4"):
        await run(tool, "import sys\nsys.exit(4)")
    assert await run(tool, "result = 'still fine'") == "still fine"


# --- the worker processes ------------------------------------------------------------------


async def test_timeout_kills_a_busy_worker_and_the_pool_recovers() -> None:
    tool = PythonTool(workers=1)
    try:
        first = await run(tool, "import os\nresult = os.getpid()")
        started = time.monotonic()
        with pytest.raises(ToolTimeout, match=r"timeout of 0\.5 s") as info:
            await run(tool, "while True:\n    pass", make_ctx(timeout=0.5))
        assert info.value.error_type == "timeout"
        assert time.monotonic() - started < 2.0
        assert not psutil.pid_exists(first)  # killed and reaped
        second = await run(tool, "import os\nresult = os.getpid()")
        assert second != first
    finally:
        await tool.aclose()


async def test_timeout_also_kills_processes_the_code_started(tmp_path: Path) -> None:
    before = worker_pids()
    tool = PythonTool(workers=1)
    shared = Path(tempfile.mkdtemp())  # writable by the unprivileged account code may run as
    os.chmod(shared, 0o777)
    pid_file = shared / "child.pid"
    try:
        code = (
            "import pathlib, subprocess\n"
            "child = subprocess.Popen(['sleep', '60'])\n"
            "pathlib.Path(pid_file).write_text(str(child.pid))\n"
            "child.wait()"
        )
        with pytest.raises(ToolTimeout):
            await run(tool, code, make_ctx(timeout=1.0), args={"pid_file": str(pid_file)})
        child = int(pid_file.read_text())
        await asyncio.sleep(0.2)
        assert not running(child)
        assert worker_pids() == before
    finally:
        await tool.aclose()


async def test_worker_exit_is_a_clear_error_and_the_pool_recovers(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="worker process died with exit code 3") as info:
        await run(tool, "import os\nos._exit(3)")
    assert info.value.details["exit_code"] == 3
    assert await run(tool, "result = 'recovered'") == "recovered"


async def test_worker_crash_names_the_signal(tool: PythonTool) -> None:
    with pytest.raises(ToolError, match="died with signal SIGSEGV"):
        await run(tool, "import ctypes\nctypes.string_at(0)")
    assert await run(tool, "result = 'recovered'") == "recovered"


async def test_idle_worker_killed_from_outside_is_replaced() -> None:
    tool = PythonTool(workers=1)
    try:
        pid = await run(tool, "import os\nresult = os.getpid()")
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        assert await run(tool, "import os\nresult = os.getpid()") != pid
    finally:
        await tool.aclose()


async def test_cancellation_kills_the_worker() -> None:
    tool = PythonTool(workers=1)
    try:
        pid = await run(tool, "import os\nresult = os.getpid()")
        ctx = make_ctx(timeout=None)
        asyncio.get_running_loop().call_later(0.2, ctx.cancelled.set)
        started = time.monotonic()
        with pytest.raises(ToolError, match="cancelled") as info:
            await run(tool, "import time\ntime.sleep(30)", ctx)
        assert info.value.error_type == "cancelled"
        assert time.monotonic() - started < 1.0
        assert not psutil.pid_exists(pid)
        with pytest.raises(ToolError, match="cancelled"):  # already cancelled: nothing runs
            await run(tool, "result = 1", ctx)
        assert await run(tool, "result = 'next'") == "next"
    finally:
        await tool.aclose()


async def test_cancelled_caller_kills_the_worker() -> None:
    tool = PythonTool(workers=1)
    try:
        pid = await run(tool, "import os\nresult = os.getpid()")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(run(tool, "import time\ntime.sleep(30)"), 0.2)
        await asyncio.sleep(0.2)
        assert not psutil.pid_exists(pid)
        assert await run(tool, "result = 'next'") == "next"
    finally:
        await tool.aclose()


async def test_heartbeat_while_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(python_pool, "HEARTBEAT_EVERY", 0.1)
    beats = 0

    async def in_progress() -> None:
        nonlocal beats
        beats += 1

    tool = PythonTool(workers=1)
    try:
        ctx = make_ctx()
        ctx.in_progress = in_progress
        await run(tool, "import time\ntime.sleep(0.5)", ctx)
        assert beats >= 3  # 0.5 s of code, one beat per 0.1 s after the first 0.05 s
    finally:
        await tool.aclose()


async def test_failing_heartbeat_does_not_stop_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(python_pool, "HEARTBEAT_EVERY", 0.05)

    async def in_progress() -> None:
        raise ConnectionError("nats is away")

    tool = PythonTool(workers=1)
    try:
        ctx = make_ctx()
        ctx.in_progress = in_progress
        assert await run(tool, "import time\ntime.sleep(0.3)\nresult = 'done'", ctx) == "done"
    finally:
        await tool.aclose()


async def test_calls_run_in_parallel_up_to_the_worker_count() -> None:
    n = 4
    tool = PythonTool(workers=n)
    try:
        await asyncio.gather(*(run(tool, "import time\ntime.sleep(0.05)") for _ in range(n)))
        started = time.monotonic()
        pids = await asyncio.gather(
            *(run(tool, "import os, time\ntime.sleep(0.3)\nresult = os.getpid()") for _ in range(n))
        )
        assert time.monotonic() - started < 0.6  # serially it would take 1.2 s
        assert len(set(pids)) == n
    finally:
        await tool.aclose()


async def test_extra_calls_wait_in_fifo_order() -> None:
    tool = PythonTool(workers=1)
    try:
        finished: list[int] = []
        pids: set[int] = set()

        async def call(i: int) -> None:
            pids.add(await run(tool, "import os, time\ntime.sleep(0.05)\nresult = os.getpid()"))
            finished.append(i)

        calls = []
        for i in range(4):
            calls.append(asyncio.create_task(call(i)))
            await asyncio.sleep(0)  # each call queues before the next starts
        started = time.monotonic()
        await asyncio.gather(*calls)
        assert finished == [0, 1, 2, 3]
        assert time.monotonic() - started >= 0.2
        assert len(pids) == 1  # one execution's calls, one worker
    finally:
        await tool.aclose()


async def test_event_loop_stays_responsive_during_cpu_bound_code(tool: PythonTool) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await run(tool, "import time\nend = time.time() + 0.5\nwhile time.time() < end:\n    pass")
    finally:
        task.cancel()
    # A blocked loop would tick at most once; a loaded machine still ticks several times.
    assert ticks >= 5


async def test_aclose_leaves_no_worker_processes() -> None:
    before = worker_pids()
    tool = PythonTool(workers=3)
    code = "import os, time\ntime.sleep(0.1)\nresult = os.getpid()"
    pids = await asyncio.gather(*(run(tool, code, ctx_of(n)) for n in range(3)))
    started = worker_pids() - before
    # The three callers' workers, and the spares forked for the next executions.
    assert len(set(pids)) == 3 and set(pids) <= started
    await tool.aclose()
    assert not any(psutil.pid_exists(pid) for pid in started)
    assert worker_pids() == before
    with pytest.raises(ToolError, match="closed"):
        await run(tool, "result = 1")


async def test_aclose_during_a_call_fails_that_call() -> None:
    before = worker_pids()
    tool = PythonTool(workers=1)
    call = asyncio.create_task(run(tool, "import time\ntime.sleep(30)"))
    await asyncio.sleep(0.3)
    await tool.aclose()
    with pytest.raises(ToolError, match="closed while the code ran"):
        await call
    assert worker_pids() == before


async def test_workers_default_to_two_per_cpu() -> None:
    assert PythonTool().pool.size == 2 * (os.cpu_count() or 1)


async def test_worker_count_comes_from_the_settings() -> None:
    assert PythonTool(settings=Settings(python_workers=7)).pool.size == 7
    assert PythonTool(3, settings=Settings(python_workers=7)).pool.size == 3


# --- isolation -----------------------------------------------------------------------------


def ctx_of(execution_id: int) -> ToolContext:
    return ToolContext(execution_id=execution_id, command_id="c", step="s", timeout=10.0)


async def test_a_worker_serves_one_execution_only() -> None:
    tool = PythonTool(workers=2, settings=Settings(python_idle_workers=2))
    try:
        code = "import os\nresult = os.getpid()"
        first = await run(tool, code, ctx_of(1))
        assert await run(tool, code, ctx_of(1)) == first  # reused within its execution
        other = await run(tool, code, ctx_of(2))
        assert other != first
        # With the idle set full of other executions' workers, a third's is not kept.
        third = await run(tool, code, ctx_of(3))
        assert third not in (first, other)
        await asyncio.sleep(0.1)
        assert len(worker_pids() & {first, other, third}) == 2
    finally:
        await tool.aclose()


async def test_a_new_execution_gets_a_spare_forked_ahead() -> None:
    before = worker_pids()  # other pools' workers
    tool = PythonTool(workers=1, settings=Settings(python_idle_workers=0))
    try:
        code = "import os\nresult = os.getpid()"
        first = await run(tool, code, ctx_of(1))
        deadline = time.monotonic() + 30
        while not worker_pids() - before - {first} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        spares = worker_pids() - before - {first}
        second = await run(tool, code, ctx_of(2))
        assert second in spares
        assert await run(tool, code, ctx_of(1)) not in (first, second)  # first was not kept
    finally:
        await tool.aclose()


async def test_state_left_by_one_execution_never_reaches_the_next() -> None:
    tool = PythonTool(workers=2)
    try:
        # The attack of the review: patch a module of the worker to capture later args.
        patch = (
            "import json\nseen = []\nreal = json.dumps\n"
            "def spy(value, *a, **k):\n    seen.append(value)\n    return real(value, *a, **k)\n"
            "json.dumps = spy\njson.seen = seen\nresult = 'patched'"
        )
        assert await run(tool, patch, ctx_of(1)) == "patched"
        probe = "import json\nresult = [json.dumps(secret), hasattr(json, 'seen')]"
        assert await run(tool, probe, ctx_of(2), args={"secret": "s3cr3t"}) == ['"s3cr3t"', False]
        # Within the first execution the patch stays: it is that execution's own process.
        assert await run(tool, "import json\nresult = hasattr(json, 'seen')", ctx_of(1)) is True
    finally:
        await tool.aclose()


async def test_step_code_sees_no_noetl_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_API_TOKEN", "tok-zz9")
    monkeypatch.setenv("NOETL_ENCRYPTION_KEY", "key-zz9")
    monkeypatch.setenv("NOETL_SECRET_DB", "pw-zz9")
    monkeypatch.setenv("LANG_PROBE", "kept")
    before = template_pids()
    tool = PythonTool(workers=1)
    try:
        code = (
            "import os\n"
            "result = [sorted(k for k in os.environ if k.startswith('NOETL_')),"
            " os.environ.get('LANG_PROBE'), os.getpid()]"
        )
        names, probe, worker = await run(tool, code)
        assert names == [] and probe == "kept"
        # The worker's environment block as the kernel shows it (the worker is kept idle).
        try:
            block = psutil.Process(worker).environ()
        except psutil.AccessDenied:  # only root reads a non-dumpable worker's environment
            assert os.geteuid() != 0
        else:
            assert "LANG_PROBE" in block and not any("zz9" in v for v in block.values())
        # The template the worker was forked from never had them either.
        (template,) = template_pids() - before
        assert not any("zz9" in value for value in psutil.Process(template).environ().values())
    finally:
        await tool.aclose()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root runtime switches users")
async def test_as_root_step_code_runs_unprivileged_and_cannot_read_root_files(
    tmp_path: Path,
) -> None:
    key = tmp_path / "encryption.key"
    key.write_text("top secret")
    key.chmod(0o600)
    tool = PythonTool(workers=1)
    try:
        code = (
            "import os\n"
            "try:\n    open(key).read()\n    leaked = True\n"
            "except PermissionError:\n    leaked = False\n"
            "try:\n    open(f'/proc/{runner}/environ').read()\n    environ = True\n"
            "except PermissionError:\n    environ = False\n"
            "open('scratch.txt', 'w').write('x')  # its own private working directory\n"
            "result = [os.geteuid(), leaked, environ, os.getcwd() == os.environ['HOME']]"
        )
        uid, leaked, environ, private_cwd = await run(
            tool, code, args={"key": str(key), "runner": os.getpid()}
        )
        assert uid != 0 and uid == pwd.getpwnam("nobody").pw_uid
        assert leaked is False and environ is False and private_cwd is True
    finally:
        await tool.aclose()


async def test_a_worker_cannot_read_another_executions_worker() -> None:
    # Both run as the same account: only their being non-dumpable keeps one execution's
    # memory and environment (its secrets) from the other's code.
    tool = PythonTool(workers=2)
    try:
        secret_pid = await tool.run(
            ToolContext(execution_id=1, command_id="a", step="s", timeout=10),
            {"code": "import os\nSECRET = 'pw-' + 'x' * 8\nresult = os.getpid()"},
        )
        code = (
            "import os\nreach = {}\n"
            "for name in ('environ', 'mem', 'maps', 'fd/0'):\n"
            "    try:\n"
            "        path = f'/proc/{victim}/{name}'\n"
            "        os.listdir(path) if name == 'fd' else open(path, 'rb').read(1)\n"
            "        reach[name] = True\n"
            "    except (PermissionError, OSError) as exc:\n"
            "        reach[name] = type(exc).__name__\n"
            "result = [os.getpid(), reach]"
        )
        spy, reach = await tool.run(
            ToolContext(execution_id=2, command_id="b", step="s", timeout=10),
            {"code": code, "args": {"victim": secret_pid}},
        )
        assert spy != secret_pid and psutil.pid_exists(secret_pid)  # kept alive, idle
        assert True not in reach.values(), reach
    finally:
        await tool.aclose()


async def test_runaway_allocation_fails_the_step_and_the_pool_recovers() -> None:
    tool = PythonTool(workers=1, settings=Settings(python_memory_mb=256))
    try:
        with pytest.raises(ToolError, match="MemoryError"):
            await run(tool, "blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))")
        assert await run(tool, "result = 'next'") == "next"
    finally:
        await tool.aclose()


async def test_a_killed_template_is_replaced() -> None:
    before = template_pids()
    tool = PythonTool(workers=1)
    try:
        await run(tool, "result = 1")
        (template,) = template_pids() - before
        os.kill(template, signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert await run(tool, "result = 'again'", ctx_of(9)) == "again"
        assert template not in template_pids()
    finally:
        await tool.aclose()
    assert template_pids() == before


async def test_code_sees_noetl_context_read_only(tool: PythonTool) -> None:
    ctx = make_ctx()
    ctx.execution_data = {"workload": {"w": 1}, "fetch": {"rows": [1, 2]}, "execution_id": "7"}
    code = (
        "def main(context):\n"
        "    try:\n"
        "        context['fetch'] = None\n"
        "        writable = True\n"
        "    except TypeError:\n"
        "        writable = False\n"
        "    return {'rows': context['fetch']['rows'], 'w': context['workload']['w'],\n"
        "            'eid': context['execution_id'], 'writable': writable}\n"
    )
    assert await run(tool, code, ctx) == {"rows": [1, 2], "w": 1, "eid": "7", "writable": False}
    assert await run(tool, "result = context['workload']", ctx) == {"w": 1}


async def test_a_list_arg_answers_noetl_loop_result_shape(tool: PythonTool) -> None:
    data = [{"n": 1}, {"error": {"message": "boom"}}, {"n": 3}]
    code = (
        "result = {'total': data['stats']['total'], 'failed': data['stats']['failed'],\n"
        "          'first': data['results'][0], 'len': len(data), 'last': data[-1],\n"
        "          'sum': sum(x.get('n', 0) for x in data), 'back': data}\n"
    )
    assert await run(tool, code, args={"data": data}) == {
        "total": 3,
        "failed": 1,
        "first": {"n": 1},
        "len": 3,
        "last": {"n": 3},
        "sum": 4,
        "back": data,
    }


# --- the result size cap (NOETL_RESULT_MAX_MB) ---------------------------------------------


async def test_a_result_over_the_cap_fails_in_the_worker_and_the_tool_serves_on() -> None:
    tool = PythonTool(workers=1, settings=Settings(result_max_mb=1))
    try:
        ctx = make_ctx()
        with pytest.raises(ResultTooLarge) as caught:
            await run(tool, "print('built')\nresult = 'x' * (2 * 2**20)", ctx)
        assert (caught.value.size, caught.value.limit) == (2 * 2**20 + 2, 2**20)
        assert "2,097,154 bytes (2.0 MiB) as JSON" in str(caught.value)
        assert ctx.events[0]["stdout"] == "built\n"  # its output is kept all the same
        assert await run(tool, "result = 'x' * 1000") == "x" * 1000
    finally:
        await tool.aclose()


async def test_a_reply_frame_over_the_pool_bound_is_refused_unread() -> None:
    # A worker whose own check is off (`max_result` 0), as tampering step code could make it:
    # the runner reads the frame's length and refuses the call before buffering the rest.
    pool = python_pool.WorkerPool(1, max_reply_bytes=64 * 1024)

    async def beat() -> None:
        return None

    def request(code: str) -> bytes:
        return msgspec.msgpack.encode(Request(code=code, args={}, libs={}))

    try:
        with pytest.raises(ResultTooLarge, match=r"the python worker's reply is 1,000,0\d\d bytes"):
            await pool.call(
                request("result = 'x' * 1_000_000"),
                owner=1,
                timeout=10,
                cancelled=asyncio.Event(),
                heartbeat=beat,
            )
        small = request("result = 1")
        reply = await pool.call(
            small, owner=1, timeout=10, cancelled=asyncio.Event(), heartbeat=beat
        )
        assert msgspec.json.decode(reply)["result"] == 1
    finally:
        await pool.aclose()
