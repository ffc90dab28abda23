"""How the decisions of one execution's batch of messages become one commit.

The coordinator decides the queued messages in turn (`decide_run`, several in one call so
that they cost one thread hop), then commits all their events in one statement: `combine`
makes the one decision that does what the batch did, and `projection` the execution row's
new values. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from noetl import blobs
from noetl.engine import Decision, Engine, ExecutionState
from noetl.messages import ExecMessage
from noetl.store import Projection


def value_refs(
    state: ExecutionState, messages: Sequence[ExecMessage], most: int | None = None
) -> set[str]:
    """The digests of the stored values that deciding `messages` on `state` reads: those
    the state's completed steps' results and the messages' results refer to.

    With `most`, only the first message and those following it while the digests stay
    within `most` count, so that looking up the values of a run of messages (whose
    results may each be a stored value) holds a bounded number of them at once."""
    digests: set[str] = set()
    for step in state.steps.values():
        if step.status == "completed":
            digests.update(blobs.refs_in(step.result))
    for index, message in enumerate(messages):
        refs = set(blobs.refs_in(getattr(message, "result", None)))
        if index and most is not None and len(digests | refs) > most:
            break
        digests.update(refs)
    return digests


def decide_run(
    engine: Engine,
    state: ExecutionState,
    messages: Sequence[ExecMessage],
    values: Mapping[str, Any],
    asked: Set[str],
) -> list[Decision]:
    """Decide `messages` in order on `state` (which each decision advances), stopping
    before the first one that reads a stored value not looked up yet: `asked` are the
    digests looked up, `values` those of them found. The caller looks up what the next
    message reads and decides the rest; the first message is always decided, so its
    values must have been looked up on `state` as it is (`value_refs`).

    Each decision is given exactly the values it reads, as if decided alone: the run
    decides what its messages decided one by one would."""
    decisions: list[Decision] = []
    for message in messages:
        digests = value_refs(state, [message])
        if decisions and not digests <= asked:
            break
        reads = {d: values[d] for d in digests if d in values}
        decisions.append(engine.decide(state, message, reads))
    return decisions


def combine(decisions: list[Decision]) -> Decision:
    """One decision doing what a batch of consecutive decisions did."""
    if len(decisions) == 1:
        return decisions[0]
    combined = Decision(duplicate=bool(decisions) and all(d.duplicate for d in decisions))
    for d in decisions:
        combined.events.extend(d.events)
        combined.commands.extend(d.commands)
        combined.children.extend(d.children)
        combined.timers.extend(d.timers)
        combined.cancel_children.extend(d.cancel_children)
        combined.stop_running = combined.stop_running or d.stop_running
        combined.ended = combined.ended or d.ended
        combined.parent_notice = d.parent_notice or combined.parent_notice
    if combined.stop_running or combined.parent_notice is not None:
        # The execution ended within the batch: what earlier decisions issued is moot.
        combined.commands, combined.children = [], []
    return combined


def projection(state: ExecutionState, decision: Decision) -> Projection | None:
    """The execution row's new values when the decision changed them, else None."""
    if not decision.projection_changed:
        return None
    return Projection(
        path=state.path,
        version=state.version,
        status=state.status,
        workload=state.workload,
        result=state.result,
        error=state.error,
        restarted_from=state.restarted_from,
    )
