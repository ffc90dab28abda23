"""`until_done` and the runner's heartbeat: work run in the caller's task, bounded by the
step's timeout and the execution's cancellation, and beats from a timer."""

from __future__ import annotations

import asyncio

import pytest

from actors.heartbeat import Heartbeat
from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext, until_done


def _ctx(timeout: float | None) -> ToolContext:
    return ToolContext(execution_id=1, command_id="c", step="s", timeout=timeout)


async def test_cancelled_before_the_call_runs_nothing() -> None:
    ctx, ran = _ctx(None), []

    async def work() -> None:
        ran.append(1)

    ctx.cancelled.set()
    with pytest.raises(ToolError, match="x: cancelled"):
        await until_done(ctx, work(), "x")
    assert ran == []


async def test_the_work_s_own_timeout_error_is_not_the_step_s() -> None:
    async def work() -> None:
        raise TimeoutError("the server's own")

    with pytest.raises(TimeoutError, match="the server's own") as err:
        await until_done(_ctx(10), work(), "x")
    assert not isinstance(err.value, ToolTimeout)


async def test_a_stopped_call_cleans_up_before_the_error_and_nested_bounds_answer() -> None:
    cleaned: list[str] = []

    async def work(name: str) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(name)

    outer = _ctx(None)
    inner = _ctx(0.01)
    with pytest.raises(ToolTimeout, match="inner: no answer"):
        await until_done(outer, until_done(inner, work("a"), "inner", grace=0.01), "outer")
    assert cleaned == ["a"]
    asyncio.get_running_loop().call_later(0.1, outer.cancelled.set)
    with pytest.raises(ToolError, match="cancelled"):
        await until_done(outer, work("b"), "outer")
    assert cleaned == ["a", "b"]


async def test_the_caller_s_own_cancellation_goes_through() -> None:
    task = asyncio.create_task(until_done(_ctx(10), asyncio.sleep(10), "x"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_heartbeat_beats_until_stopped_and_survives_a_failed_beat() -> None:
    beats: list[int] = []

    async def beat() -> None:
        beats.append(1)
        if len(beats) == 1:
            raise OSError("the connection is away")

    heartbeat = Heartbeat(beat, 0.01)
    async with asyncio.timeout(30):
        while len(beats) < 3:
            await asyncio.sleep(0.01)
    heartbeat.stop()
    stopped = len(beats)
    await asyncio.sleep(0.05)
    assert len(beats) == stopped
