"""The python tool keeps an execution's workers for its next steps, and only for it: real
worker processes, forked from the template, observed by pid."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

import pytest

from noetl.config import Settings
from noetl.errors import ToolTimeout
from plugins.base import ToolContext
from plugins.python import PythonTool
from tests.unit.test_python_tool import running

PID = "import os\nresult = os.getpid()"


def ctx_of(execution_id: int, timeout: float = 10.0) -> ToolContext:
    return ToolContext(execution_id=execution_id, command_id="c", step="s", timeout=timeout)


async def call(tool: PythonTool, code: str, execution_id: int, **args: Any) -> Any:
    return await tool.run(ctx_of(execution_id), {"code": code, "args": args})


async def exits(pid: int, seconds: float = 15.0) -> bool:
    """Whether process `pid` is gone within `seconds`."""
    for _ in range(int(seconds / 0.05)):
        if not running(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_interleaved_executions_each_keep_their_own_worker() -> None:
    # One slot, steps in stream order: every execution's first step, then every second.
    tool = PythonTool(workers=1)
    code = (
        "import json, os\nseen = getattr(json, 'mark', None)\njson.mark = eid\n"
        "result = [os.getpid(), seen]"
    )
    try:
        first = [await call(tool, code, n, eid=n) for n in range(4)]
        second = [await call(tool, code, n, eid=n) for n in range(4)]
        assert [seen for _, seen in first] == [None] * 4  # nobody's mark reached another
        assert [seen for _, seen in second] == list(range(4))  # each its own process again
        assert [pid for pid, _ in second] == [pid for pid, _ in first]
        assert len({pid for pid, _ in first}) == 4
    finally:
        await tool.aclose()


async def test_an_execution_runs_on_several_workers_at_once() -> None:
    tool = PythonTool(workers=3)
    meeting = tempfile.mkdtemp()
    os.chmod(meeting, 0o777)  # the workers may run as another account
    code = (
        "import os, time\nopen(os.path.join(meeting, str(i)), 'w').close()\n"
        "end = time.time() + 20\n"
        "while len(os.listdir(meeting)) < 3 and time.time() < end:\n    time.sleep(0.01)\n"
        "result = [os.getpid(), len(os.listdir(meeting))]"
    )
    try:
        replies = await asyncio.gather(
            *(call(tool, code, 1, meeting=meeting, i=i) for i in range(3))
        )
        # All three met: they ran at the same time, each in a worker of its own.
        assert [seen for _, seen in replies] == [3, 3, 3]
        pids = {pid for pid, _ in replies}
        assert len(pids) == 3
        assert await call(tool, PID, 1) in pids  # kept for the same execution
        assert await call(tool, PID, 2) not in pids  # never for another
    finally:
        await tool.aclose()
        for name in os.listdir(meeting):
            os.unlink(os.path.join(meeting, name))
        os.rmdir(meeting)


async def test_an_ended_execution_s_workers_are_stopped() -> None:
    tool = PythonTool(workers=2)
    try:
        kept = await call(tool, PID, 1)
        other = await call(tool, PID, 2)
        tool.execution_ended(1)
        assert await exits(kept)
        assert running(other)  # another execution's worker stays
        assert await call(tool, PID, 1) != kept
        # Ended while its call runs: the call completes, then its worker is stopped.
        busy = asyncio.create_task(
            call(tool, "import os, time\ntime.sleep(0.5)\nresult = os.getpid()", 3)
        )
        await asyncio.sleep(0.2)
        tool.execution_ended(3)
        assert await exits(await busy)
    finally:
        await tool.aclose()


async def test_idle_workers_are_stopped_by_idleness_and_by_memory() -> None:
    tool = PythonTool(workers=1, settings=Settings(python_idle_seconds=0.3))
    try:
        pid = await call(tool, PID, 1)
        assert running(pid)
        assert await exits(pid)
    finally:
        await tool.aclose()
    # More memory asked to stay free than any machine has: nothing is kept.
    tool = PythonTool(workers=1, settings=Settings(python_idle_free_mb=2**40))
    try:
        pid = await call(tool, PID, 1)
        assert await exits(pid)
        assert await call(tool, PID, 1) != pid
    finally:
        await tool.aclose()


async def test_a_kept_worker_that_runs_past_its_timeout_is_killed() -> None:
    tool = PythonTool(workers=1)
    try:
        kept = await call(tool, PID, 1)
        ctx = ctx_of(1, timeout=0.5)
        with pytest.raises(ToolTimeout):
            await tool.run(ctx, {"code": "import time\ntime.sleep(30)"})
        assert not running(kept)  # the same worker, killed before the error was raised
        assert await call(tool, PID, 1) != kept
    finally:
        await tool.aclose()


def existing(paths: list[str]) -> list[str]:
    return [path for path in paths if os.path.exists(path)]


async def gone(paths: list[str], seconds: float = 15.0) -> list[str]:
    """The paths of `paths` still there after up to `seconds`."""
    for _ in range(int(seconds / 0.05)):
        if not existing(paths):
            break
        await asyncio.sleep(0.05)
    return existing(paths)


async def test_closing_the_tool_leaves_no_worker_home_behind() -> None:
    tool = PythonTool(workers=2)
    code = "import os\nresult = [os.getpid(), os.environ['HOME']]"
    try:
        kept = [await call(tool, code, n) for n in range(2)]
        assert existing([home for _, home in kept]) == [home for _, home in kept]
    finally:
        await tool.aclose()
    for pid, _ in kept:
        assert await exits(pid)
    assert await gone([home for _, home in kept]) == []


async def test_a_killed_owner_leaves_no_worker_home_behind() -> None:
    # The runner is SIGKILLed with workers kept alive: the template, left alone, ends them
    # and removes their homes, which their own exit would not.
    script = (
        "import asyncio, sys\n"
        "from tests.unit.test_python_keep import PythonTool, call\n"
        "async def main():\n"
        "    tool = PythonTool(workers=2)\n"
        "    for n in range(2):\n"
        "        pid, home = await call(tool, CODE, n)\n"
        "        print(pid, home, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    ).replace("CODE", repr("import os\nresult = [os.getpid(), os.environ['HOME']]"))
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert owner.stdout is not None
        lines = [await asyncio.wait_for(owner.stdout.readline(), 30) for _ in range(2)]
        kept = [line.decode().split() for line in lines]
        assert existing([home for _, home in kept]) == [home for _, home in kept]
    finally:
        owner.kill()
        await owner.wait()
    for pid, _ in kept:
        assert await exits(int(pid))
    assert await gone([home for _, home in kept]) == []
