"""One execution's state and `fold`, the only way it changes.

`fold` applies one decision event in place and returns the state, so replaying a run is
`reduce(fold, events, ExecutionState(...))` and costs O(1) per event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from noetl.engine import events as ev
from noetl.engine.events import Event


class StepState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is known about one step: its latest activation and outcome."""

    status: str = "pending"
    activation: int = 0
    ran_tool: bool = False
    result: Any = None
    error: dict[str, Any] | None = None


class PendingCommand(msgspec.Struct, kw_only=True):
    """An issued command whose outcome the coordinator has not yet consumed."""

    step: str
    activation: int
    attempt: int
    args: dict[str, Any]


class ExecutionState(msgspec.Struct, kw_only=True):
    """Everything the engine needs to decide the next move of one execution."""

    execution_id: int
    status: str = "new"
    path: str = ""
    version: int = 0
    workload: dict[str, Any] = {}
    parent_execution_id: int | None = None
    parent_command_id: str | None = None
    # Version of the last decision event folded in; the next decision writes seq + 1...
    seq: int = 0
    steps: dict[str, StepState] = {}
    variables: dict[str, Any] = {}
    pending: dict[str, PendingCommand] = {}
    # Edge args that arrived at a step that has not started yet (inclusive join).
    waiting: dict[str, list[dict[str, Any]]] = {}
    last_step: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        """True while the execution can still make progress."""
        return self.status == "running"

    def step_state(self, name: str) -> StepState:
        """The state of step `name`, created on first use."""
        found = self.steps.get(name)
        if found is None:
            found = self.steps[name] = StepState()
        return found

    def results(self) -> dict[str, Any]:
        """Results of the steps that completed, by step name (the template context)."""
        return {name: s.result for name, s in self.steps.items() if s.status == "completed"}


def fold(state: ExecutionState, event: Event) -> ExecutionState:
    """Apply one decision event to `state` (in place) and return it."""
    payload = event.payload or {}
    kind = event.type
    if kind == ev.EXECUTION_STARTED:
        state.status = "running"
        state.path = payload["path"]
        state.version = payload["version"]
        state.workload = payload.get("workload", {})
        state.parent_execution_id = payload.get("parent_execution_id")
        state.parent_command_id = payload.get("parent_command_id")
        _add_routes(state, payload)
    elif kind == ev.STEP_STARTED:
        assert event.step is not None
        step = state.step_state(event.step)
        step.status = "running"
        step.activation = payload["activation"]
        step.error = None
        state.waiting.pop(event.step, None)
    elif kind == ev.COMMAND_ISSUED:
        assert event.step is not None and event.command_id is not None
        state.pending[event.command_id] = PendingCommand(
            step=event.step,
            activation=payload["activation"],
            attempt=payload["attempt"],
            args=payload.get("args", {}),
        )
    elif kind in (ev.STEP_COMPLETED, ev.STEP_FAILED):
        _fold_step_end(state, event, payload)
    elif kind in (ev.EXECUTION_COMPLETED, ev.EXECUTION_FAILED, ev.EXECUTION_CANCELLED):
        state.status = event.status or kind.split(".", 1)[1]
        state.result = payload.get("result")
        state.error = event.error
    if event.version is not None:
        state.seq = event.version
    return state


def _fold_step_end(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    assert event.step is not None
    step = state.step_state(event.step)
    if event.command_id is not None:
        state.pending.pop(event.command_id, None)
    if event.type == ev.STEP_COMPLETED:
        step.status = "completed"
        step.result = payload.get("result")
        step.ran_tool = bool(payload.get("tool"))
        state.variables.update(payload.get("vars") or {})
        if step.ran_tool:
            state.last_step = event.step
    else:
        step.status = "failed"
        step.error = event.error
    _add_routes(state, payload)


def _add_routes(state: ExecutionState, payload: dict[str, Any]) -> None:
    for route in payload.get("routes", ()):
        state.waiting.setdefault(route["step"], []).append(route.get("args") or {})


def replay(execution_id: int, events: Iterable[Event]) -> ExecutionState:
    """Rebuild an execution's state from its decision events, in version order."""
    state = ExecutionState(execution_id=execution_id)
    for event in events:
        fold(state, event)
    return state
