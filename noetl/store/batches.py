"""The SQL of a group commit (`noetl.store.group`): many runner events in one statement.

A batch of one is written by the statement a caller alone has always used
(`noetl.store.events`); a larger batch by one `INSERT ... ON CONFLICT DO NOTHING RETURNING`,
hence one round trip and one transaction, whose rows say which events were new. Rows go in
(execution, dedup key descending) order, the order every batch uses, so that two runners
recording the same command's events wait for each other, never deadlock; descending puts a
command's `started:` row before its `outcome:` row, so the start gets the lower event id
when both go in one write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from noetl.engine.events import Event
from noetl.store import events as event_sql
from noetl.store.events import json_text
from noetl.store.pinned import Pinned

#: Items per batch: bounds a statement's size and the wait of the last caller in it.
MAX_BATCH = 64

# The rows travel as one JSON document (`_Row`s), encoded in one call: eight arrays cost
# their driver a type check per element.
_RUNNER_EVENTS = """
INSERT INTO noetl.event (execution_id, event_type, step, command_id, dedup_key, status,
                         payload, error)
SELECT u.execution_id, u.event_type, u.step, u.command_id, u.dedup_key, u.status,
       u.payload, u.error
FROM jsonb_to_recordset($1::text::jsonb)
     AS u(execution_id bigint, event_type text, step text, command_id text, dedup_key text,
          status text, payload jsonb, error jsonb)
ORDER BY u.execution_id, u.dedup_key DESC
ON CONFLICT (execution_id, dedup_key) DO NOTHING
RETURNING execution_id, dedup_key
"""


class _Row(msgspec.Struct, omit_defaults=True):
    """One row of `_RUNNER_EVENTS` (an absent field is SQL NULL); the jsonb columns
    already encoded, key orders marked (`noetl.store.order`)."""

    execution_id: int
    event_type: str
    dedup_key: str
    step: str | None = None
    command_id: str | None = None
    status: str | None = None
    payload: msgspec.Raw | None = None
    error: msgspec.Raw | None = None


_encode_rows = msgspec.json.Encoder().encode


class RunnerWrite(NamedTuple):
    """Runner events of one caller waiting for their commit, all in one transaction."""

    execution_id: int
    events: tuple[Event, ...]


def runner_keys(item: RunnerWrite) -> list[tuple[int, str]]:
    """At most one event per dedup key per batch, so each row returned names its caller."""
    return [(item.execution_id, e.dedup_key) for e in item.events]


async def write_runner_events(conn: Pinned, items: Sequence[RunnerWrite]) -> list[tuple[bool, ...]]:
    """Record the events once each; per item, per event, whether it was new (False: a
    duplicate)."""
    if len(items) == 1 and len(items[0].events) == 1:
        (one,) = items
        new = await conn.run(
            lambda con: event_sql.append_runner_event(con, one.execution_id, one.events[0])
        )
        return [(new,)]
    rows = [
        _Row(
            execution_id=item.execution_id,
            event_type=e.type,
            dedup_key=e.dedup_key,
            step=e.step,
            command_id=e.command_id,
            status=e.status,
            payload=_raw(e.payload),
            error=_raw(e.error),
        )
        for item in items
        for e in item.events
    ]
    document = _encode_rows(rows).decode()
    rows_found = await conn.run(lambda con: con.fetch(_RUNNER_EVENTS, document))
    inserted = {(int(r["execution_id"]), str(r["dedup_key"])) for r in rows_found}
    return [tuple(key in inserted for key in runner_keys(item)) for item in items]


def _raw(value: Any) -> msgspec.Raw | None:
    text = json_text(value)
    return None if text is None else msgspec.Raw(text)
