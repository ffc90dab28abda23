"""The chain (cost of one durable step) and the history workload built on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import asyncpg

from noetl.bench import playbooks
from noetl.bench.env import BenchEnv
from noetl.bench.model import Chain, Floors, History, Spread
from noetl.errors import NoetlError

Say = Callable[[str], None]


async def per_step_ms(env: BenchEnv, steps: int, runs: int) -> list[float]:
    """Milliseconds per step of each of `runs` runs of the chain, after one warm-up run."""
    reply = await env.client.register(playbooks.chain(env.home, steps))
    totals = []
    for i in range(runs + 1):
        took, row = await env.run_execution(reply.path, reply.version)
        if row["status"] != "completed":
            raise NoetlError(f"bench chain ended {row['status']}: {row['error']}")
        if i > 0:
            totals.append(took * 1000 / steps)
    return totals


async def chain(env: BenchEnv, floors: Floors, steps: int, runs: int) -> Chain:
    """The chain's per-step spread and its median over the floor sum F."""
    times = await per_step_ms(env, steps, runs)
    p50 = statistics.median(times)
    return Chain(
        per_step_ms=Spread(p50=p50, min=min(times), max=max(times)),
        per_step_over_floor=p50 / floors.sum_ms,
    )


# Rows like a real run's, generated server-side in one statement: executions of 97 events
# (start, 19 steps of started/issued/runner started/runner outcome/completed, end), spread
# over the last 30 days, with time-ordered ids that cannot meet the bench's own.
_FILL = """
INSERT INTO noetl.event (event_id, execution_id, version, event_type, step, command_id,
                         dedup_key, status, payload, created_at)
SELECT ((t.ms) << 22) | (g & 4194303),
       x.eid,
       CASE WHEN p.kind IN ('command.started', 'command.completed') THEN NULL
            WHEN p.pos = 0 THEN 1
            WHEN p.pos = 96 THEN 59
            ELSE 1 + p.block * 3 + CASE p.kind WHEN 'step.started' THEN 1
                                              WHEN 'command.issued' THEN 2 ELSE 3 END END,
       p.kind,
       CASE WHEN p.pos IN (0, 96) THEN NULL ELSE 's' || p.block END,
       CASE WHEN p.pos IN (0, 96) OR p.kind = 'step.started' THEN NULL
            ELSE x.eid || ':s' || p.block || ':1:1' END,
       CASE WHEN p.pos IN (0, 96) THEN p.kind
            ELSE p.kind || ':' || x.eid || ':s' || p.block || ':1' END,
       CASE WHEN p.kind LIKE '%.completed' THEN 'completed' ELSE 'running' END,
       CASE WHEN p.kind LIKE '%.completed' THEN jsonb_build_object('result', p.block)
            ELSE jsonb_build_object('activation', 1) END,
       to_timestamp(t.ms / 1000.0)
FROM generate_series($3::bigint, $4::bigint - 1) AS g
CROSS JOIN LATERAL (SELECT g / 97 AS n, (g % 97)::int AS pos) AS q
CROSS JOIN LATERAL (
  SELECT q.pos,
         (q.pos - 1) / 5 AS block,
         CASE WHEN q.pos = 0 THEN 'execution.started'
              WHEN q.pos = 96 THEN 'execution.completed'
              ELSE (ARRAY['step.started', 'command.issued', 'command.started',
                          'command.completed', 'step.completed'])[(q.pos - 1) % 5 + 1] END
           AS kind
) AS p
CROSS JOIN LATERAL (SELECT $2::bigint - (30::bigint * 86400000 * ($1 - g)) / $1 AS ms) AS t
CROSS JOIN LATERAL (SELECT ((($2::bigint - 40::bigint * 86400000) + q.n) << 22) AS eid) AS x
"""

# The execution rows of those events (same ids), all completed.
_FILL_EXECUTIONS = """
INSERT INTO noetl.execution (execution_id, path, version, status, started_at, ended_at)
SELECT (($2::bigint - 40::bigint * 86400000) + n) << 22, 'bench/history', 1, 'completed',
       to_timestamp(($2::bigint - 30::bigint * 86400000) / 1000.0),
       to_timestamp(($2::bigint - 30::bigint * 86400000) / 1000.0)
FROM generate_series(0, ($1::bigint - 1) / 97) AS n
"""


_INDEXES = """
SELECT c.conname AS name, pg_get_constraintdef(c.oid) AS definition, true AS constraint_
FROM pg_constraint c WHERE c.conrelid = 'noetl.event'::regclass AND c.contype IN ('p', 'u')
UNION ALL
SELECT i.indexname, i.indexdef, false FROM pg_indexes i
WHERE i.schemaname = 'noetl' AND i.tablename = 'event'
  AND i.indexname NOT IN (SELECT conname FROM pg_constraint
                          WHERE conrelid = 'noetl.event'::regclass)
"""


async def _fill(pool: asyncpg.Pool, events: int) -> None:
    """Store `events` rows: indexes dropped, filled by one connection per core, indexes
    rebuilt from their own definitions (a bulk build beats growing four b-trees row by
    row). Nothing runs meanwhile: the bench's executions have all ended."""
    indexes = await pool.fetch(_INDEXES)
    for index in indexes:
        if index["constraint_"]:
            await pool.execute(f'ALTER TABLE noetl.event DROP CONSTRAINT "{index["name"]}"')
        else:
            await pool.execute(f'DROP INDEX noetl."{index["name"]}"')
    try:
        now_ms = int(time.time() * 1000)
        parts = max(1, min(os.cpu_count() or 1, 8))
        bounds = [events * i // parts for i in range(parts + 1)]
        await asyncio.gather(
            *(
                pool.execute(_FILL, events, now_ms, bounds[i], bounds[i + 1], timeout=None)
                for i in range(parts)
            )
        )
        await pool.execute(_FILL_EXECUTIONS, events, now_ms, timeout=None)
    finally:
        for index in indexes:
            if index["constraint_"]:
                await pool.execute(
                    f'ALTER TABLE noetl.event ADD CONSTRAINT "{index["name"]}" '
                    f"{index['definition']}",
                    timeout=None,
                )
            else:
                await pool.execute(index["definition"], timeout=None)
    await pool.execute("ANALYZE noetl.event; ANALYZE noetl.execution", timeout=None)
    # The fill's gigabytes of dirty pages are written out now, not during the measurement.
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await pool.execute("CHECKPOINT", timeout=None)


async def history(env: BenchEnv, events: int, steps: int, runs: int, say: Say) -> History:
    """The chain on an empty event table, then with `events` rows stored."""
    pool = env.client.store.pool
    # Only the bench's own, finished executions are there: nothing is running.
    await pool.execute("TRUNCATE noetl.event, noetl.execution")
    empty = statistics.median(await per_step_ms(env, steps, runs))
    say(f"bench: history: storing {events:,} events")
    began = time.perf_counter()
    await _fill(pool, events)
    say(f"bench: history: stored in {time.perf_counter() - began:.0f} s")
    full = statistics.median(await per_step_ms(env, steps, runs))
    return History(
        ratio=full / empty, empty_per_step_ms=empty, full_per_step_ms=full, events=events
    )
