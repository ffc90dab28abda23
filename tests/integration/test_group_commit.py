"""Group commit (`noetl.store.group`) against a real PostgreSQL: concurrent runner
events share one transaction, each caller still gets its own outcome, and a transaction
lost mid-batch fails every caller in it with nothing of it committed.

Which transaction wrote a row is its `xmin`: rows of one batch share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from noetl.engine.events import Event
from noetl.errors import StoreError
from noetl.keys import new_execution_id
from noetl.store import Store
from noetl.store.check import check_events
from noetl.store.group import LOST

_TRANSACTIONS = """
SELECT count(DISTINCT xmin::text) FROM noetl.event WHERE execution_id = ANY($1::bigint[])
"""


def _outcome(key: str) -> Event:
    return Event(type="command.completed", dedup_key=key, status="completed", payload={"k": key})


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[Store]:
    store = await Store.connect(pg_dsn, max_size=4, relaxed=True)
    await store.init_schema()
    try:
        yield store
    finally:
        await store.close()


async def _transactions(store: Store, ids: list[int]) -> int:
    return int(await store.pool.fetchval(_TRANSACTIONS, ids))


async def test_runner_events_report_duplicates_per_caller(store: Store) -> None:
    x, y = new_execution_id(), new_execution_id()
    assert await store.append_runner_event(x, _outcome("done-1"))
    batches = store.outcomes.batches
    writes = [
        store.append_runner_event(x, _outcome("lone")),
        store.append_runner_event(x, _outcome("done-1")),  # already there
        store.append_runner_event(x, _outcome("b")),
        store.append_runner_event(x, _outcome("b")),  # same key: the next batch, a duplicate
        store.append_runner_event(y, _outcome("b")),  # same key, other execution: new
        store.append_runner_event(y, _outcome("done-1")),
    ]
    outcomes = await asyncio.gather(*writes)
    assert outcomes == [True, False, True, False, True, True]
    assert store.outcomes.batches - batches == 3
    assert await _transactions(store, [y]) == 1
    count = "SELECT count(*) FROM noetl.event WHERE execution_id = $1 AND dedup_key = $2"
    assert await store.pool.fetchval(count, x, "b") == 1
    stored = await store.find_event(y, "b")
    assert stored is not None and stored.payload == {"k": "b"}
    # Relaxed facts (command.started) batch apart from durable ones, with the same answers.
    relaxed = store.relaxed_outcomes.batches
    started = [store.append_runner_event(x, _outcome(f"s{i % 3}"), durable=False) for i in range(5)]
    assert await asyncio.gather(*started) == [True, True, True, False, False]
    assert store.relaxed_outcomes.batches - relaxed == 3


async def test_a_refused_value_fails_its_caller_only(store: Store) -> None:
    """PostgreSQL refuses a batch for one caller's value (NUL in JSON text): the batch is
    written again write by write, and only that caller fails."""
    lone, x, y = (new_execution_id() for _ in range(3))
    bad = Event(type="command.completed", dedup_key="bad", payload={"s": "\x00"})
    outcomes = await asyncio.gather(
        store.append_runner_event(lone, _outcome("lone")),
        store.append_runner_event(x, bad),
        store.append_runner_event(y, _outcome("good")),
        store.append_runner_event(x, _outcome("good")),
        return_exceptions=True,
    )
    assert outcomes[0] is True and outcomes[2:] == [True, True], outcomes
    assert isinstance(outcomes[1], asyncpg.DataError), outcomes
    assert await store.find_event(y, "good") is not None
    assert await store.find_event(x, "bad") is None


_HOLD = """
CREATE TABLE public.gc_hold (on_hold boolean);
CREATE FUNCTION public.gc_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT count(DISTINCT execution_id) FROM new_rows) >= 2
     AND EXISTS (SELECT 1 FROM public.gc_hold) THEN
    PERFORM set_config('application_name', 'gc-hold', true);
    WHILE EXISTS (SELECT 1 FROM public.gc_hold) LOOP
      PERFORM pg_sleep(0.05);
    END LOOP;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER gc_hold AFTER INSERT ON noetl.event
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.gc_hold();
INSERT INTO public.gc_hold VALUES (true);
"""
_HELD = """
SELECT array_agg(pid) FROM pg_stat_activity
WHERE application_name = 'gc-hold' AND wait_event = 'PgSleep'
"""


async def test_a_backend_terminated_mid_batch_fails_every_caller(store: Store, pg_dsn: str) -> None:
    """Test-only trigger: a statement inserting events of two executions or more sleeps
    inside its transaction (rows inserted, not committed) until the test terminates it."""
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(_HOLD)
    lone, *batched = (new_execution_id() for _ in range(4))

    def outcomes() -> list[asyncio.Future[bool]]:
        return [asyncio.ensure_future(store.append_runner_event(e, _outcome("o"))) for e in batched]

    try:
        first = asyncio.ensure_future(store.append_runner_event(lone, _outcome("o")))
        held = outcomes()
        assert await first
        async with asyncio.timeout(60):
            while not (pids := await admin.fetchval(_HELD)):
                await asyncio.sleep(0.05)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pids[0])
        failures = await asyncio.gather(*held, return_exceptions=True)
        assert all(isinstance(f, LOST) for f in failures), failures
        assert len({type(f) for f in failures}) == 1, failures
        assert await _transactions(store, batched) == 0
        # The callers write again, as the runner does on redelivery, and all commit.
        await admin.execute("DELETE FROM public.gc_hold")
        assert await asyncio.gather(*outcomes()) == [True, True, True]
    finally:
        await admin.execute("DELETE FROM public.gc_hold")
        await admin.close()
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM noetl.event WHERE execution_id = ANY($1::bigint[])",
            [lone, *batched],
        )
        == 4
    )
    assert (await check_events(store.pool, settle=0)).clean


def _started(command: str) -> Event:
    return Event(type="command.started", dedup_key=f"started:{command}", status="running")


def _done(command: str) -> Event:
    return _outcome(f"outcome:{command}")


_ROWS = """
SELECT dedup_key, event_id, xmin::text AS tx FROM noetl.event
WHERE execution_id = $1 ORDER BY event_id
"""


async def test_a_start_and_outcome_commit_together_and_whole(store: Store) -> None:
    """Several events of one caller: one transaction, written in the order given, never
    split across batches; an item with one of their keys waits behind them."""
    lone, x, y = (new_execution_id() for _ in range(3))
    assert await store.append_runner_events(x, [_started("c1"), _done("c1")]) == [True, True]
    batches = store.outcomes.batches
    outcomes = await asyncio.gather(
        store.append_runner_event(lone, _done("c0")),  # alone: the rest queue behind it
        store.append_runner_event(y, _done("c2")),
        store.append_runner_events(y, [_started("c2"), _done("c2")]),  # a key taken: next
        store.append_runner_event(y, _started("c2")),  # behind the pair, in arrival order
        store.append_runner_events(x, [_started("c3"), _done("c3")]),
    )
    assert outcomes == [True, True, [True, False], False, [True, True]]
    assert store.outcomes.batches - batches == 4
    rows = await store.pool.fetch(_ROWS, x)
    assert [r["dedup_key"] for r in rows] == [
        "started:c1",
        "outcome:c1",
        "started:c3",
        "outcome:c3",
    ]
    assert rows[0]["tx"] == rows[1]["tx"] != rows[2]["tx"] == rows[3]["tx"]
    with pytest.raises(StoreError, match="descending"):
        await store.append_runner_events(x, [_done("c4"), _started("c4")])


async def test_a_kept_connection_that_died_is_replaced(store: Store, pg_dsn: str) -> None:
    """The batcher keeps its connection between writes (`noetl.store.pinned`): once the
    server ends it, at most one write fails (LOST, delivered again by the runner) and the
    next takes a fresh connection."""
    x = new_execution_id()
    assert await store.append_runner_events(x, [_started("c1"), _done("c1")]) == [True, True]
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    outcomes = [
        await asyncio.gather(
            store.append_runner_events(x, [_done(f"c{i}")]), return_exceptions=True
        )
        for i in (2, 2, 3)
    ]
    # The first write commits, or fails having committed nothing (written again: new).
    first_failed = isinstance(outcomes[0][0], LOST) and outcomes[1] == [[True]]
    assert outcomes[:2] == [[[True]], [[False]]] or first_failed, outcomes
    assert outcomes[2] == [[True]], outcomes
