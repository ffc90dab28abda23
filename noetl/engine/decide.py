"""`decide`: what an execution does next, given its state and one message.

Pure and deterministic: no clock, no randomness, no I/O. The same state and message give
the same events and the same commands with the same ids, which is what lets a coordinator
crash anywhere and a successor redo its work without doing anything twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from noetl import render
from noetl.dsl import Edge, Else, Graph, Playbook, Step, When
from noetl.engine import events as ev
from noetl.engine.events import Event
from noetl.engine.ids import command_id as make_command_id
from noetl.engine.state import ExecutionState, fold
from noetl.errors import RenderError
from noetl.messages import (
    CancelExecution,
    CommandCompleted,
    CommandFailed,
    CommandIssued,
    ExecMessage,
    StartExecution,
    Wake,
)

END = "end"
START = "start"


class Decision(msgspec.Struct, kw_only=True):
    """The outcome of one `decide`: events to commit, then commands to publish.

    `duplicate` means the message had already been acted on (a redelivery): nothing is
    written, and the shell may republish the pending commands, which dedup makes harmless.
    """

    events: list[Event] = []
    commands: list[CommandIssued] = []
    duplicate: bool = False

    @property
    def terminal(self) -> bool:
        """True when this decision ended the execution."""
        return any(e.type.startswith("execution.") and e.type != ev.EXECUTION_STARTED
                   for e in self.events)

    @property
    def projection_changed(self) -> bool:
        """True when the execution row (status, result) must be written with the events."""
        return any(e.type.startswith("execution.") for e in self.events)


class Engine:
    """The meaning of one pinned playbook version: decides for any of its executions."""

    def __init__(self, playbook: Playbook, *, version: int) -> None:
        self.playbook = playbook
        self.version = version
        self.path = playbook.catalog_path
        self.graph = Graph.of(playbook)
        self._order = {s.step: i for i, s in enumerate(playbook.workflow)}
        self._steps: dict[str, Step] = {s.step: s for s in playbook.workflow}

    # -- entry point -------------------------------------------------------------------

    def decide(self, state: ExecutionState, message: ExecMessage) -> Decision:
        """Decide the next events and commands; `state` is advanced by folding the events.

        If the caller cannot commit the events, it must discard `state` and replay.
        """
        run = _Run(self, state)
        if isinstance(message, StartExecution):
            run.start(message)
        elif isinstance(message, CommandCompleted):
            run.command_completed(message)
        elif isinstance(message, CommandFailed):
            run.command_failed(message)
        elif isinstance(message, CancelExecution):
            run.cancel(message)
        elif isinstance(message, Wake):
            run.wake()
        return Decision(events=run.events, commands=run.commands, duplicate=run.duplicate)

    # -- queries used by the shell ------------------------------------------------------

    def pending_commands(self, state: ExecutionState) -> list[CommandIssued]:
        """The command messages of every issued command without a consumed outcome."""
        return [self.command_message(state, cid) for cid in state.pending]

    def command_message(self, state: ExecutionState, command_id: str) -> CommandIssued:
        """Rebuild the message of a pending command from the state (for republishing)."""
        pending = state.pending[command_id]
        step = self._steps[pending.step]
        tool, args, timeout = self.resolve_tool(step)
        names = render.referenced_names(tool) | render.referenced_names(args)
        results = state.results()
        context = {
            "workload": state.workload,
            "vars": state.variables,
            "steps": {n: results[n] for n in sorted(names) if n in results},
        }
        return CommandIssued(
            execution_id=state.execution_id,
            dedup_id=command_id,
            command_id=command_id,
            step=pending.step,
            kind=str(tool.get("kind", "")),
            tool=tool,
            args=args,
            edge_args=pending.args,
            context=context,
            timeout=timeout,
            attempt=pending.attempt,
            path=self.path,
            version=self.version,
        )

    def resolve_tool(self, step: Step) -> tuple[dict[str, Any], dict[str, Any], float | None]:
        """The tool block (without args), the raw layered args and the timeout of a step.

        Args are layered, later winning: the tool's args, then the step's args. A workbook
        step takes the task's tool, args and timeout, with the step's args on top.
        """
        assert step.tool is not None
        tool = dict(step.tool)
        timeout = step.timeout
        args: dict[str, Any] = {}
        if tool.get("kind") == "workbook":
            task = self.playbook.task(str(tool["name"]))
            args.update(task.tool.get("args") or {})
            args.update(task.args)
            args.update(tool.get("args") or {})
            tool = dict(task.tool)
            timeout = timeout if timeout is not None else task.timeout
        else:
            args.update(tool.get("args") or {})
        tool.pop("args", None)
        args.update(step.args)
        if timeout is None and isinstance(tool.get("timeout"), int | float):
            timeout = float(tool["timeout"])
        return tool, args, timeout

    def step(self, name: str) -> Step:
        """The step named `name`."""
        return self._steps[name]

    def order(self, name: str) -> int:
        """Declaration index of a step: the tie-breaker that keeps decisions deterministic."""
        return self._order[name]


class _Run:
    """One decision in the making: emits events, folding each into the state at once."""

    def __init__(self, engine: Engine, state: ExecutionState) -> None:
        self.engine = engine
        self.state = state
        self.events: list[Event] = []
        self.commands: list[CommandIssued] = []
        self.duplicate = False

    def emit(self, event: Event) -> None:
        self.state.seq += 1
        event.version = self.state.seq
        self.events.append(event)
        fold(self.state, event)

    # -- messages ----------------------------------------------------------------------

    def start(self, message: StartExecution) -> None:
        if self.state.status != "new":
            self.duplicate = True
            return
        try:
            workload = self._workload(message.workload)
            failure = None
        except RenderError as exc:
            workload = dict(message.workload)
            failure = {"type": "render", "message": str(exc)}
        self.emit(Event(
            type=ev.EXECUTION_STARTED,
            dedup_key="execution.started",
            status="running",
            payload={
                "path": self.engine.path,
                "version": self.engine.version,
                "workload": workload,
                "parent_execution_id": message.parent_execution_id,
                "parent_command_id": message.parent_command_id,
                "routes": [] if failure else [{"step": START, "args": {}}],
            },
        ))
        if failure is not None:
            self.emit(Event(type=ev.EXECUTION_FAILED, dedup_key="execution.ended",
                            status="failed", error=failure))
            return
        self.advance()

    def command_completed(self, message: CommandCompleted) -> None:
        pending = self.state.pending.get(message.command_id)
        if pending is None or not self.state.running:
            self.duplicate = True
            return
        name = pending.step
        step = self.engine.step(name)
        try:
            variables = self._vars(step, message.result)
            routes = self._routes(step, result=message.result, error=None, variables=variables)
        except RenderError as exc:
            self._fail_step(name, message.command_id, {"type": "render", "message": str(exc)})
            return
        self.emit(Event(
            type=ev.STEP_COMPLETED,
            dedup_key=f"step.completed:{name}:{pending.activation}",
            step=name,
            command_id=message.command_id,
            status="completed",
            payload={"result": message.result, "vars": variables, "routes": routes, "tool": True},
        ))
        self.advance()

    def command_failed(self, message: CommandFailed) -> None:
        pending = self.state.pending.get(message.command_id)
        if pending is None or not self.state.running:
            self.duplicate = True
            return
        error = dict(message.error)
        error.setdefault("type", "error")
        error.setdefault("message", "the tool failed")
        self._fail_step(pending.step, message.command_id, error)

    def cancel(self, message: CancelExecution) -> None:
        if not self.state.running:
            self.duplicate = True
            return
        self.emit(Event(
            type=ev.EXECUTION_CANCELLED,
            dedup_key="execution.ended",
            status="cancelled",
            error={"type": "cancelled", "message": message.reason},
        ))

    def wake(self) -> None:
        if not self.state.running:
            self.duplicate = True
            return
        before = len(self.events)
        self.advance()
        self.duplicate = len(self.events) == before

    # -- steps -------------------------------------------------------------------------

    def _fail_step(self, name: str, command_id: str | None, error: dict[str, Any]) -> None:
        step = self.engine.step(name)
        activation = self.state.step_state(name).activation
        error = {"step": name, **error}
        routes = self._routes(step, result=render.MISSING, error=error,
                              variables=self.state.variables)
        self.emit(Event(
            type=ev.STEP_FAILED,
            dedup_key=f"step.failed:{name}:{activation}",
            step=name,
            command_id=command_id,
            status="failed",
            payload={"routes": routes},
            error=error,
        ))
        if not routes:
            self.emit(Event(
                type=ev.EXECUTION_FAILED,
                dedup_key="execution.ended",
                status="failed",
                error=error,
            ))
            return
        self.advance()

    def _start_step(self, name: str, arrivals: list[dict[str, Any]]) -> None:
        step = self.engine.step(name)
        edge_args: dict[str, Any] = {}
        for args in arrivals:
            edge_args.update(args)
        activation = self.state.step_state(name).activation + 1
        self.emit(Event(
            type=ev.STEP_STARTED,
            dedup_key=f"step.started:{name}:{activation}",
            step=name,
            status="running",
            payload={"activation": activation, "args": edge_args},
        ))
        if step.tool is None:
            self._complete_routing_step(step, activation, edge_args)
            return
        cid = make_command_id(self.state.execution_id, name, activation, 1)
        self.emit(Event(
            type=ev.COMMAND_ISSUED,
            dedup_key=f"command.issued:{cid}",
            step=name,
            command_id=cid,
            payload={"activation": activation, "attempt": 1, "args": edge_args,
                     "kind": step.tool.get("kind")},
        ))
        self.commands.append(self.engine.command_message(self.state, cid))

    def _complete_routing_step(self, step: Step, activation: int,
                               edge_args: dict[str, Any]) -> None:
        """A step without a tool only routes: it ends in the decision that starts it."""
        try:
            variables = self._vars(step, None, args=edge_args)
            routes = self._routes(step, result=None, error=None, variables=variables,
                                  args=edge_args)
        except RenderError as exc:
            self._fail_step(step.step, None, {"type": "render", "message": str(exc)})
            return
        self.emit(Event(
            type=ev.STEP_COMPLETED,
            dedup_key=f"step.completed:{step.step}:{activation}",
            step=step.step,
            status="completed",
            payload={"result": None, "vars": variables, "routes": routes, "tool": False},
        ))

    # -- routing -----------------------------------------------------------------------

    def advance(self) -> None:
        """Start every waiting step that is ready, until none is; then check completion."""
        while self.state.running:
            ready = self._next_ready()
            if ready is None:
                break
            self._start_step(ready, self.state.waiting[ready])
        self._maybe_complete()

    def _next_ready(self) -> str | None:
        state = self.state
        if not state.waiting:
            return None
        graph = self.engine.graph
        running = {p.step for p in state.pending.values()}
        for name in sorted(state.waiting, key=self.engine.order):
            if name in running:
                continue  # one activation at a time: the next waits for this one to end
            if graph.in_degree(name) <= 1:
                return name
            if any(graph.reaches(r, name) for r in running):
                continue
            blocked = any(
                other != name and graph.reaches(other, name) and not graph.reaches(name, other)
                for other in state.waiting
            )
            if not blocked:
                return name
        return None

    def _maybe_complete(self) -> None:
        state = self.state
        if not state.running or state.pending or state.waiting:
            return
        end = state.steps.get(END)
        if end is not None and end.status == "completed" and end.ran_tool:
            result = end.result
        elif state.last_step is not None:
            result = state.steps[state.last_step].result
        else:
            result = None
        self.emit(Event(
            type=ev.EXECUTION_COMPLETED,
            dedup_key="execution.ended",
            status="completed",
            payload={"result": result},
        ))

    def _routes(self, step: Step, *, result: Any, error: dict[str, Any] | None,
                variables: Mapping[str, Any],
                args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Where the step goes next, with each edge's rendered args.

        On success every entry is evaluated in order (unconditional edges always fire, the
        first true `when` fires, `else` when none did). On failure only conditional entries
        count and a `when` that cannot be evaluated is false.
        """
        failed = error is not None
        extra: dict[str, Any] = {}
        if result is not render.MISSING:
            extra["result"] = result
        if error is not None:
            extra["error"] = error
        context = render.build_context(
            workload=self.state.workload,
            variables=variables,
            steps=self.state.results(),
            execution_id=str(self.state.execution_id),
            args=args,
            extra=extra,
        )
        where = f"step `{step.step}` next"
        fired: list[Edge] = []
        matched = False
        for entry in step.next:
            if isinstance(entry, Edge):
                if not failed:
                    fired.append(entry)
            elif isinstance(entry, When):
                if matched:
                    continue
                try:
                    hit = render.truthy(render.evaluate(entry.when, context, where=where))
                except RenderError:
                    if not failed:
                        raise
                    hit = False
                if hit:
                    matched = True
                    fired.extend(entry.then)
            elif isinstance(entry, Else) and not matched and not failed:
                matched = True
                fired.extend(entry.then)
        if not failed and not step.next and self.engine.playbook.has_end and step.step != END:
            fired.append(Edge(step=END))
        return [
            {"step": edge.step,
             "args": render.render(edge.args, context, where=f"{where} -> {edge.step} args")}
            for edge in fired
        ]

    def _vars(self, step: Step, result: Any,
              args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if not step.vars:
            return {}
        context = render.build_context(
            workload=self.state.workload,
            variables=self.state.variables,
            steps=self.state.results(),
            execution_id=str(self.state.execution_id),
            args=args,
            extra={"result": result},
        )
        rendered = render.render(step.vars, context, where=f"step `{step.step}` vars")
        assert isinstance(rendered, dict)
        return rendered

    def _workload(self, given: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**self.engine.playbook.workload, **given}
        context = {**merged, "workload": merged, "execution_id": str(self.state.execution_id)}
        rendered = render.render(merged, context, where="workload")
        assert isinstance(rendered, dict)
        return rendered
