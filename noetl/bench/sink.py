"""The postgres sink's rows/second, next to a plain asyncpg COPY of ready-made tuples.

Median of 3 runs each of: the floor (`copy_records_to_table` of tuples of the right Python
types); the sink in mode insert (rows as a step's result holds them: JSON values, dates as
ISO text); the sink upserting over rows already there (every row an update) and into an
empty table (every row new).
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from noetl.bench.env import BenchEnv
from noetl.bench.model import Sink
from plugins.base import ToolContext
from plugins.sinks.postgres import PostgresSink

_RUNS = 3
_TABLE = (
    "CREATE TABLE bench_sink (id bigint PRIMARY KEY, name text, score float8, born date, "
    "payload jsonb)"
)
_COLUMNS = ["id", "name", "score", "born", "payload"]


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "name": f"user-{i}",
            "score": i * 0.5,
            "born": (dt.date(2000, 1, 1) + dt.timedelta(days=i % 9000)).isoformat(),
            "payload": {"n": i, "tags": ["a", "b"]},
        }
        for i in range(count)
    ]


def _tuples(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["id"], r["name"], r["score"], dt.date.fromisoformat(r["born"]), json.dumps(r["payload"]))
        for r in rows
    ]


async def _timed(
    prepare: Callable[[], Awaitable[Any]], work: Callable[[], Awaitable[Any]]
) -> float:
    samples = []
    for _ in range(_RUNS):
        await prepare()
        began = time.perf_counter()
        await work()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


async def sink(env: BenchEnv, count: int) -> Sink:
    """Rows/second of each way of writing `count` rows."""
    rows = _rows(count)
    tuples = _tuples(rows)
    dsn = env.dsn

    async def credential(name: str) -> dict[str, Any]:
        return {"dsn": dsn}

    writer = PostgresSink()
    ctx = ToolContext(
        execution_id=1, command_id="bench", step="bench", timeout=None, credentials=credential
    )
    spec = {"kind": "postgres", "auth": "bench", "table": "bench_sink"}
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(_TABLE)

        async def empty() -> None:
            await admin.execute("TRUNCATE bench_sink")

        async def full() -> None:
            await empty()
            await admin.copy_records_to_table("bench_sink", records=tuples, columns=_COLUMNS)

        async def copy() -> None:
            await admin.copy_records_to_table("bench_sink", records=tuples, columns=_COLUMNS)

        async def insert() -> None:
            await writer.write(ctx, spec, rows)

        async def upsert() -> None:
            await writer.write(ctx, {**spec, "mode": "upsert", "key": ["id"]}, rows)

        await empty()
        await insert()  # warm the sink's pool, as a runner's would be
        return Sink(
            rows=count,
            copy_rows_per_s=count / await _timed(empty, copy),
            insert_rows_per_s=count / await _timed(empty, insert),
            upsert_update_rows_per_s=count / await _timed(full, upsert),
            upsert_new_rows_per_s=count / await _timed(empty, upsert),
        )
    finally:
        await writer.aclose()
        await admin.execute("DROP TABLE IF EXISTS bench_sink")
        await admin.close()
