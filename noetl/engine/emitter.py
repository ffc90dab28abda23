"""Recording a decision: `Decision`, and the `Emitter` that numbers and folds events.

Invariant: every event gets the next version (`state.seq + 1`) and is folded into the
state before anything else is decided, so the next question sees it; the emitter (and the
run built on it, `run.py`) is the only thing that changes the state during a decision.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from noetl import keys
from noetl.engine import events as ev
from noetl.engine.commands import parent_notice
from noetl.engine.events import Event
from noetl.engine.payloads import ExecutionEnded, ExecutionStarted, plain
from noetl.engine.state import ExecutionState, TimerState, fold
from noetl.messages import (
    ChildCompleted,
    CommandIssued,
    ErrorInfo,
    StartExecution,
    TerminalStatus,
)


class Decision(msgspec.Struct, kw_only=True):
    """The outcome of one `decide`: events to commit, then messages to publish.

    `duplicate` means the message had already been acted on (a redelivery): nothing is
    written, and the shell may republish the pending commands, which dedup makes harmless.
    """

    events: list[Event] = []
    commands: list[CommandIssued] = []
    children: list[StartExecution] = []
    timers: list[TimerState] = []
    parent_notice: ChildCompleted | None = None
    # Executions ended with work in flight: runners are told to stop, children cancelled.
    stop_running: bool = False
    # The execution ended: runners release what they keep for it (python workers).
    ended: bool = False
    cancel_children: list[int] = []
    duplicate: bool = False

    @property
    def projection_changed(self) -> bool:
        """True when the execution row (status, result) must be written with the events."""
        return any(e.type.startswith("execution.") for e in self.events)


class Emitter:
    """Records events of one execution: numbers each, folds it, keeps it for the commit."""

    def __init__(self, state: ExecutionState, now: float) -> None:
        self.state = state
        self.now = now
        self.events: list[Event] = []
        self.commands: list[CommandIssued] = []
        self.children: list[StartExecution] = []
        self.timers: list[TimerState] = []
        self.duplicate = False

    def emit(self, event: Event, payload: msgspec.Struct | None = None) -> None:
        """Give `event` the next version and its typed `payload` (see payloads.py), and
        fold it into the state."""
        self.state.seq += 1
        event.version = self.state.seq
        if payload is not None:
            event.payload = plain(payload)
        self.events.append(event)
        fold(self.state, event, payload)

    def end_execution(
        self,
        status: TerminalStatus,
        *,
        error: ErrorInfo | None = None,
        result: Any = None,
    ) -> None:
        """Record the execution's end (completed, failed or cancelled)."""
        kind = {
            "completed": ev.EXECUTION_COMPLETED,
            "failed": ev.EXECUTION_FAILED,
            "cancelled": ev.EXECUTION_CANCELLED,
        }[status]
        self.emit(
            Event(
                type=kind,
                dedup_key=keys.EXECUTION_ENDED_KEY,
                status=status,
                error=None if error is None else error.record(),
            ),
            ExecutionEnded(result=result) if status == "completed" else None,
        )

    def decision(self) -> Decision:
        """What was decided. An execution that ended sends no further commands; what is in
        flight is stopped and a waiting parent is told."""
        state = self.state
        decision = Decision(
            events=self.events,
            commands=self.commands,
            children=self.children,
            timers=self.timers,
            duplicate=self.duplicate,
        )
        if (
            self.events
            and not state.running
            and any(e.type.startswith("execution.") for e in self.events)
        ):
            decision.stop_running = bool(state.pending)
            decision.ended = True
            decision.cancel_children = [
                p.child for p in state.pending.values() if p.child is not None
            ]
            decision.commands = []
            decision.children = []
            if state.parent_execution_id is not None and state.parent_command_id is not None:
                decision.parent_notice = parent_notice(state, self.now)
        return decision


def refuse_start(state: ExecutionState, message: StartExecution, error: ErrorInfo) -> Decision:
    """Record a start that cannot run (its playbook cannot be loaded, its parent ended, its
    tree is full) as a failed execution, so it is visible (and a waiting parent is told)
    instead of vanishing."""
    if state.status != "new":
        return Decision(duplicate=True)
    run = Emitter(state, message.at)
    run.emit(
        Event(
            type=ev.EXECUTION_STARTED,
            dedup_key=keys.EXECUTION_STARTED_KEY,
            status="running",
        ),
        ExecutionStarted(
            path=message.path,
            version=message.version or 0,
            workload={},
            parent_execution_id=message.parent_execution_id,
            parent_command_id=message.parent_command_id,
            depth=message.depth or UNSET,
            root_execution_id=UNSET
            if message.root_execution_id is None
            else message.root_execution_id,
        ),
    )
    run.end_execution("failed", error=error)
    return run.decision()
