"""Which steps of an execution wait for a runner pool that has no live runner.

A command sent to a pool stays in the pool's work queue until a runner of that pool takes
it, so nothing is lost while the pool is empty; this says so in `status`. A pool is live
when some runner answers its ping subject: NATS says at once when nobody listens there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

import asyncpg
import nats.errors

from noetl.bus import Bus, pool_ping_subject
from noetl.pools import DEFAULT_POOL

# Commands issued and not yet started by any runner (a child execution is no command).
_UNTAKEN: Final = """
SELECT i.step, COALESCE(i.payload->>'pool', $2) AS pool
FROM noetl.event i
WHERE i.execution_id = $1 AND i.event_type = 'command.issued' AND NOT i.payload ? 'child'
  AND NOT EXISTS (
    SELECT 1 FROM noetl.event o
    WHERE o.execution_id = $1 AND o.command_id = i.command_id AND o.event_type <> 'command.issued'
  )
ORDER BY i.event_id
"""


async def pools_without_runner(bus: Bus, pools: Iterable[str], timeout: float = 1.0) -> set[str]:
    """The pools among `pools` that no live runner serves."""

    async def empty(pool: str) -> bool:
        try:
            await bus.nc.request(pool_ping_subject(pool), b"", timeout=timeout)
        except nats.errors.NoRespondersError:
            return True
        except (TimeoutError, nats.errors.TimeoutError):
            return False  # a runner is there, only busy: not waiting for the pool
        return False

    wanted = sorted(set(pools))
    answers = await asyncio.gather(*(empty(p) for p in wanted))
    return {p for p, none in zip(wanted, answers, strict=True) if none}


async def waiting_for_pools(
    pool: asyncpg.Pool, bus: Bus, execution_id: int, status: str
) -> dict[str, str]:
    """Step -> pool, for each step of a running execution with a command that waits for a
    pool no live runner serves."""
    if status != "running":
        return {}
    rows = await pool.fetch(_UNTAKEN, execution_id, DEFAULT_POOL)
    if not rows:
        return {}
    empty = await pools_without_runner(bus, (r["pool"] for r in rows))
    waiting: dict[str, Any] = {}
    for r in rows:
        if r["pool"] in empty:
            waiting.setdefault(r["step"], r["pool"])
    return waiting
