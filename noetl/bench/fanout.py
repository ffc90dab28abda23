"""Fan-out: an async loop of trivial items then a step summing them; and the wide loop,
which also watches the coordinator process's memory."""

from __future__ import annotations

import asyncio
import contextlib

from noetl.bench import playbooks
from noetl.bench.env import BenchEnv, rss_mib
from noetl.bench.model import Fanout, WideLoop
from noetl.errors import NoetlError


async def _run_loop(env: BenchEnv, name: str, items: int) -> float:
    reply = await env.client.register(playbooks.fanout(env.home, name))
    await env.run_execution(reply.path, reply.version, {"items": 2})  # warm-up
    took, row = await env.run_execution(reply.path, reply.version, {"items": items})
    if row["status"] != "completed" or row["result"] != items * (items - 1) // 2:
        raise NoetlError(f"bench {name} ended {row['status']}: {row['error'] or row['result']}")
    return took


async def fanout(env: BenchEnv, items: int) -> Fanout:
    """Wall seconds of the loop and its sum, start to end."""
    return Fanout(wall_s=await _run_loop(env, "bench_fanout", items), items=items)


async def wide_loop(env: BenchEnv, items: int) -> WideLoop:
    """Wall seconds of a wide loop, and how much the coordinator's RSS grew at its peak."""
    pid = env.pid("coordinator")
    before = peak = rss_mib(pid)
    done = False

    async def watch() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        took = await _run_loop(env, "bench_wide_loop", items)
    finally:
        done = True
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return WideLoop(wall_s=took, items=items, rss_growth_mib=peak - before)
