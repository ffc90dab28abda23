"""Restart from a step: the state a new execution starts from, cut out of an old one.

Pure: given the old execution's decision events and the step to restart from, it returns
the snapshot that the new execution's `execution.started` event carries. Everything
decided before that step started is kept (results, vars, routes taken); work that was in
flight at that moment is put back to wait, so it runs again in the new execution.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from noetl.engine import events as ev
from noetl.engine.events import Event
from noetl.engine.state import ExecutionState, fold
from noetl.errors import NoetlError


def default_restart_step(events: Iterable[Event]) -> str | None:
    """The step to restart from when none is named: the last step that failed."""
    failed = [e.step for e in events if e.type == ev.STEP_FAILED and e.step]
    return failed[-1] if failed else None


def restart_snapshot(execution_id: int, events: list[Event], from_step: str) -> dict[str, Any]:
    """The state just before the last activation of `from_step` started, as plain data."""
    cut = None
    for i, event in enumerate(events):
        if event.type == ev.STEP_STARTED and event.step == from_step:
            cut = i
    if cut is None:
        raise NoetlError(
            f"step `{from_step}` did not run in execution {execution_id}: "
            "restart from a step that ran (or omit --from to take the one that "
            "failed)"
        )
    state = ExecutionState(execution_id=execution_id)
    for event in events[:cut]:
        fold(state, event)
    waiting = {name: list(args) for name, args in state.waiting.items()}
    steps = {}
    for name, step in state.steps.items():
        if step.status in ("completed", "failed"):
            steps[name] = {
                "status": step.status,
                "activation": step.activation,
                "ran_tool": step.ran_tool,
                "result": step.result,
                "error": step.error,
            }
        elif step.status == "running":
            # In flight at the cut: it runs again, with the args it had.
            waiting.setdefault(name, []).append(step.args)
    return {
        "steps": steps,
        "vars": state.variables,
        "waiting": waiting,
        "last_step": state.last_step,
    }
