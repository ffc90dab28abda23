"""A tiny in-memory driver of the pure engine, standing in for the actors in unit tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from noetl import dsl
from noetl.engine import Engine, Event, ExecutionState, replay
from noetl.messages import (
    CommandCompleted,
    CommandFailed,
    CommandIssued,
    ExecMessage,
    StartExecution,
)

# A tool stand-in: given the command, return ("ok", result) or ("error", error dict).
Tool = Callable[[CommandIssued], tuple[str, Any]]

EXECUTION_ID = 4242


def engine_of(text: str) -> Engine:
    """An engine for a playbook given as YAML text."""
    return Engine(dsl.load_text(text), version=1)


class Sim:
    """Runs an execution to its end, delivering outcomes in a chosen order."""

    def __init__(
        self,
        engine: Engine,
        tool: Tool,
        *,
        seed: int | None = None,
        workload: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.tool = tool
        self.state = ExecutionState(execution_id=EXECUTION_ID)
        self.events: list[Event] = []
        self.inbox: list[CommandIssued] = []
        self.rng = random.Random(seed)
        self.seed = seed
        self.workload = workload or {}
        self.issued: list[CommandIssued] = []

    def send(self, message: ExecMessage) -> list[Event]:
        decision = self.engine.decide(self.state, message)
        self.events.extend(decision.events)
        self.inbox.extend(decision.commands)
        self.issued.extend(decision.commands)
        return decision.events

    def start(self) -> None:
        self.send(
            StartExecution(
                execution_id=EXECUTION_ID, dedup_id="start", path="p", workload=self.workload
            )
        )

    def outcome(self, command: CommandIssued) -> ExecMessage:
        kind, value = self.tool(command)
        if kind == "ok":
            return CommandCompleted(
                execution_id=EXECUTION_ID,
                dedup_id=command.command_id,
                command_id=command.command_id,
                step=command.step,
                result=value,
            )
        return CommandFailed(
            execution_id=EXECUTION_ID,
            dedup_id=command.command_id,
            command_id=command.command_id,
            step=command.step,
            error=value,
        )

    def run(self, max_messages: int = 10_000) -> ExecutionState:
        self.start()
        for _ in range(max_messages):
            if not self.inbox:
                break
            index = 0 if self.seed is None else self.rng.randrange(len(self.inbox))
            self.send(self.outcome(self.inbox.pop(index)))
        return self.state

    def steps_started(self) -> list[str]:
        return [e.step for e in self.events if e.type == "step.started" and e.step]

    def replayed(self) -> ExecutionState:
        return replay(EXECUTION_ID, self.events)
