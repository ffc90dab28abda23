"""The SQL of a group commit (`noetl.store.group`): many callers' writes in one statement.

A batch of one is written by the statement a caller alone has always used
(`noetl.store.events`); a larger batch by one statement, hence one round trip and one
transaction, that gives each item its own outcome:
- decisions go through `noetl.append_decisions` (migration 7), which inserts every event
  with `ON CONFLICT DO NOTHING`, then removes the rows of each decision that did not insert
  whole and leaves its projection alone: a decision is committed entirely or not at all, and
  a version conflict is that decision's only;
- runner events go in one `INSERT ... ON CONFLICT DO NOTHING RETURNING`, whose rows say
  which events were new.
Both insert in (execution, version or dedup key) order, the order every batch uses, so that
two processes writing events of the same executions wait for each other, never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from noetl.engine.events import Event
from noetl.errors import VersionConflict
from noetl.store import events as event_sql
from noetl.store.events import Projection, json_text

#: Items per batch: bounds a statement's size and the wait of the last caller in it.
MAX_BATCH = 64

_DECISIONS = "SELECT noetl.append_decisions(" + ", ".join(f"${i}" for i in range(1, 20)) + ")"

_RUNNER_EVENTS = """
INSERT INTO noetl.event (execution_id, event_type, step, command_id, dedup_key, status,
                         payload, error)
SELECT u.execution_id, u.event_type, u.step, u.command_id, u.dedup_key, u.status,
       u.payload::jsonb, u.error::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[])
     AS u(execution_id, event_type, step, command_id, dedup_key, status, payload, error)
ORDER BY u.execution_id, u.dedup_key
ON CONFLICT (execution_id, dedup_key) DO NOTHING
RETURNING execution_id, dedup_key
"""


class DecisionWrite(NamedTuple):
    """One coordinator decision waiting for its commit."""

    execution_id: int
    parent_execution_id: int | None
    events: list[Event]
    projection: Projection | None


class RunnerWrite(NamedTuple):
    """One runner event waiting for its commit."""

    execution_id: int
    event: Event


def decision_key(item: DecisionWrite) -> int:
    """At most one decision of an execution per batch: decisions commit in turn."""
    return item.execution_id


def runner_key(item: RunnerWrite) -> tuple[int, str]:
    """At most one event per dedup key per batch, so each row returned names its caller."""
    return item.execution_id, item.event.dedup_key


async def write_decisions(
    pool: asyncpg.Pool, items: Sequence[DecisionWrite]
) -> list[Exception | None]:
    """Commit the decisions; a VersionConflict for each one another writer got to first."""
    if len(items) == 1:
        (one,) = items
        try:
            await event_sql.append_decision(
                pool, one.execution_id, one.parent_execution_id, one.events, one.projection
            )
        except VersionConflict as exc:
            return [exc]
        return [None]
    events: list[list[Any]] = [[] for _ in range(10)]
    projections: list[list[Any]] = [[] for _ in range(9)]
    for item in items:
        for e in item.events:
            row = (
                item.execution_id,
                item.parent_execution_id,
                e.version,
                e.type,
                e.step,
                e.command_id,
                e.dedup_key,
                e.status,
                json_text(e.payload),
                json_text(e.error),
            )
            for column, value in zip(events, row, strict=True):
                column.append(value)
        p = item.projection
        if p is not None:
            projection = (
                item.execution_id,
                item.parent_execution_id,
                p.path,
                p.version,
                p.status,
                json_text(p.workload),
                json_text(p.result),
                json_text(p.error),
                p.restarted_from,
            )
            for column, value in zip(projections, projection, strict=True):
                column.append(value)
    conflicted = set(await pool.fetchval(_DECISIONS, *events, *projections))
    return [
        VersionConflict(
            f"execution {item.execution_id}: another coordinator wrote this decision first"
        )
        if item.execution_id in conflicted
        else None
        for item in items
    ]


async def write_runner_events(pool: asyncpg.Pool, items: Sequence[RunnerWrite]) -> list[bool]:
    """Record the events once each; per item, whether it was new (False: a duplicate)."""
    if len(items) == 1:
        (one,) = items
        return [await event_sql.append_runner_event(pool, one.execution_id, one.event)]
    columns: list[list[Any]] = [[] for _ in range(8)]
    for item in items:
        e = item.event
        row = (
            item.execution_id,
            e.type,
            e.step,
            e.command_id,
            e.dedup_key,
            e.status,
            json_text(e.payload),
            json_text(e.error),
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    rows = await pool.fetch(_RUNNER_EVENTS, *columns)
    inserted = {(int(r["execution_id"]), str(r["dedup_key"])) for r in rows}
    return [runner_key(item) in inserted for item in items]
