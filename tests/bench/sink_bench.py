"""The postgres sink's rows/second for 100,000 rows, next to a plain asyncpg COPY.

`python -m tests.bench.sink_bench [rows]`: on a throwaway embedded PostgreSQL (or the server
of NOETL_TEST_PG_DSN), the median of 3 runs each of
- floor: `copy_records_to_table` of ready-made tuples of the right Python types;
- sink insert: the same rows as JSON-like dicts (dates as ISO text) through PostgresSink;
- sink upsert: those dicts again, over the rows already there (every row an update).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from plugins.base import ToolContext
from plugins.sinks.postgres import PostgresSink
from tests.support.services import (
    create_database,
    drop_database,
    start_test_postgres,
    unique_database_name,
    with_database,
)

ROWS = 100_000
RUNS = 3
TABLE = (
    "CREATE TABLE bench (id bigint PRIMARY KEY, name text, score float8, born date, payload jsonb)"
)


def dict_rows(count: int) -> list[dict[str, Any]]:
    """Rows as a step's result holds them: JSON values only."""
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


def tuple_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The same rows as the tuples a hand-written COPY would send."""
    return [
        (r["id"], r["name"], r["score"], dt.date.fromisoformat(r["born"]), json.dumps(r["payload"]))
        for r in rows
    ]


async def timed(
    prepare: Callable[[], Awaitable[None]], work: Callable[[], Awaitable[Any]]
) -> float:
    """Median seconds of `work` over RUNS runs, each after `prepare`."""
    samples = []
    for _ in range(RUNS):
        await prepare()
        started = time.perf_counter()
        await work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def bench(dsn: str, count: int) -> dict[str, float]:
    """Seconds per mode for `count` rows."""
    rows = dict_rows(count)
    tuples = tuple_rows(rows)
    admin = await asyncpg.connect(dsn)
    sink = PostgresSink()
    ctx = ToolContext(
        execution_id=1,
        command_id="bench",
        step="bench",
        timeout=None,
        credentials=lambda name: _credential(dsn),
    )
    spec = {"kind": "postgres", "auth": "pg", "table": "bench"}
    try:
        await admin.execute(TABLE)

        async def empty() -> None:
            await admin.execute("TRUNCATE bench")

        async def full() -> None:
            await admin.execute("TRUNCATE bench")
            await admin.copy_records_to_table("bench", records=tuples)

        async def floor() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.copy_records_to_table(
                    "bench", records=tuples, columns=["id", "name", "score", "born", "payload"]
                )
            finally:
                await conn.close()

        async def insert() -> None:
            await sink.write(ctx, spec, rows)

        async def upsert() -> None:
            await sink.write(ctx, {**spec, "mode": "upsert", "key": ["id"]}, rows)

        await insert()  # warm the sink's pool, as a runner's would be
        return {
            "asyncpg copy_records_to_table (floor)": await timed(empty, floor),
            "postgres sink, mode insert": await timed(empty, insert),
            "postgres sink, mode upsert (all updates)": await timed(full, upsert),
            "postgres sink, mode upsert (all new)": await timed(empty, upsert),
        }
    finally:
        await sink.aclose()
        await admin.close()


async def _credential(dsn: str) -> dict[str, Any]:
    return {"dsn": dsn}


async def main(count: int) -> None:
    """Run the benchmark on a fresh database and print rows/second per mode."""
    external = os.environ.get("NOETL_TEST_PG_DSN")
    server = None if external else await asyncio.to_thread(start_test_postgres)
    admin_dsn = external or (server.admin_dsn if server else "")
    name = unique_database_name("sink_bench")
    try:
        await create_database(admin_dsn, name)
        try:
            results = await bench(with_database(admin_dsn, name), count)
        finally:
            await drop_database(admin_dsn, name)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    print(f"{count:,} rows, median of {RUNS} runs")
    for name, seconds in results.items():
        print(f"  {name:<42} {seconds:7.3f} s  {count / seconds:>10,.0f} rows/s")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else ROWS))
