"""Every store query on a coordinator's, a runner's or `status`'s path is an index lookup:
run against an event table of 100,000 rows (the bench's history shape, analysed), none of
them scans `noetl.event` (PostgreSQL's own per-table count of sequential scans)."""

from __future__ import annotations

import asyncpg

from noetl.bench.chain import _fill
from noetl.bench.replay import _events
from noetl.keys import TIMER_FIRED_PREFIX, new_execution_id
from noetl.store import Store
from noetl.store.events import Projection

_SEQ_SCANS = """
SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'noetl.event'::regclass
"""


async def _seq_scans(conn: asyncpg.pool.PoolConnectionProxy) -> int:
    # The counts of this backend's finished statements, flushed now and read afresh.
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(_SEQ_SCANS))


async def test_hot_queries_never_scan_the_event_table(pg_dsn: str) -> None:
    store = await Store.connect(pg_dsn, min_size=1, max_size=1)
    try:
        await store.init_schema()
        await _fill(store.pool, 100_000)
        # A real execution among the rows, left running (a loop of 10 items).
        eid = new_execution_id()
        running = Projection(path="bench_replay", version=1, status="running")
        await store.append_decision(eid, None, _events(eid, 10)[:-1], running)
        async with store.pool.acquire() as conn:
            before = await _seq_scans(conn)
        assert (await store.load_state(eid)).status == "running"
        assert len(await store.load_decisions(eid)) > 10
        assert await store.find_event(eid, f"{TIMER_FIRED_PREFIX}none") is None
        assert await store.pending_timers() == []
        assert await store.stale_executions(0) == [eid]  # silent for 0 ms: "stale"
        assert len(await store.list_events(eid)) == 23
        assert (await store.describe(eid))["status"] == "running"
        assert await store.live_tree(eid, eid) == (0, True)
        async with store.pool.acquire() as conn:
            assert await _seq_scans(conn) == before
    finally:
        await store.close()
