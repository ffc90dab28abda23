"""Group commit (`noetl.store.group`) against a real PostgreSQL: concurrent callers'
writes share one transaction, each caller still gets its own outcome, and a transaction
lost mid-batch fails every caller in it with nothing of it committed.

Which transaction wrote a row is its `xmin`: rows of one batch share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from noetl.engine.events import Event
from noetl.errors import VersionConflict
from noetl.keys import new_execution_id
from noetl.store import Projection, Store
from noetl.store.check import check_events
from noetl.store.group import LOST

_TRANSACTIONS = """
SELECT count(DISTINCT xmin::text) FROM noetl.event WHERE execution_id = ANY($1::bigint[])
"""


def _decision(first: int, end: str = "execution.completed") -> list[Event]:
    """A whole run in one decision from version `first`: start, then end."""
    return [
        Event(type="execution.started", dedup_key=f"start-{first}", version=first),
        Event(type=end, dedup_key=f"end-{first}", version=first + 1, payload={"v": first}),
    ]


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


async def test_decisions_coalesce_and_a_conflict_is_its_callers_alone(store: Store) -> None:
    lone, a, b, stale, d = (new_execution_id() for _ in range(5))
    # Another coordinator already wrote versions 1 and 2 of `stale`.
    await store.append_decision(stale, None, _decision(1), None)
    ended = Projection(path="p", version=1, status="completed", result={"r": 1})
    batches = store.decisions.batches
    # Stale: version 2 is taken, version 3 is free; neither may be committed.
    writes = [
        store.append_decision(lone, None, _decision(1), None),
        store.append_decision(a, None, _decision(1), ended),
        store.append_decision(b, a, _decision(1), None),
        store.append_decision(stale, None, _decision(2, "step.started"), ended),
        store.append_decision(d, None, _decision(1), ended),
    ]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert outcomes[:3] == [None, None, None] and outcomes[4] is None, outcomes
    assert isinstance(outcomes[3], VersionConflict), outcomes
    # The lone write went at once; the four that came while it was in flight, in one.
    assert store.decisions.batches - batches == 2
    assert await _transactions(store, [a, b, d]) == 1
    assert await _transactions(store, [lone, a]) == 2
    rows = await store.pool.fetch(
        "SELECT version, payload FROM noetl.event WHERE execution_id = $1 ORDER BY version",
        stale,
    )
    assert [(r["version"], r["payload"]) for r in rows] == [(1, None), (2, {"v": 1})]
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM noetl.execution WHERE execution_id = $1", stale
        )
        == 0
    )
    row = await store.get_execution(a)
    assert (row["status"], row["result"], row["ended_at"] is not None) == (
        "completed",
        {"r": 1},
        True,
    )
    assert (await store.get_execution(d))["status"] == "completed"
    assert (await store.load_decisions(b))[1].payload == {"v": 1}
    assert (
        await store.pool.fetchval(
            "SELECT parent_execution_id FROM noetl.event WHERE execution_id = $1 LIMIT 1", b
        )
        == a
    )
    assert (await check_events(store.pool, settle=0)).clean


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
    lone, x, y, z = (new_execution_id() for _ in range(4))
    nul = {"s": "\x00"}
    bad = Event(type="command.completed", dedup_key="bad", payload=nul)
    bad_decision = [*_decision(1)[:1], Event(type="x", dedup_key="x", version=2, payload=nul)]
    outcomes = await asyncio.gather(
        store.append_runner_event(lone, _outcome("lone")),
        store.append_runner_event(x, bad),
        store.append_runner_event(y, _outcome("good")),
        store.append_decision(lone, None, _decision(1), None),
        store.append_decision(x, None, bad_decision, None),
        store.append_decision(y, None, _decision(1), None),
        store.append_decision(z, None, _decision(1), None),
        return_exceptions=True,
    )
    assert outcomes[0] is True and outcomes[2] is True, outcomes
    assert outcomes[3] is None and outcomes[5:] == [None, None], outcomes
    assert isinstance(outcomes[1], asyncpg.DataError), outcomes
    assert isinstance(outcomes[4], asyncpg.DataError), outcomes
    assert await store.find_event(y, "good") is not None
    assert await store.find_event(x, "bad") is None
    assert await store.load_decisions(x) == []
    assert len(await store.load_decisions(z)) == 2


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
    ids = [new_execution_id() for _ in range(7)]
    lone, batched, lone_x, x, y = ids[0], ids[1:4], ids[4], ids[5], ids[6]

    def decisions() -> list[asyncio.Future[None]]:
        return [
            asyncio.ensure_future(store.append_decision(e, None, _decision(1), None))
            for e in batched
        ]

    try:
        first = asyncio.ensure_future(store.append_decision(lone, None, _decision(1), None))
        held = decisions()
        first_outcome = asyncio.ensure_future(store.append_runner_event(lone_x, _outcome("o")))
        outcomes = [
            asyncio.ensure_future(store.append_runner_event(e, _outcome("o"))) for e in (x, y)
        ]
        await asyncio.gather(first, first_outcome)
        async with asyncio.timeout(60):
            while len(pids := await admin.fetchval(_HELD) or []) < 2:
                await asyncio.sleep(0.05)
        assert (
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(p)) FROM unnest($1::int[]) p", pids
            )
            == 2
        )
        failures = await asyncio.gather(*held, *outcomes, return_exceptions=True)
        assert all(isinstance(f, LOST) for f in failures), failures
        assert type(failures[0]) is type(failures[1]) is type(failures[2])
        assert await _transactions(store, [*batched, x, y]) == 0
        # The callers write again, as the coordinator and the runner do, and all commit.
        await admin.execute("DELETE FROM public.gc_hold")
        await asyncio.gather(*decisions())
        assert await asyncio.gather(
            *(store.append_runner_event(e, _outcome("o")) for e in (x, y))
        ) == [True, True]
    finally:
        await admin.execute("DELETE FROM public.gc_hold")
        await admin.close()
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM noetl.event WHERE execution_id = ANY($1::bigint[])", ids
        )
        == 2 * 4 + 3
    )
    assert (await check_events(store.pool, settle=0)).clean
