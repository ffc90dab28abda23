"""One execution's state and `fold`, the only way it changes.

`fold` applies one decision event in place and returns the state, so replaying a run is
`reduce(fold, events, ExecutionState(...))` and costs O(1) per event (the events that start
a loop or end a step carry their lists once; an item's event touches one slot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from msgspec import UNSET

from noetl.engine import events as ev
from noetl.engine import payloads as pl
from noetl.engine.events import Event
from noetl.engine.iteration import merge
from noetl.messages import ExecutionStatus, Phase, StepStatus, TerminalStatus, TimerAction

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
    handled: int = 0  # failed items a `call.error` rule took: they do not fail the step
    # Routes per-item `case` rules named, by item index: taken once, when the loop ends.
    routes: dict[int, list[pl.Route]] = {}

    @property
    def total(self) -> int | None:
        """Number of items, or None for a pagination (it ends when a page says so)."""
        return None if self.items is None else len(self.items)


class StepState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is known about one step: its latest activation and outcome."""

    status: StepStatus = "pending"
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
    phase: Phase = "tool"  # "sink": a sink run after all items, or a `case` rule's sink
    child: int | None = None  # the execution a `playbook` command started
    overrides: dict[str, Any] = {}  # pagination: what the next page changes
    rule: int | None = None  # a `case` rule's sink: which rule, and the call's result
    data: Any = None
    error: dict[str, Any] | None = None  # ... or the loop item's error a rule took


class TimerState(msgspec.Struct, kw_only=True):
    """A durable timer: `action` happens when a Timer message for `name` arrives."""

    name: str
    due_at: float
    action: TimerAction
    step: str | None = None
    retry: dict[str, Any] = {}


class ExecutionState(msgspec.Struct, kw_only=True):
    """Everything the engine needs to decide the next move of one execution."""

    execution_id: int
    status: ExecutionStatus = "new"
    path: str = ""
    version: int = 0
    workload: dict[str, Any] = {}
    parent_execution_id: int | None = None
    parent_command_id: str | None = None
    # Sub-playbook nesting (0 at the top) and the top execution of the tree.
    depth: int = 0
    root_execution_id: int | None = None
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


_ENDINGS: dict[str, TerminalStatus] = {
    ev.EXECUTION_COMPLETED: "completed",
    ev.EXECUTION_FAILED: "failed",
    ev.EXECUTION_CANCELLED: "cancelled",
}


def fold(
    state: ExecutionState, event: Event, payload: msgspec.Struct | None = None
) -> ExecutionState:
    """Apply one decision event to `state` (in place) and return it.

    `payload` is the event's payload already typed (the engine passes the Struct it just
    encoded); when None it is decoded from `event.payload`. Events of other types (the
    runner's) change nothing.
    """
    fold_one = _FOLDS.get(event.type)
    if fold_one is not None:
        handler, kind = fold_one
        if payload is None:
            payload = msgspec.convert(event.payload or {}, kind)
        handler(state, event, payload)
    if event.version is not None:
        state.seq = event.version
    return state


def _execution_started(state: ExecutionState, event: Event, p: Any) -> None:
    assert isinstance(p, pl.ExecutionStarted)
    state.status = "running"
    state.path = p.path
    state.version = p.version
    state.workload = p.workload
    state.parent_execution_id = p.parent_execution_id
    state.parent_command_id = p.parent_command_id
    state.depth = 0 if p.depth is UNSET else p.depth
    state.root_execution_id = None if p.root_execution_id is UNSET else p.root_execution_id
    state.return_step = None if p.return_step is UNSET else p.return_step
    state.restarted_from = None if p.restarted_from is UNSET else p.restarted_from
    if p.restore:
        _restore(state, p.restore)
    if p.routes:
        _add_routes(state, p.routes)


def _restore(state: ExecutionState, snapshot: dict[str, Any]) -> None:
    """Load what a restarted execution keeps from the one it restarts (see restart.py)."""
    for name, data in snapshot.get("steps", {}).items():
        state.steps[name] = msgspec.convert(data, StepState)
    state.variables.update(snapshot.get("vars") or {})
    for name, arrivals in (snapshot.get("waiting") or {}).items():
        state.waiting.setdefault(name, []).extend(arrivals)
    state.last_step = snapshot.get("last_step")


def _execution_ended(state: ExecutionState, event: Event, p: Any) -> None:
    assert isinstance(p, pl.ExecutionEnded)
    state.status = _ENDINGS[event.type]
    state.result = p.result
    state.error = event.error
    state.timers.clear()


def _step_started(state: ExecutionState, event: Event, p: Any) -> None:
    assert event.step is not None and isinstance(p, pl.StepStarted)
    step = state.step_state(event.step)
    step.status = "running"
    step.activation = p.activation
    step.args = p.args
    step.error = None
    if p.items is not UNSET:
        step.loop = LoopState(items=p.items, results=[None] * len(p.items))
    elif p.paginate:
        step.loop = LoopState(strategy=p.paginate.strategy)
    else:
        step.loop = None
    state.waiting.pop(event.step, None)


