"""The execution engine: pure, deterministic `decide` and `fold`, no I/O."""

from noetl.engine.decide import Engine
from noetl.engine.emitter import Decision, refuse_start
from noetl.engine.events import TERMINAL_STATUSES, Event
from noetl.engine.state import ExecutionState, PendingCommand, StepState, fold, replay

__all__ = [
    "TERMINAL_STATUSES",
    "Decision",
    "Engine",
    "Event",
    "ExecutionState",
    "PendingCommand",
    "StepState",
    "fold",
    "refuse_start",
    "replay",
]
