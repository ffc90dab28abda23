"""One execution's state and `fold`, the only way it changes.

`fold` applies one decision event in place and returns the state, so replaying a run is
`reduce(fold, events, ExecutionState(...))` and costs O(1) per event (the events that start
a loop or end a step carry their lists once; an item's event touches one slot).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from noetl.engine import events as ev
from noetl.engine.events import Event
from noetl.engine.iteration import merge

# How many item errors a loop keeps for its failure message.
_KEPT_ERRORS = 5


class LoopState(msgspec.Struct, kw_only=True):
    """Progress of a step's loop (items) or pagination (pages) in its current activation."""

    items: list[Any] | None = None  # None for pagination
    issued: int = 0  # items (or pages) issued so far
    done: int = 0
    failed: int = 0
    results: list[Any] = []
    errors: list[dict[str, Any]] = []
    stopping: bool = False  # a failure stops issuing; running items still finish
    merged: Any = None  # pagination: the merged value so far
    strategy: str = "append"  # pagination merge strategy
    rows: int = 0  # rows written by per-item / per-page sinks

    @property
    def total(self) -> int | None:
        """Number of items, or None for a pagination (it ends when a page says so)."""
        return None if self.items is None else len(self.items)


class StepState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is known about one step: its latest activation and outcome."""

    status: str = "pending"
    activation: int = 0
    ran_tool: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    args: dict[str, Any] = {}
    loop: LoopState | None = None


class PendingCommand(msgspec.Struct, kw_only=True):
    """An issued command whose outcome the coordinator has not yet consumed."""

    step: str
    activation: int
    attempt: int
    args: dict[str, Any]
    index: int | None = None  # loop item or page number
    phase: str = "tool"  # "tool", or "sink" for a sink run after all items
    child: int | None = None  # the execution a `playbook` command started
    overrides: dict[str, Any] = {}  # pagination: what the next page changes
    rule: int | None = None  # a `case` rule's sink: which rule, and the call's result
    data: Any = None


class TimerState(msgspec.Struct, kw_only=True):
    """A durable timer: `action` happens when a Timer message for `name` arrives."""

    name: str
    due_at: float
    action: str  # "retry" | "execution_timeout"
    step: str | None = None
    retry: dict[str, Any] = {}


class ExecutionState(msgspec.Struct, kw_only=True):
    """Everything the engine needs to decide the next move of one execution."""

    execution_id: int
    status: str = "new"
    path: str = ""
    version: int = 0
    workload: dict[str, Any] = {}
    parent_execution_id: int | None = None
    parent_command_id: str | None = None
    return_step: str | None = None
    restarted_from: int | None = None
    # Version of the last decision event folded in; the next decision writes seq + 1...
    seq: int = 0
    steps: dict[str, StepState] = {}
    variables: dict[str, Any] = {}
    pending: dict[str, PendingCommand] = {}
    # Edge args that arrived at a step that has not started yet (inclusive join).
    waiting: dict[str, list[dict[str, Any]]] = {}
    timers: dict[str, TimerState] = {}
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

    def busy_steps(self) -> set[str]:
        """Steps with a command in flight or a retry pending."""
        busy = {p.step for p in self.pending.values()}
        busy.update(t.step for t in self.timers.values() if t.step is not None)
        return busy


def fold(state: ExecutionState, event: Event) -> ExecutionState:
    """Apply one decision event to `state` (in place) and return it."""
    payload = event.payload or {}
    handler = _FOLDS.get(event.type)
    if handler is not None:
        handler(state, event, payload)
    if event.version is not None:
        state.seq = event.version
    return state


def _execution_started(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    state.status = "running"
    state.path = payload["path"]
    state.version = payload["version"]
    state.workload = payload.get("workload", {})
    state.parent_execution_id = payload.get("parent_execution_id")
    state.parent_command_id = payload.get("parent_command_id")
    state.return_step = payload.get("return_step")
    state.restarted_from = payload.get("restarted_from")
    if payload.get("restore"):
        _restore(state, payload["restore"])
    _add_routes(state, payload)


def _restore(state: ExecutionState, snapshot: dict[str, Any]) -> None:
    """Load what a restarted execution keeps from the one it restarts (see restart.py)."""
    for name, data in snapshot.get("steps", {}).items():
        state.steps[name] = msgspec.convert(data, StepState)
    state.variables.update(snapshot.get("vars") or {})
    for name, arrivals in (snapshot.get("waiting") or {}).items():
        state.waiting.setdefault(name, []).extend(arrivals)
    state.last_step = snapshot.get("last_step")


def _execution_ended(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    state.status = event.status or event.type.split(".", 1)[1]
    state.result = payload.get("result")
    state.error = event.error
    state.timers.clear()


def _step_started(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    assert event.step is not None
    step = state.step_state(event.step)
    step.status = "running"
    step.activation = payload["activation"]
    step.args = payload.get("args") or {}
    step.error = None
    if "items" in payload:
        items = payload["items"]
        step.loop = LoopState(items=items, results=[None] * len(items))
    elif payload.get("paginate"):
        step.loop = LoopState(strategy=payload["paginate"]["strategy"])
    else:
        step.loop = None
    state.waiting.pop(event.step, None)


def _command_issued(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    assert event.step is not None and event.command_id is not None
    index = payload.get("index")
    phase = payload.get("phase", "tool")
    state.pending[event.command_id] = PendingCommand(
        step=event.step,
        activation=payload["activation"],
        attempt=payload["attempt"],
        args=payload.get("args", {}),
        index=index,
        phase=phase,
        child=payload.get("child"),
        overrides=payload.get("overrides") or {},
        rule=(payload.get("data") or {}).get("rule"),
        data=(payload.get("data") or {}).get("result"),
    )
    loop = state.step_state(event.step).loop
    if loop is not None and index is not None and phase == "tool" and payload["attempt"] == 1:
        loop.issued = max(loop.issued, index + 1)


def _step_item(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    """One loop item or page ended (its result or error is in the event)."""
    assert event.step is not None
    if event.command_id is not None:
        state.pending.pop(event.command_id, None)
    state.variables.update(payload.get("vars") or {})
    loop = state.step_state(event.step).loop
    if loop is None:
        return  # a `case` rule ended one call of the step and made another
    index = payload["index"]
    loop.done += 1
    loop.rows += payload.get("rows", 0)
    if event.error is not None:
        loop.failed += 1
        if len(loop.errors) < _KEPT_ERRORS:
            loop.errors.append({"index": index, **event.error})
        if not payload.get("tolerated"):
            loop.stopping = True
        value: Any = {"error": event.error}
    else:
        value = payload.get("result")
    if loop.items is not None:
        loop.results[index] = value
    elif "part" in payload:
        loop.merged = merge(loop.merged, payload["part"], loop.strategy)


def _step_ended(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    assert event.step is not None
    step = state.step_state(event.step)
    if event.command_id is not None:
        state.pending.pop(event.command_id, None)
    state.variables.update(payload.get("vars") or {})
    if event.type == ev.STEP_COMPLETED:
        step.status = "completed"
        step.result = payload.get("result")
        step.ran_tool = bool(payload.get("tool"))
        if step.ran_tool:
            state.last_step = event.step
    else:
        step.status = "failed"
        step.error = event.error
    step.loop = None
    _add_routes(state, payload)


def _timer_scheduled(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    timer = msgspec.convert(payload, TimerState)
    state.timers[timer.name] = timer
    failed = payload.get("retry", {}).get("failed_command")
    if failed is not None:
        state.pending.pop(failed, None)


def _timer_fired(state: ExecutionState, event: Event, payload: dict[str, Any]) -> None:
    state.timers.pop(payload["name"], None)


def _add_routes(state: ExecutionState, payload: dict[str, Any]) -> None:
    for route in payload.get("routes", ()):
        state.waiting.setdefault(route["step"], []).append(route.get("args") or {})


_FOLDS = {
    ev.EXECUTION_STARTED: _execution_started,
    ev.EXECUTION_COMPLETED: _execution_ended,
    ev.EXECUTION_FAILED: _execution_ended,
    ev.EXECUTION_CANCELLED: _execution_ended,
    ev.STEP_STARTED: _step_started,
    ev.COMMAND_ISSUED: _command_issued,
    ev.STEP_ITEM: _step_item,
    ev.STEP_COMPLETED: _step_ended,
    ev.STEP_FAILED: _step_ended,
    ev.TIMER_SCHEDULED: _timer_scheduled,
    ev.TIMER_FIRED: _timer_fired,
}


def replay(execution_id: int, events: Iterable[Event]) -> ExecutionState:
    """Rebuild an execution's state from its decision events, in version order."""
    state = ExecutionState(execution_id=execution_id)
    for event in events:
        fold(state, event)
    return state
