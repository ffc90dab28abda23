"""The floors a durable step is built from, measured on the bench's own servers."""

from __future__ import annotations

import statistics
import time
import uuid

import asyncpg
from nats.js.api import StorageType, StreamConfig

from noetl.bench.env import BenchEnv
from noetl.bench.model import Floors


async def pg_commit_ms(dsn: str, samples: int) -> float:
    """Median of `samples` single-row INSERTs, each committed on its own (a WAL flush)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigint, body jsonb)")
        times = []
        for i in range(samples):
            began = time.perf_counter()
            await conn.execute("INSERT INTO bench_floor VALUES ($1, '{\"a\": 1}')", i)
            times.append(time.perf_counter() - began)
        await conn.execute("DROP TABLE bench_floor")
        return statistics.median(times) * 1000
    finally:
        await conn.close()


async def js_publish_ack_ms(env: BenchEnv, samples: int) -> float:
    """Median of `samples` JetStream publishes to a file-backed stream, each acknowledged."""
    js = env.client.bus.js
    name = f"NOETL_BENCH_{uuid.uuid4().hex[:8].upper()}"
    subject = f"noetl.bench.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    try:
        body = b"x" * 200
        times = []
        for i in range(samples):
            began = time.perf_counter()
            await js.publish(subject, body, headers={"Nats-Msg-Id": str(i)})
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1000
    finally:
        await js.delete_stream(name)


async def floors(env: BenchEnv, samples: int) -> Floors:
    """Both floors, one after the other."""
    return Floors(
        pg_commit_ms=await pg_commit_ms(env.dsn, samples),
        js_publish_ack_ms=await js_publish_ack_ms(env, samples),
    )
