"""The message telling a coordinator how a command ended, built from its recorded outcome.

The runner sends it right after recording the outcome; the reconciler sends it again when
an outcome was recorded but never consumed. Both build it here, from the stored event
alone, so the two are the same message under the same dedup id.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET

from noetl import keys
from noetl.engine import Event
from noetl.engine import events as ev
from noetl.engine.payloads import CommandDone
from noetl.messages import CommandCompleted, CommandFailed


def outcome_message(
    execution_id: int, outcome: Event, at: float
) -> CommandCompleted | CommandFailed:
    """The CommandCompleted (result, sink facts) or CommandFailed (error) of `outcome`, a
    command.completed or command.failed event; `at` is the sender's clock."""
    assert outcome.command_id is not None and outcome.step is not None
    dedup = keys.outcome_id(outcome.command_id)
    if outcome.type == ev.COMMAND_COMPLETED:
        done = msgspec.convert(outcome.payload or {}, CommandDone)
        return CommandCompleted(
            execution_id=execution_id,
            dedup_id=dedup,
            at=at,
            command_id=outcome.command_id,
            step=outcome.step,
            result=None if done.result is UNSET else done.result,
            meta={} if done.sink is UNSET else {"sink": done.sink},
        )
    return CommandFailed(
        execution_id=execution_id,
        dedup_id=dedup,
        at=at,
        command_id=outcome.command_id,
        step=outcome.step,
        error=outcome.error or {},
    )
