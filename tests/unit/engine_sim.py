"""A tiny in-memory driver of the pure engine, standing in for the actors in unit tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgspec

from noetl import dsl, keys
from noetl.engine import Decision, Engine, Event, ExecutionState, replay
from noetl.engine.state import TimerState
from noetl.messages import (
    ChildCompleted,
    CommandCompleted,
    CommandFailed,
    CommandIssued,
    ExecMessage,
    StartExecution,
    Timer,
)
from tests.support.playbooks import playbook_text

# A tool stand-in: given the command, return ("ok", result) or ("error", error dict).
Tool = Callable[[CommandIssued], tuple[str, Any]]
# A child stand-in: given the child's start message, return (status, result or error).
Child = Callable[[StartExecution], tuple[str, Any]]

EXECUTION_ID = 4242


def engine_of(text: str) -> Engine:
    """An engine for a playbook given as YAML text."""
    return Engine(dsl.load_text(text), version=1)


def playbook(body: str, workload: str = "{}", metadata: str = "{name: t}") -> str:
    """A playbook's YAML whose `workflow:` is `body`."""
    return playbook_text(body, metadata=metadata, workload=workload)


class Sim:
    """Runs an execution to its end, delivering outcomes in a chosen order.

    A fake clock advances by one second per message; timers fire when they are due.
    """

    def __init__(
        self,
        engine: Engine,
        tool: Tool,
        *,
        seed: int | None = None,
        workload: dict[str, Any] | None = None,
        child: Child | None = None,
        timeout: float | None = None,
    ) -> None:
        self.engine = engine
        self.tool = tool
        self.child = child
        self.state = ExecutionState(execution_id=EXECUTION_ID)
        self.events: list[Event] = []
        self.inbox: list[CommandIssued] = []
        self.children: list[StartExecution] = []
        self.timers: list[TimerState] = []
        self.rng = random.Random(seed)
        self.seed = seed
        self.workload = workload or {}
        self.timeout = timeout
        self.issued: list[CommandIssued] = []
        self.decisions: list[Decision] = []
        self.clock = 1000.0
        self.max_in_flight = 0

    def send(self, message: ExecMessage) -> list[Event]:
        self.clock += 1.0
        message.at = self.clock
        decision = self.engine.decide(self.state, message)
        self.decisions.append(decision)
        self.events.extend(decision.events)
        self.inbox.extend(decision.commands)
        self.issued.extend(decision.commands)
        self.children.extend(decision.children)
        self.timers.extend(decision.timers)
        self.max_in_flight = max(self.max_in_flight, len(self.inbox) + len(self.children))
        return decision.events

    def start(self) -> None:
        self.send(
            StartExecution(
                execution_id=EXECUTION_ID,
                dedup_id="start",
                path="p",
                workload=self.workload,
                timeout=self.timeout,
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

    def child_outcome(self, start: StartExecution) -> ExecMessage:
        assert self.child is not None and start.parent_command_id is not None
        status, value = self.child(start)
        return ChildCompleted(
            execution_id=EXECUTION_ID,
            dedup_id=keys.child_ended_id(start.execution_id),
            command_id=start.parent_command_id,
            child_execution_id=start.execution_id,
            status=status,
            result=value if status == "completed" else None,
            error=None if status == "completed" else value,
        )

    def step_once(self) -> bool:
        """Deliver one outcome, child end or due timer; False when nothing is left."""
        choices: list[Callable[[], ExecMessage]] = []
        for i in range(len(self.inbox)):
            choices.append(lambda i=i: self.outcome(self.inbox.pop(i)))
        for i in range(len(self.children)):
            choices.append(lambda i=i: self.child_outcome(self.children.pop(i)))
        if not choices and self.timers:
            timer = min(self.timers, key=lambda t: t.due_at)
            self.timers.remove(timer)
            self.clock = max(self.clock, timer.due_at)
            self.send(Timer(execution_id=EXECUTION_ID, dedup_id=timer.name, name=timer.name))
            return True
        if not choices:
            return False
        index = 0 if self.seed is None else self.rng.randrange(len(choices))
        self.send(choices[index]())
        return True

    def run(self, max_messages: int = 100_000) -> ExecutionState:
        self.start()
        for _ in range(max_messages):
            if not self.state.running or not self.step_once():
                break
        return self.state

    def steps_started(self) -> list[str]:
        return [e.step for e in self.events if e.type == "step.started" and e.step]

    def replayed(self) -> ExecutionState:
        return replay(EXECUTION_ID, self.events)


def assert_replays(sim: Sim) -> None:
    """Replaying the events the run recorded rebuilds its state exactly."""
    assert msgspec.to_builtins(sim.replayed()) == msgspec.to_builtins(sim.state)


# A paginated http step over `pages(total)`; MAX is replaced by the test.
PAGED = """
    - step: start
      tool: {kind: http, url: "http://api/items", params: {page: 1}}
      loop:
        pagination:
          continue_while: "{{ response.data.paging.hasMore }}"
          next_page: {params: {page: "{{ (response.data.paging.page | int) + 1 }}"}}
          merge_path: data.data
          max_iterations: MAX
"""


def pages(total: int) -> Tool:
    """A paged API stand-in: two items a page, `hasMore` until page `total`."""

    def tool(command: CommandIssued) -> tuple[str, Any]:
        page = command.overrides.get("params", {}).get("page", 1)
        return "ok", {
            "status_code": 200,
            "data": {
                "data": [page * 10 + i for i in range(2)],
                "paging": {"page": page, "hasMore": page < total},
            },
        }

    return tool