def _command_issued(state: ExecutionState, event: Event, p: Any) -> None:
    assert event.step is not None and event.command_id is not None
    assert isinstance(p, pl.CommandIssuedPayload)
    index = None if p.index is UNSET else p.index
    phase: Phase = "tool" if p.phase is UNSET else p.phase
    data = None if p.data is UNSET else p.data
    state.pending[event.command_id] = PendingCommand(
        step=event.step,
        activation=p.activation,
        attempt=p.attempt,
        args=p.args,
        index=index,
        phase=phase,
        child=None if p.child is UNSET else p.child,
        overrides={} if p.overrides is UNSET else p.overrides,
        rule=None if data is None else data.rule,
        data=None if data is None else data.result,
        error=None if data is None or data.error is UNSET else data.error,
    )
    loop = state.step_state(event.step).loop
    if loop is not None and index is not None and phase == "tool" and p.attempt == 1:
        loop.issued = max(loop.issued, index + 1)


def _step_item(state: ExecutionState, event: Event, p: Any) -> None:
    """One loop item or page ended (its result or error is in the event)."""
    assert event.step is not None and isinstance(p, pl.StepItem)
    if event.command_id is not None:
        state.pending.pop(event.command_id, None)
    if p.vars:
        state.variables.update(p.vars)
    loop = state.step_state(event.step).loop
    if loop is None:
        return  # a `case` rule ended one call of the step and made another
    if p.routes:
        loop.routes[p.index] = p.routes
    if p.rows:
        loop.rows += p.rows
    if p.continued:
        return  # a rule's retry or sink carries the item on
    loop.done += 1
    if p.handled:
        loop.handled += 1
    if event.error is not None:
        loop.failed += 1
        if len(loop.errors) < _KEPT_ERRORS:
            loop.errors.append({"index": p.index, **event.error})
        if not p.tolerated:
            loop.stopping = True
        value: Any = {"error": event.error}
    else:
        value = None if p.result is UNSET else p.result
    if loop.items is not None:
        loop.results[p.index] = value
    elif p.part is not UNSET:
        loop.merged = merge(loop.merged, p.part, loop.strategy)


def _step_completed(state: ExecutionState, event: Event, p: Any) -> None:
    assert event.step is not None and isinstance(p, pl.StepCompleted)
    step = _step_ended(state, event, p.vars)
    step.status = "completed"
    step.result = p.result
    step.ran_tool = p.tool
    if step.ran_tool:
        state.last_step = event.step
    _add_routes(state, p.routes)


def _step_failed(state: ExecutionState, event: Event, p: Any) -> None:
    assert event.step is not None and isinstance(p, pl.StepFailed)
    step = _step_ended(state, event, None if p.vars is UNSET else p.vars)
    step.status = "failed"
    step.error = event.error
    _add_routes(state, p.routes)


def _step_ended(state: ExecutionState, event: Event, variables: dict[str, Any] | None) -> StepState:
    assert event.step is not None
    step = state.step_state(event.step)
    if event.command_id is not None:
        state.pending.pop(event.command_id, None)
    if variables:
        state.variables.update(variables)
    step.loop = None
    return step


def _timer_scheduled(state: ExecutionState, event: Event, p: Any) -> None:
    assert isinstance(p, TimerState)
    state.timers[p.name] = p
    failed = p.retry.get("failed_command")
    if failed is not None:
        state.pending.pop(failed, None)


def _timer_fired(state: ExecutionState, event: Event, p: Any) -> None:
    assert isinstance(p, pl.TimerFired)
    state.timers.pop(p.name, None)


def _add_routes(state: ExecutionState, routes: list[pl.Route]) -> None:
    for route in routes:
        state.waiting.setdefault(route.step, []).append(route.args)


_Fold = Callable[[ExecutionState, Event, Any], None]

_FOLDS: dict[str, tuple[_Fold, type[msgspec.Struct]]] = {
    ev.EXECUTION_STARTED: (_execution_started, pl.ExecutionStarted),
    ev.EXECUTION_COMPLETED: (_execution_ended, pl.ExecutionEnded),
    ev.EXECUTION_FAILED: (_execution_ended, pl.ExecutionEnded),
    ev.EXECUTION_CANCELLED: (_execution_ended, pl.ExecutionEnded),
    ev.STEP_STARTED: (_step_started, pl.StepStarted),
    ev.COMMAND_ISSUED: (_command_issued, pl.CommandIssuedPayload),
    ev.STEP_ITEM: (_step_item, pl.StepItem),
    ev.STEP_COMPLETED: (_step_completed, pl.StepCompleted),
    ev.STEP_FAILED: (_step_failed, pl.StepFailed),
    ev.TIMER_SCHEDULED: (_timer_scheduled, TimerState),
    ev.TIMER_FIRED: (_timer_fired, pl.TimerFired),
}


def payload_type(event_type: str) -> type[msgspec.Struct] | None:
    """The Struct `fold` reads an event of this type's payload as (None: it ignores it)."""
    found = _FOLDS.get(event_type)
    return None if found is None else found[1]


def replay(execution_id: int, events: Iterable[Event]) -> ExecutionState:
    """Rebuild an execution's state from its decision events, in version order."""
    state = ExecutionState(execution_id=execution_id)
    for event in events:
        fold(state, event)
    return state
