"""How the decisions of one execution's batch of messages become one commit.

The coordinator decides each queued message in turn, then commits all their events in one
statement: `combine` makes the one decision that does what the batch did, and `projection`
the execution row's new values. Pure: no I/O.
"""

from __future__ import annotations

from noetl.engine import Decision, ExecutionState
from noetl.store import Projection


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
