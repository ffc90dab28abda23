"""`python -m tests.bench.python_pool_bench`: what the python tool's worker processes cost.

Bounded: one pool of one worker slot in this process, no servers. Figures (CPU is the whole
tree's: this process, the template and every worker it forked and reaped):

- `fork_cycle`: calls of a new execution each, the previous one's worker evicted (the fork
  of a spare, its first call, its exit, its reaping and the removal of its home): CPU and
  wall per call, spares refilled between calls;
- `interleaved_cpu_ms_per_step`: CPU per call of 3-step executions whose steps come in
  stream order (all first steps, then all second steps, then all third), default settings;
- `first_call`: wall of a new execution's first call with a spare ready;
- `warm_call`: wall of an execution's next call on its own worker;
- `template_mib`: the template's resident memory; `idle_worker_kib`: a worker's private
  memory (USS) after one call.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import statistics
import sys
import time

import msgspec
import psutil

from plugins.python_pool import WorkerPool
from plugins.python_worker import Request

CODE = "result = x + 1"
ROUNDS = 200


def _tree_cpu() -> float:
    """CPU seconds of this process and its descendants, reaped ones included."""
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
        if proc.pid != me.pid:  # this process's reaped children (the template) are alive
            total += t.children_user + t.children_system
    return total


async def _call(pool: WorkerPool, owner: object) -> float:
    payload = msgspec.msgpack.encode(Request(code=CODE, args={"x": 1}, libs={}))
    started = time.perf_counter()
    await pool.call(
        payload, owner=owner, timeout=10.0, cancelled=asyncio.Event(), heartbeat=_nothing
    )
    return time.perf_counter() - started


async def _nothing() -> None:
    return None


async def _settle(pool: WorkerPool) -> None:
    """Wait until the background spare refill is done."""
    refill = getattr(pool, "_refill", None)
    if refill is not None:
        await asyncio.wait([refill])
    await asyncio.sleep(0.005)


def _pool(size: int, **options: int) -> WorkerPool:
    """A pool of `size` slots; `options` only where this version of the pool takes them."""
    known = inspect.signature(WorkerPool).parameters
    taken = {name: value for name, value in options.items() if name in known}
    return WorkerPool(size, user=os.environ.get("BENCH_USER", "nobody"), **taken)


async def interleaved(executions: int) -> dict[str, float]:
    """CPU per call of `executions` 3-step executions whose steps come in stream order
    (every execution's first step, then every second, then every third), two slots."""
    pool = _pool(2)
    try:
        await _call(pool, -1)
        await _settle(pool)
        cpu0 = _tree_cpu()
        for _ in range(3):
            await asyncio.gather(*(_call(pool, owner) for owner in range(executions)))
    finally:
        await pool.aclose()
    # Every worker and the template reaped: their exits are counted too.
    ours = psutil.Process().cpu_times()
    cpu = ours.user + ours.system + ours.children_user + ours.children_system - cpu0
    return {"interleaved_cpu_ms_per_step": round(cpu / executions / 3e-3, 2)}


async def measure(rounds: int) -> dict[str, float]:
    # Nothing kept idle: every call of a new execution costs a whole fork cycle.
    pool = _pool(1, idle=0)
    try:
        await _call(pool, -1)
        await _settle(pool)
        cpu0, wall0 = _tree_cpu(), time.perf_counter()
        firsts = []
        for owner in range(rounds):
            firsts.append(await _call(pool, owner))
            await _settle(pool)
        cpu = (_tree_cpu() - cpu0) / rounds
        wall = (time.perf_counter() - wall0) / rounds
    finally:
        await pool.aclose()
    pool = _pool(1)
    try:
        warms = [await _call(pool, rounds) for _ in range(rounds)]
        me = psutil.Process()
        template = next(p for p in me.children() if "python_zygote" in " ".join(p.cmdline()))
        workers = [p for p in template.children() if p.status() != psutil.STATUS_ZOMBIE]
        uss = statistics.median(p.memory_full_info().uss for p in workers)
        return {
            "fork_cycle_cpu_ms": round(cpu * 1000, 2),
            "fork_cycle_wall_ms": round(wall * 1000, 2),
            "first_call_ms": round(statistics.median(firsts) * 1000, 2),
            "warm_call_ms": round(statistics.median(warms) * 1000, 3),
            "template_mib": round(template.memory_info().rss / 2**20, 1),
            "idle_worker_kib": round(uss / 1024),
        }
    finally:
        await pool.aclose()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS
    figures = asyncio.run(measure(rounds))
    figures |= asyncio.run(interleaved(rounds))
    figures["load_1m"] = round(os.getloadavg()[0], 2)
    figures["root"] = os.geteuid() == 0
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
