"""The event record shared by the engine and the store, and the event type names."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from noetl.messages import EventStatus

EXECUTION_STARTED: Final = "execution.started"
EXECUTION_COMPLETED: Final = "execution.completed"
EXECUTION_FAILED: Final = "execution.failed"
EXECUTION_CANCELLED: Final = "execution.cancelled"
STEP_STARTED: Final = "step.started"
STEP_COMPLETED: Final = "step.completed"
STEP_FAILED: Final = "step.failed"
# One loop item or pagination page ended (an addition to the design's list: a loop of n
# items needs a decision per item, and this keeps each one O(1) to write and to fold).
STEP_ITEM: Final = "step.item"
# Durable timers (retry backoff, execution timeout): scheduled and fired as decisions, so a
# restart neither loses a pending timer nor fires it twice.
# A condition read an undefined name and took it as false (NoETL's truthiness): recorded
# for the author, changes nothing in the state.
STEP_WARNING: Final = "step.warning"
TIMER_SCHEDULED: Final = "timer.scheduled"
TIMER_FIRED: Final = "timer.fired"
COMMAND_ISSUED: Final = "command.issued"
COMMAND_STARTED: Final = "command.started"
COMMAND_COMPLETED: Final = "command.completed"
COMMAND_FAILED: Final = "command.failed"

TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One state transition. Coordinator decisions carry `version`; runner events do not.

    `dedup_key` is unique per execution: writing the same transition twice is a no-op.
    """

    type: str
    dedup_key: str
    version: int | None = None
    step: str | None = None
    command_id: str | None = None
    status: EventStatus | None = None
    payload: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
