"""Rebuilding an execution's state from the event table, the fast way.

The payloads are read as JSON text and decoded by msgspec straight into the Structs that
`fold` reads, with no intermediate dict. That gives the same state as
`replay(load_decisions(...))` because a Struct does not depend on the order of its own keys:
only a payload whose nested maps carry a recorded key order (`noetl.store.order`) goes
through the order-restoring path first, and those are rare (a map whose key order JSONB
would change, inside a step's args, result or vars).
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import msgspec

from noetl.engine.events import Event
from noetl.engine.state import ExecutionState, fold, payload_type
from noetl.store import order

__all__ = ["load_state"]

_DECISIONS: Final = """
SELECT version, event_type, step, command_id, dedup_key, status, payload::text, error::text
FROM noetl.event WHERE execution_id = $1 AND version > 0 ORDER BY version
"""


class _TopKeys(msgspec.Struct):
    """Only the key order recorded at a payload's top level, if any."""

    keys: list[str] | None = msgspec.field(name=order.ORDER_KEY, default=None)


_top_keys = msgspec.json.Decoder(_TopKeys)
_decoders: dict[str, tuple[type[msgspec.Struct], msgspec.json.Decoder[Any]] | None] = {}


def _decoder(event_type: str) -> tuple[type[msgspec.Struct], msgspec.json.Decoder[Any]] | None:
    if event_type not in _decoders:
        kind = payload_type(event_type)
        _decoders[event_type] = None if kind is None else (kind, msgspec.json.Decoder(kind))
    return _decoders[event_type]


def _payload(event_type: str, text: str | None) -> msgspec.Struct | None:
    found = _decoder(event_type)
    if found is None:
        return None
    kind, decoder = found
    if text is None or text == "null":
        return msgspec.convert({}, kind)
    marks = text.count(order.MARK)
    if marks and marks > (_top_keys.decode(text).keys is not None):
        # A nested map's key order matters (args, results): restore it first.
        return msgspec.convert(order.decode(text), kind)
    payload: msgspec.Struct = decoder.decode(text)
    return payload


async def load_state(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool,
    execution_id: int,
) -> ExecutionState:
    """The execution's state folded from its decision events (what `replay` of
    `load_decisions` gives, faster)."""
    state = ExecutionState(execution_id=execution_id)
    for r in await conn.fetch(_DECISIONS, execution_id):
        event_type, error = r[1], r[7]
        event = Event(
            type=event_type,
            version=r[0],
            step=r[2],
            command_id=r[3],
            dedup_key=r[4],
            status=r[5],
            error=None if error is None else order.decode(error),
        )
        fold(state, event, _payload(event_type, r[6]))
    return state
