"""The execution engine: pure, deterministic `decide` and `fold`, no I/O."""

from noetl.engine.decide import Decision, Engine
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
    "replay",
]
