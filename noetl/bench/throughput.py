"""Throughput: many small executions started at once, as an external system would, by
publishing start messages to `noetl.start`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from noetl.bench import playbooks
from noetl.bench.env import BenchEnv
from noetl.bench.model import Throughput
from noetl.bus import START_SUBJECT
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import NoetlError
from noetl.keys import new_execution_id, start_id
from noetl.messages import StartExecution, encode

STEPS = 3


async def throughput(env: BenchEnv, executions: int) -> Throughput:
    """Executions and durable steps per second, from the first start published to the
    last execution ended (every event committed)."""
    reply = await env.client.register(playbooks.chain(env.home, STEPS))
    await env.run_execution(reply.path, reply.version)  # warm: engine cached, workers up
    took = await burst(env, reply.path, reply.version, executions)
    return Throughput(
        executions_per_s=executions / took,
        steps_per_s=executions * STEPS / took,
        executions=executions,
    )


async def burst(env: BenchEnv, path: str, version: int, executions: int) -> float:
    """Seconds from publishing `executions` starts of `path` at once to the last one's end;
    NoetlError unless every one completed."""
    client = env.client
    ids = [new_execution_id() for _ in range(executions)]
    wanted = set(ids)
    ended: set[int] = set()
    all_ended = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        eid = int(msg.subject.rsplit(".", 1)[1])
        if eid not in wanted:
            return
        for event in msgspec.json.decode(msg.data):
            if event["type"].startswith("execution.") and event["status"] in TERMINAL_STATUSES:
                ended.add(eid)
        if len(ended) == len(wanted):
            all_ended.set()

    sub = await client.bus.nc.subscribe("noetl.events.*", cb=on_msg)
    try:
        now = time.time()
        starts = [
            StartExecution(
                execution_id=eid,
                dedup_id=start_id(eid),
                at=now,
                path=path,
                version=version,
            )
            for eid in ids
        ]
        began = time.perf_counter()
        await asyncio.gather(
            *(client.bus.publish(START_SUBJECT, encode(s), s.dedup_id) for s in starts)
        )
        while not all_ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_ended.wait(), 1.0)
            if not all_ended.is_set() and await _count_ended(env, ids) == len(ids):
                break
        took = time.perf_counter() - began
    finally:
        await sub.unsubscribe()
    completed = await client.store.pool.fetchval(
        "SELECT count(*) FROM noetl.execution WHERE execution_id = ANY($1::bigint[]) "
        "AND status = 'completed'",
        ids,
    )
    if completed != executions:
        raise NoetlError(f"bench: {completed} of {executions} executions completed")
    return took


async def _count_ended(env: BenchEnv, ids: list[int]) -> int:
    env.check_alive()
    count = await env.client.store.pool.fetchval(
        "SELECT count(*) FROM noetl.execution WHERE execution_id = ANY($1::bigint[]) "
        "AND status = ANY($2::text[])",
        ids,
        sorted(TERMINAL_STATUSES),
    )
    return int(count)
