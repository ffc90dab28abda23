"""Writing and reading the event table: one statement, one round trip, per decision."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from noetl.engine.events import Event
from noetl.errors import VersionConflict
from noetl.messages import ExecutionStatus
from noetl.store import order

_INSERT_EVENTS = """
INSERT INTO noetl.event (execution_id, version, event_type, step, command_id, dedup_key,
                         parent_execution_id, status, payload, error)
SELECT $1, u.version, u.event_type, u.step, u.command_id, u.dedup_key, $2, u.status,
       u.payload::jsonb, u.error::jsonb
FROM unnest($3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[])
     AS u(version, event_type, step, command_id, dedup_key, status, payload, error)
"""

# Decision events and the execution projection in one statement, hence one transaction
# and one round trip. The projection is written only when status or result changes.
# PostgreSQL runs a data-modifying CTE to completion whether or not it is read.
_DECISION = f"WITH ins AS ({_INSERT_EVENTS} RETURNING 1) SELECT count(*) FROM ins"

_DECISION_WITH_PROJECTION = f"""
WITH ins AS ({_INSERT_EVENTS} RETURNING 1),
proj AS (
  INSERT INTO noetl.execution (execution_id, path, version, status, workload, result, error,
                               parent_execution_id, restarted_from, ended_at)
  VALUES ($1, $11, $12, $13, $14::jsonb, $15::jsonb, $16::jsonb, $2, $17,
          CASE WHEN $13 IN ('completed', 'failed', 'cancelled') THEN now() END)
  ON CONFLICT (execution_id) DO UPDATE
     SET status = excluded.status, result = excluded.result, error = excluded.error,
         ended_at = excluded.ended_at
)
SELECT count(*) FROM ins
"""

_RUNNER_EVENT = """
INSERT INTO noetl.event (execution_id, event_type, step, command_id, dedup_key, status,
                         payload, error)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)
ON CONFLICT (execution_id, dedup_key) DO NOTHING
RETURNING event_id
"""

_OUTCOME = """
SELECT event_type, step, command_id, status, payload, error FROM noetl.event
WHERE execution_id = $1 AND dedup_key = $2
"""


class Projection(msgspec.Struct, kw_only=True):
    """The execution row written along with a decision that starts or ends a run."""

    path: str
    version: int
    status: ExecutionStatus
    workload: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    restarted_from: int | None = None


def json_text(value: Any) -> str | None:
    """`value` as JSON text for a jsonb column (None stays SQL NULL)."""
    # Key order kept through JSONB (noetl.store.order): SQL rows keep their columns' order.
    return None if value is None else order.encode(value)


def event_row(e: Event) -> tuple[Any, ...]:
    """The columns every event insert writes after its key column (version or execution),
    in the order of `_INSERT`'s and the batch statement's `unnest` arrays."""
    return (
        e.type,
        e.step,
        e.command_id,
        e.dedup_key,
        e.status,
        json_text(e.payload),
        json_text(e.error),
    )


async def append_decision(
    conn: asyncpg.Connection | asyncpg.Pool,
    execution_id: int,
    parent_execution_id: int | None,
    events: list[Event],
    projection: Projection | None = None,
) -> None:
    """Commit one decision's events atomically; raise VersionConflict if another won."""
    columns: list[list[Any]] = [[], [], [], [], [], [], [], []]
    for e in events:
        for column, value in zip(columns, (e.version, *event_row(e)), strict=True):
            column.append(value)
    try:
        if projection is None:
            await conn.fetchval(_DECISION, execution_id, parent_execution_id, *columns)
        else:
            await conn.fetchval(
                _DECISION_WITH_PROJECTION,
                execution_id,
                parent_execution_id,
                *columns,
                # jsonb parameters go through the connection's JSON codec, not json_text.
                projection.path,
                projection.version,
                projection.status,
                projection.workload,
                projection.result,
                projection.error,
                projection.restarted_from,
            )
    except asyncpg.UniqueViolationError as exc:
        raise VersionConflict(
            f"execution {execution_id}: another coordinator wrote this decision first "
            f"({exc.constraint_name})"
        ) from exc


async def append_runner_event(
    conn: asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy, execution_id: int, event: Event
) -> bool:
    """Record a runner event once; False when an event with its dedup key already exists."""
    row = await conn.fetchval(
        _RUNNER_EVENT,
        execution_id,
        event.type,
        event.step,
        event.command_id,
        event.dedup_key,
        event.status,
        event.payload,
        event.error,
    )
    return row is not None


async def find(
    conn: asyncpg.Connection | asyncpg.Pool, execution_id: int, dedup_key: str
) -> Event | None:
    """The event with this dedup key, if any."""
    row = await conn.fetchrow(_OUTCOME, execution_id, dedup_key)
    if row is None:
        return None
    return Event(
        type=row["event_type"],
        dedup_key=dedup_key,
        step=row["step"],
        command_id=row["command_id"],
        status=row["status"],
        payload=row["payload"],
        error=row["error"],
    )


async def load_decisions(
    conn: asyncpg.Connection | asyncpg.Pool, execution_id: int, after_version: int = 0
) -> list[Event]:
    """The execution's decision events in version order (what replay folds)."""
    rows = await conn.fetch(
        "SELECT version, event_type, step, command_id, dedup_key, status, payload, error "
        "FROM noetl.event WHERE execution_id = $1 AND version > $2 ORDER BY version",
        execution_id,
        after_version,
    )
    return [
        Event(
            type=r["event_type"],
            dedup_key=r["dedup_key"],
            version=r["version"],
            step=r["step"],
            command_id=r["command_id"],
            status=r["status"],
            payload=r["payload"],
            error=r["error"],
        )
        for r in rows
    ]


async def list_events(
    conn: asyncpg.Connection | asyncpg.Pool, execution_id: int
) -> list[dict[str, Any]]:
    """Every event of an execution as plain dicts, oldest first (for `events` and the API)."""
    rows = await conn.fetch(
        "SELECT event_id, event_type, step, command_id, status, payload, error, created_at "
        "FROM noetl.event WHERE execution_id = $1 ORDER BY event_id",
        execution_id,
    )
    return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]
