"""`decide`: what an execution does next, given its state and one message.

Pure and deterministic: no clock, no randomness, no I/O. Time arrives in messages (`at`),
jitter is derived from ids. The same state and message give the same events and the same
commands with the same ids, which is what lets a coordinator crash anywhere and a successor
redo its work without doing anything twice.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import msgspec

from noetl import blobs, render
from noetl.dsl import Edge, Else, Graph, Loop, Playbook, Retry, Step, When, script_file
from noetl.engine import events as ev
from noetl.engine.events import Event
from noetl.engine.ids import child_execution_id
from noetl.engine.ids import command_id as make_command_id
from noetl.engine.iteration import backoff_delay, extract, merge
from noetl.engine.state import ExecutionState, PendingCommand, TimerState, fold
from noetl.errors import RenderError
from noetl.messages import (
    CancelExecution,
    ChildCompleted,
    CommandCompleted,
    CommandFailed,
    CommandIssued,
    ExecMessage,
    StartExecution,
    Timer,
    Wake,
)

END = "end"
START = "start"
EXECUTION_TIMEOUT = "execution.timeout"


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
    cancel_children: list[int] = []
    duplicate: bool = False

    @property
    def projection_changed(self) -> bool:
        """True when the execution row (status, result) must be written with the events."""
        return any(e.type.startswith("execution.") for e in self.events)


class LoopSpec(msgspec.Struct, frozen=True):
    """A step's iteration, from `loop` or from the older `iterator` tool."""

    items: Any  # the `in` / `collection` template or value; None for pagination
    iterator: str
    concurrency: int
    continue_on_error: bool
    paginate: bool = False


class Engine:
    """The meaning of one pinned playbook version: decides for any of its executions."""

    def __init__(
        self, playbook: Playbook, *, version: int, files: Mapping[str, str] | None = None
    ) -> None:
        self.playbook = playbook
        # Script files registered with the playbook, by normalised relative path.
        self.files = {posixpath.normpath(k): v for k, v in (files or {}).items()}
        self.version = version
        self.path = playbook.catalog_path
        self.graph = Graph.of(playbook)
        self._order = {s.step: i for i, s in enumerate(playbook.workflow)}
        self._steps: dict[str, Step] = {s.step: s for s in playbook.workflow}

    def decide(
        self, state: ExecutionState, message: ExecMessage, values: Mapping[str, Any] | None = None
    ) -> Decision:
        """Decide the next events and messages; `state` is advanced by folding the events.

        `values` are the stored large values (by digest) that results in the state or the
        message refer to; content-addressed, so they keep the decision deterministic.
        If the caller cannot commit the events, it must discard `state` and replay.
        """
        run = _Run(self, state, message.at, values or {})
        if isinstance(message, StartExecution):
            run.start(message)
        elif isinstance(message, CommandCompleted):
            run.completed(message.command_id, message.result, message.meta)
        elif isinstance(message, CommandFailed):
            run.failed(message.command_id, message.error)
        elif isinstance(message, ChildCompleted):
            run.child(message)
        elif isinstance(message, Timer):
            run.timer(message.name)
        elif isinstance(message, CancelExecution):
            run.cancel(message)
        elif isinstance(message, Wake):
            run.wake()
        return run.decision()

    # -- queries used by the shell ------------------------------------------------------

    def pending_commands(self, state: ExecutionState) -> list[CommandIssued]:
        """The runner messages of every issued command without a consumed outcome."""
        return [
            self.command_message(state, cid) for cid, p in state.pending.items() if p.child is None
        ]

    def pending_children(self, state: ExecutionState) -> list[StartExecution]:
        """The start messages of every child execution still awaited."""
        return [
            self.child_message(state, cid)
            for cid, p in state.pending.items()
            if p.child is not None
        ]

    def command_message(self, state: ExecutionState, command_id: str) -> CommandIssued:
        """Rebuild the message of a pending command from the state (for republishing)."""
        pending = state.pending[command_id]
        step = self._steps[pending.step]
        tool, args, timeout = self.resolve_tool(step)
        locals_ = self._locals(state, step, pending)
        sink = None
        if pending.phase == "sink" and pending.rule is not None:
            tool, args = dict(step.case[pending.rule].then.sink or {}), {}
            locals_ = {"result": pending.data}
        elif pending.phase == "sink":
            tool, args = dict(step.sink or {}), {}
            locals_ = {"result": self._loop_result(state, step)}
        elif step.sink is not None and (
            self.loop_of(step) is None or step.sink.get("per_item") or step.sink.get("per_page")
        ):
            sink = step.sink
        names = (
            render.referenced_names(tool)
            | render.referenced_names(args)
            | render.referenced_names(sink)
        )
        results = state.results()
        context: dict[str, Any] = {
            "workload": state.workload,
            "vars": state.variables,
            "steps": {n: results[n] for n in sorted(names) if n in results},
        }
        if locals_:
            context["locals"] = locals_
        return CommandIssued(
            execution_id=state.execution_id,
            dedup_id=command_id,
            command_id=command_id,
            step=pending.step,
            kind="sink" if pending.phase == "sink" else str(tool.get("kind", "")),
            tool=tool,
            args=args,
            edge_args=pending.args,
            context=context,
            timeout=timeout,
            attempt=pending.attempt,
            path=self.path,
            version=self.version,
            index=pending.index,
            overrides=pending.overrides,
            sink=sink,
            credentials=step.credentials,
            files=self._files_of(tool),
        )

    def _files_of(self, tool: Mapping[str, Any]) -> dict[str, str]:
        """The registered file a tool's `script` names, keyed as the tool names it."""
        uri = script_file(tool)
        if uri is None:
            return {}
        text = self.files.get(posixpath.normpath(uri))
        return {} if text is None else {uri: text}

    def child_message(self, state: ExecutionState, command_id: str) -> StartExecution:
        """Rebuild the start message of a pending child execution."""
        pending = state.pending[command_id]
        step = self._steps[pending.step]
        tool, args, timeout = self.resolve_tool(step)
        assert pending.child is not None
        context = self._context(state, args=pending.args, extra=self._locals(state, step, pending))
        where = f"step `{step.step}`"
        rendered = render.render(args, context, where=f"{where} args")
        assert isinstance(rendered, dict)
        rendered.update(pending.args)
        version = render.render(tool.get("version"), context, where=f"{where} tool.version")
        return StartExecution(
            execution_id=pending.child,
            dedup_id=f"start:{pending.child}",
            path=str(render.render(tool["path"], context, where=f"{where} tool.path")),
            version=None if version in (None, "") else int(version),
            workload=rendered,
            parent_execution_id=state.execution_id,
            parent_command_id=command_id,
            return_step=tool.get("return_step"),
            timeout=timeout,
        )

    def resolve_tool(self, step: Step) -> tuple[dict[str, Any], dict[str, Any], float | None]:
        """The tool block (without args), the raw layered args and the timeout of a step.

        Args are layered, later winning: the tool's args, then the step's args. A workbook
        step takes the task's tool, args and timeout; an `iterator` step its `task`.
        """
        assert step.tool is not None
        tool = dict(step.tool)
        timeout = step.timeout
        args: dict[str, Any] = {}
        if tool.get("kind") == "iterator":
            task = tool.get("task") or {}
            tool = dict(task.get("tool", task))
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

    def retry_of(self, step: Step) -> Retry | None:
        """The retry policy of a step (its own, else its workbook task's)."""
        if step.retry is not None:
            return step.retry
        if step.tool is not None and step.tool.get("kind") == "workbook":
            return self.playbook.task(str(step.tool["name"])).retry
        return None

    def loop_of(self, step: Step) -> LoopSpec | None:
        """How the step iterates, if it does."""
        loop: Loop | None = step.loop
        if loop is not None:
            return LoopSpec(
                items=loop.in_,
                iterator=loop.iterator,
                concurrency=1 if loop.mode == "sequential" else loop.max_concurrency,
                continue_on_error=loop.continue_on_error,
                paginate=loop.pagination is not None,
            )
        tool = step.tool or {}
        if tool.get("kind") == "iterator":
            mode = tool.get("mode", "sequential")
            limit = int(tool.get("max_concurrency") or 16)
            return LoopSpec(
                items=tool.get("collection"),
                iterator=str(tool.get("element", "item")),
                concurrency=1 if mode == "sequential" else limit,
                continue_on_error=bool(tool.get("continue_on_error", False)),
            )
        return None

    def step(self, name: str) -> Step:
        """The step named `name`."""
        return self._steps[name]

    def order(self, name: str) -> int:
        """Declaration index of a step: the tie-breaker that keeps decisions deterministic."""
        return self._order[name]

    # -- template contexts --------------------------------------------------------------

    def _context(
        self,
        state: ExecutionState,
        *,
        args: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        variables: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        results = state.results()
        if values:
            results = {name: blobs.resolve(value, values) for name, value in results.items()}
        return render.build_context(
            workload=state.workload,
            variables=state.variables if variables is None else variables,
            steps=results,
            execution_id=str(state.execution_id),
            args=args,
            extra=extra,
        )

    def _locals(self, state: ExecutionState, step: Step, pending: PendingCommand) -> dict[str, Any]:
        """The loop variables of an item command: the iterator name and `loop`."""
        spec = self.loop_of(step)
        loop = state.step_state(step.step).loop
        if spec is None or pending.index is None or loop is None or loop.items is None:
            return {}
        index, length = pending.index, len(loop.items)
        return {
            spec.iterator: loop.items[index],
            "loop": {
                "index": index,
                "first": index == 0,
                "last": index == length - 1,
                "length": length,
            },
        }

    def _loop_result(self, state: ExecutionState, step: Step) -> Any:
        loop = state.step_state(step.step).loop
        if loop is None:
            return None
        return loop.results if loop.items is not None else loop.merged


class _Run:
    """One decision in the making: emits events, folding each into the state at once."""

    def __init__(
        self, engine: Engine, state: ExecutionState, now: float, values: Mapping[str, Any]
    ) -> None:
        self.engine = engine
        self.state = state
        self.now = now
        self.values = values
        self.events: list[Event] = []
        self.commands: list[CommandIssued] = []
        self.children: list[StartExecution] = []
        self.timers: list[TimerState] = []
        self.duplicate = False

    def decision(self) -> Decision:
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
            decision.cancel_children = [
                p.child for p in state.pending.values() if p.child is not None
            ]
            decision.commands = []
            decision.children = []
            if state.parent_execution_id is not None and state.parent_command_id is not None:
                decision.parent_notice = parent_notice(state, self.now)
        return decision

    def context(self, **kwargs: Any) -> dict[str, Any]:
        """The template context of this execution, large values resolved."""
        return self.engine._context(self.state, values=self.values, **kwargs)

    def value(self, result: Any) -> Any:
        """A result as templates see it: large values resolved (events keep the reference)."""
        return blobs.resolve(result, self.values) if self.values else result

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
        failure = None
        try:
            workload = self._workload(message.workload)
        except RenderError as exc:
            workload = dict(message.workload)
            failure = {"type": "render", "message": str(exc)}
        playbook = self.engine.playbook
        if (
            failure is None
            and message.return_step is not None
            and (message.return_step not in self.engine._steps)
        ):
            failure = {
                "type": "return_step",
                "message": f"return_step `{message.return_step}` is not a step of "
                f"playbook `{self.engine.path}`",
            }
        self.emit(
            Event(
                type=ev.EXECUTION_STARTED,
                dedup_key="execution.started",
                status="running",
                payload={
                    "path": self.engine.path,
                    "version": self.engine.version,
                    "workload": workload,
                    "parent_execution_id": message.parent_execution_id,
                    "parent_command_id": message.parent_command_id,
                    "return_step": message.return_step,
                    **(
                        {"restarted_from": message.restarted_from, "restore": message.restore}
                        if message.restore is not None
                        else {}
                    ),
                    "routes": []
                    if failure or message.restore is not None
                    else [{"step": START, "args": {}}],
                },
            )
        )
        if failure is not None:
            self._end_execution("failed", error=failure)
            return
        timeout = message.timeout or playbook.metadata.timeout
        if timeout:
            self._schedule(
                TimerState(
                    name=EXECUTION_TIMEOUT, due_at=self.now + timeout, action="execution_timeout"
                )
            )
        self.advance()

    def completed(self, command_id: str, result: Any, meta: Mapping[str, Any]) -> None:
        pending = self._pending(command_id)
        if pending is None:
            return
        rows = int((meta.get("sink") or {}).get("rows", 0))
        step = self.engine.step(pending.step)
        if pending.phase == "sink" and pending.rule is not None:
            rule = step.case[pending.rule]
            self._complete_step(
                step,
                command_id,
                pending.data,
                sink={"rows": rows},
                routes=self._edges(
                    rule.then.next, self._case_context(pending, pending.data, None, "call.done")
                ),
            )
        elif pending.phase == "sink":
            self._complete_step(
                step, command_id, self.engine._loop_result(self.state, step), sink={"rows": rows}
            )
        elif pending.index is not None and self.engine.loop_of(step) is not None:
            self._item_done(command_id, pending, result=result, rows=rows)
        elif not (step.case and self._case(step, command_id, pending, result, None)):
            self._complete_step(
                step, command_id, result, sink={"rows": rows} if "sink" in meta else None
            )

    def failed(self, command_id: str, error: Mapping[str, Any]) -> None:
        pending = self._pending(command_id)
        if pending is None:
            return
        error = {"type": "error", "message": "the tool failed", **error}
        if self._retry(command_id, pending, error):
            return
        step = self.engine.step(pending.step)
        if (
            pending.index is not None
            and pending.phase == "tool"
            and self.engine.loop_of(step) is not None
        ):
            self._item_done(command_id, pending, error=error)
        elif not (
            step.case
            and pending.phase == "tool"
            and self._case(step, command_id, pending, None, error)
        ):
            self._fail_step(pending.step, command_id, error)

    def child(self, message: ChildCompleted) -> None:
        if message.status == "completed":
            self.completed(message.command_id, message.result, {})
            return
        child_error = message.error or {}
        self.failed(
            message.command_id,
            {
                "type": "child",
                "message": f"child execution {message.child_execution_id} "
                f"{message.status}: {child_error.get('message', '')}".rstrip(": "),
                "child_execution_id": str(message.child_execution_id),
                "child_error": child_error,
            },
        )

    def timer(self, name: str) -> None:
        timer = self.state.timers.get(name)
        if timer is None or not self.state.running:
            self.duplicate = True
            return
        self._fire(timer)

    def cancel(self, message: CancelExecution) -> None:
        if not self.state.running:
            self.duplicate = True
            return
        self._end_execution("cancelled", error={"type": "cancelled", "message": message.reason})

    def wake(self) -> None:
        if not self.state.running:
            self.duplicate = True
            return
        before = len(self.events)
        self.advance()
        self.duplicate = len(self.events) == before

    def _pending(self, command_id: str) -> PendingCommand | None:
        pending = self.state.pending.get(command_id)
        if pending is None or not self.state.running:
            self.duplicate = True
            return None
        return pending

    # -- timers and retries -------------------------------------------------------------

    def _schedule(self, timer: TimerState) -> None:
        self.emit(
            Event(
                type=ev.TIMER_SCHEDULED,
                dedup_key=f"timer.scheduled:{timer.name}",
                step=timer.step,
                payload=msgspec.to_builtins(timer),
            )
        )
        self.timers.append(timer)

    def _fire(self, timer: TimerState) -> None:
        self.emit(
            Event(
                type=ev.TIMER_FIRED,
                dedup_key=f"timer.fired:{timer.name}",
                step=timer.step,
                payload={"name": timer.name},
            )
        )
        if timer.action == "execution_timeout":
            self._end_execution(
                "failed", error={"type": "timeout", "message": "the execution ran past its timeout"}
            )
            return
        retry = timer.retry
        assert timer.step is not None
        self._issue(
            timer.step,
            retry["activation"],
            retry["attempt"],
            retry["args"],
            index=retry.get("index"),
            phase=retry.get("phase", "tool"),
            overrides=retry.get("overrides") or {},
        )

    def _retry(self, command_id: str, pending: PendingCommand, error: dict[str, Any]) -> bool:
        """Schedule the next attempt if the step's retry policy wants one."""
        step = self.engine.step(pending.step)
        policy = self.engine.retry_of(step)
        if policy is None or pending.attempt >= policy.max_attempts or pending.child:
            return False
        if policy.when:
            context = self.context(args=pending.args, extra={"error": error})
            try:
                wanted = render.truthy(
                    render.evaluate(policy.when, context, where=f"step `{step.step}` retry.when")
                )
            except RenderError:
                wanted = False
            if not wanted:
                return False
        retry_after = error.get("retry_after")
        delay = backoff_delay(
            policy,
            pending.attempt,
            command_id,
            float(retry_after) if isinstance(retry_after, int | float) else None,
        )
        timer = TimerState(
            name=f"retry:{command_id}",
            due_at=self.now + delay,
            action="retry",
            step=pending.step,
            retry={
                "failed_command": command_id,
                "activation": pending.activation,
                "attempt": pending.attempt + 1,
                "args": pending.args,
                "index": pending.index,
                "phase": pending.phase,
                "overrides": pending.overrides,
                "error": error,
            },
        )
        self._schedule(timer)
        if delay <= 0:
            self._fire(timer)
        return True

    # -- steps -------------------------------------------------------------------------

    def _start_step(self, name: str, arrivals: list[dict[str, Any]]) -> None:
        step = self.engine.step(name)
        edge_args: dict[str, Any] = {}
        for args in arrivals:
            edge_args.update(args)
        activation = self.state.step_state(name).activation + 1
        payload: dict[str, Any] = {"activation": activation, "args": edge_args}
        spec = self.engine.loop_of(step) if step.tool is not None else None
        failure = None
        if spec is not None and spec.paginate:
            assert step.loop is not None and step.loop.pagination is not None
            payload["paginate"] = {"strategy": step.loop.pagination.merge_strategy}
        elif spec is not None:
            try:
                items = render.render(
                    spec.items, self.context(args=edge_args), where=f"step `{name}` loop.in"
                )
            except RenderError as exc:
                items, failure = [], {"type": "render", "message": str(exc)}
            if failure is None and not isinstance(items, list | tuple):
                failure = {
                    "type": "loop",
                    "message": f"step `{name}`: loop.in must be a list, got "
                    f"{type(items).__name__} {_preview(items)}",
                }
                items = []
            payload["items"] = list(items)
        self.emit(
            Event(
                type=ev.STEP_STARTED,
                dedup_key=f"step.started:{name}:{activation}",
                step=name,
                status="running",
                payload=payload,
            )
        )
        if failure is not None:
            self._fail_step(name, None, failure)
        elif step.tool is None:
            self._complete_routing_step(step, activation, edge_args)
        elif spec is None:
            self._issue(name, activation, 1, edge_args)
        elif spec.paginate:
            self._issue(name, activation, 1, edge_args, index=0)
        else:
            self._fill_loop(step, spec)

    def _issue(
        self,
        name: str,
        activation: int,
        attempt: int,
        args: dict[str, Any],
        *,
        index: int | None = None,
        phase: str = "tool",
        overrides: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        step = self.engine.step(name)
        cid = make_command_id(self.state.execution_id, name, activation, attempt, index, phase)
        tool, _, _ = self.engine.resolve_tool(step)
        payload: dict[str, Any] = {
            "activation": activation,
            "attempt": attempt,
            "args": args,
            "kind": "sink" if phase == "sink" else tool.get("kind"),
        }
        if index is not None:
            payload["index"] = index
        if phase != "tool":
            payload["phase"] = phase
        if overrides:
            payload["overrides"] = overrides
        if data is not None:
            payload["data"] = data
        is_child = phase == "tool" and tool.get("kind") == "playbook"
        if is_child:
            payload["child"] = child_execution_id(cid)
        self.emit(
            Event(
                type=ev.COMMAND_ISSUED,
                dedup_key=f"command.issued:{cid}",
                step=name,
                command_id=cid,
                payload=payload,
            )
        )
        if is_child:
            try:
                self.children.append(self.engine.child_message(self.state, cid))
            except (RenderError, ValueError, KeyError) as exc:
                self.failed(cid, {"type": "render", "message": f"step `{name}`: {exc}"})
        else:
            self.commands.append(self.engine.command_message(self.state, cid))

    def _fill_loop(self, step: Step, spec: LoopSpec) -> None:
        """Issue items until `concurrency` are in flight or none are left; end the step when
        every item is done."""
        state = self.state
        loop = state.step_state(step.step).loop
        assert loop is not None and loop.items is not None
        activation = state.step_state(step.step).activation
        in_flight = sum(1 for p in state.pending.values() if p.step == step.step)
        in_flight += sum(1 for t in state.timers.values() if t.step == step.step)
        while not loop.stopping and loop.issued < len(loop.items) and in_flight < spec.concurrency:
            self._issue(
                step.step, activation, 1, state.step_state(step.step).args, index=loop.issued
            )
            in_flight += 1
        if in_flight == 0 and (loop.stopping or loop.issued == len(loop.items)):
            self._finish_loop(step, spec)

    def _item_done(
        self,
        command_id: str,
        pending: PendingCommand,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        rows: int = 0,
    ) -> None:
        step = self.engine.step(pending.step)
        spec = self.engine.loop_of(step)
        assert spec is not None and pending.index is not None
        if spec.paginate:
            self._page_done(step, command_id, pending, result, error, rows)
            return
        payload: dict[str, Any] = {"index": pending.index}
        if error is None:
            payload["result"] = result
        elif spec.continue_on_error:
            payload["tolerated"] = True
        if rows:
            payload["rows"] = rows
        self.emit(
            Event(
                type=ev.STEP_ITEM,
                dedup_key=f"step.item:{command_id}",
                step=step.step,
                command_id=command_id,
                payload=payload,
                error=error,
            )
        )
        self._fill_loop(step, spec)
        self.advance()

    def _page_done(
        self,
        step: Step,
        command_id: str,
        pending: PendingCommand,
        response: Any,
        error: dict[str, Any] | None,
        rows: int,
    ) -> None:
        assert step.loop is not None and step.loop.pagination is not None
        page = step.loop.pagination
        index = pending.index
        assert index is not None
        loop = self.state.step_state(step.step).loop
        assert loop is not None
        payload: dict[str, Any] = {"index": index}
        response = self.value(response)
        where = f"step `{step.step}` loop.pagination"
        next_overrides: dict[str, Any] | None = None
        if error is None:
            per_page = bool(step.sink and step.sink.get("per_page"))
            try:
                if not per_page:
                    payload["part"] = extract(response, page.merge_path)
                context = self.context(args=pending.args, extra={"response": response})
                more = render.truthy(
                    render.evaluate(page.continue_while, context, where=f"{where}.continue_while")
                )
                if more and index + 1 < page.max_iterations:
                    rendered = render.render(page.next_page, context, where=f"{where}.next_page")
                    assert isinstance(rendered, dict)
                    next_overrides = _deep_merge(pending.overrides, rendered)
                elif more:
                    payload["capped"] = page.max_iterations
            except KeyError as exc:
                error = {
                    "type": "pagination",
                    "message": f"{where}.merge_path: `{page.merge_path}` not found in "
                    f"page {index} (missing `{exc.args[0]}`); page: "
                    f"{_preview(response)}",
                }
            except RenderError as exc:
                error = {"type": "pagination", "message": str(exc)}
        if rows:
            payload["rows"] = rows
        payload["last"] = next_overrides is None
        self.emit(
            Event(
                type=ev.STEP_ITEM,
                dedup_key=f"step.item:{command_id}",
                step=step.step,
                command_id=command_id,
                payload=payload,
                error=error,
            )
        )
        if next_overrides is not None:
            self._issue(
                step.step,
                pending.activation,
                1,
                pending.args,
                index=index + 1,
                overrides=next_overrides,
            )
            return
        spec = self.engine.loop_of(step)
        assert spec is not None
        self._finish_loop(step, spec)

    def _finish_loop(self, step: Step, spec: LoopSpec) -> None:
        loop = self.state.step_state(step.step).loop
        assert loop is not None
        if loop.failed and not spec.continue_on_error:
            first = loop.errors[0] if loop.errors else {}
            total = loop.total if loop.total is not None else loop.done
            self._fail_step(
                step.step,
                None,
                {
                    "type": "loop",
                    "message": f"{loop.failed} of {total} items failed; first (item "
                    f"{first.get('index')}): {first.get('message', '')}",
                    "errors": loop.errors,
                },
            )
            return
        result = self.engine._loop_result(self.state, step)
        per_item = step.sink is not None and (
            step.sink.get("per_item") or step.sink.get("per_page")
        )
        if step.sink is not None and not per_item:
            activation = self.state.step_state(step.step).activation
            self._issue(step.step, activation, 1, {}, phase="sink")
            return
        extra: dict[str, Any] = {"sink": {"rows": loop.rows}} if per_item else {}
        if spec.paginate:
            extra["pages"] = loop.done
        self._complete_step(step, None, result, **extra)

    def _complete_step(
        self,
        step: Step,
        command_id: str | None,
        result: Any,
        sink: dict[str, Any] | None = None,
        routes: list[dict[str, Any]] | None = None,
        updates: dict[str, Any] | None = None,
        **facts: Any,
    ) -> None:
        """End a step that succeeded: `vars`, then routing (a `case` rule's `next` when one
        fired, else `step.exit` rules, else `next`)."""
        activation = self.state.step_state(step.step).activation
        shown = self.value(result)
        try:
            variables = {**self._vars(step, shown), **(updates or {})}
            if routes is None and step.case:
                fired = self._exit_rules(step, shown, variables)
                if fired is not None:
                    routes, variables = fired
            if routes is None:
                routes = self._routes(step, result=shown, error=None, variables=variables)
        except RenderError as exc:
            self._fail_step(step.step, command_id, {"type": "render", "message": str(exc)})
            return
        payload: dict[str, Any] = {
            "result": result,
            "vars": variables,
            "routes": routes,
            "tool": True,
            **facts,
        }
        if sink is not None:
            payload["sink"] = sink
        self.emit(
            Event(
                type=ev.STEP_COMPLETED,
                dedup_key=f"step.completed:{step.step}:{activation}",
                step=step.step,
                command_id=command_id,
                status="completed",
                payload=payload,
            )
        )
        self.advance()

    def _fail_step(
        self,
        name: str,
        command_id: str | None,
        error: dict[str, Any],
        *,
        handled: list[dict[str, Any]] | None = None,
        updates: dict[str, Any] | None = None,
    ) -> None:
        """End a step that failed. `handled` are the routes of a `case` rule that matched
        the error (possibly none: the branch then ends without failing the execution)."""
        step = self.engine.step(name)
        activation = self.state.step_state(name).activation
        error = {"step": name, **error}
        routes = (
            handled
            if handled is not None
            else self._routes(
                step, result=render.MISSING, error=error, variables=self.state.variables
            )
        )
        payload: dict[str, Any] = {"routes": routes}
        if updates:
            payload["vars"] = updates
        self.emit(
            Event(
                type=ev.STEP_FAILED,
                dedup_key=f"step.failed:{name}:{activation}",
                step=name,
                command_id=command_id,
                status="failed",
                payload=payload,
                error=error,
            )
        )
        if not routes and handled is None:
            self._end_execution("failed", error=error)
            return
        self.advance()

    def _complete_routing_step(
        self, step: Step, activation: int, edge_args: dict[str, Any]
    ) -> None:
        """A step without a tool only routes: it ends in the decision that starts it."""
        try:
            variables = self._vars(step, None, args=edge_args)
            routes = self._routes(
                step, result=None, error=None, variables=variables, args=edge_args
            )
        except RenderError as exc:
            self._fail_step(step.step, None, {"type": "render", "message": str(exc)})
            return
        self.emit(
            Event(
                type=ev.STEP_COMPLETED,
                dedup_key=f"step.completed:{step.step}:{activation}",
                step=step.step,
                status="completed",
                payload={"result": None, "vars": variables, "routes": routes, "tool": False},
            )
        )

    def _end_execution(
        self, status: str, *, error: dict[str, Any] | None = None, result: Any = None
    ) -> None:
        kind = {
            "completed": ev.EXECUTION_COMPLETED,
            "failed": ev.EXECUTION_FAILED,
            "cancelled": ev.EXECUTION_CANCELLED,
        }[status]
        self.emit(
            Event(
                type=kind,
                dedup_key="execution.ended",
                status=status,
                payload={"result": result} if status == "completed" else None,
                error=error,
            )
        )

    # -- case (the event-driven form of NoETL v2) --------------------------------------

    def _case_context(
        self,
        pending: PendingCommand,
        result: Any,
        error: dict[str, Any] | None,
        event: str,
        variables: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"event": {"name": event}}
        if error is None:
            extra["result"] = extra["response"] = result
        else:
            extra["error"] = error
        return self.context(args=pending.args, extra=extra, variables=variables)

    def _first_rule(self, step: Step, context: Mapping[str, Any]) -> int | None:
        for i, rule in enumerate(step.case):
            try:
                hit = render.truthy(
                    render.evaluate(rule.when, context, where=f"step `{step.step}` case[{i}].when")
                )
            except RenderError:
                hit = False  # as with `next` on failure: a rule that cannot be evaluated
            if hit:
                return i
        return None

    def _rule_updates(
        self, step: Step, index: int, context: Mapping[str, Any], result: Any
    ) -> dict[str, Any]:
        then = step.case[index].then
        where = f"step `{step.step}` case[{index}].then"
        updates = render.render(then.set, context, where=f"{where}.set")
        assert isinstance(updates, dict)
        if then.collect is not None and then.collect.into:
            into = then.collect.into
            part = extract(result, then.collect.path)
            previous = updates.get(into, self.state.variables.get(into))
            updates[into] = merge(previous, part, then.collect.strategy)
        return updates

    def _case(
        self,
        step: Step,
        command_id: str,
        pending: PendingCommand,
        result: Any,
        error: dict[str, Any] | None,
    ) -> bool:
        """Apply the first rule matching the call's end (`call.done` / `call.error`);
        False when none matches."""
        event = "call.done" if error is None else "call.error"
        result = self.value(result)
        context = self._case_context(pending, result, error, event)
        index = self._first_rule(step, context)
        if index is None:
            return False
        then = step.case[index].then
        try:
            updates = self._rule_updates(step, index, context, result)
            context = self._case_context(
                pending, result, error, event, {**self.state.variables, **updates}
            )
            if then.retry:
                overrides = render.render(
                    then.retry, context, where=f"step `{step.step}` case[{index}].then.retry"
                )
                assert isinstance(overrides, dict)
            routes = self._edges(then.next, context)
        except (RenderError, KeyError) as exc:
            message = (
                str(exc)
                if isinstance(exc, RenderError)
                else (
                    f"step `{step.step}` case[{index}].then.collect.path: missing `{exc.args[0]}`"
                )
            )
            self._fail_step(step.step, command_id, {"type": "case", "message": message})
            return True
        if then.retry:
            call = pending.index or 0
            self.emit(
                Event(
                    type=ev.STEP_ITEM,
                    dedup_key=f"step.item:{command_id}",
                    step=step.step,
                    command_id=command_id,
                    payload={"index": call, "vars": updates, "rule": index},
                    error=error,
                )
            )
            self._issue(
                step.step,
                pending.activation,
                1,
                pending.args,
                index=call + 1,
                overrides=_deep_merge(pending.overrides, overrides),
            )
            return True
        if error is not None:
            self._fail_step(step.step, command_id, error, handled=routes, updates=updates)
            return True
        if then.sink is not None:
            self.emit(
                Event(
                    type=ev.STEP_ITEM,
                    dedup_key=f"step.item:{command_id}",
                    step=step.step,
                    command_id=command_id,
                    payload={"index": pending.index or 0, "vars": updates, "rule": index},
                )
            )
            self._issue(
                step.step,
                pending.activation,
                1,
                {},
                phase="sink",
                data={"rule": index, "result": result},
            )
            return True
        self._complete_step(step, command_id, result, routes=routes, updates=updates)
        return True

    def _exit_rules(
        self,
        step: Step,
        result: Any,
        variables: dict[str, Any],
    ) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """Routes of the first matching `step.exit` rule, and the vars with its `set`."""
        pending = PendingCommand(
            step=step.step, activation=0, attempt=1, args=self.state.step_state(step.step).args
        )
        context = self._case_context(
            pending, result, None, "step.exit", {**self.state.variables, **variables}
        )
        index = self._first_rule(step, context)
        if index is None:
            return None
        updates = self._rule_updates(step, index, context, result)
        return self._edges(step.case[index].then.next, context), {**variables, **updates}

    def _edges(self, edges: list[Edge], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            {"step": e.step, "args": render.render(e.args, context, where=f"-> {e.step} args")}
            for e in edges
        ]

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
        busy = state.busy_steps()
        for name in sorted(state.waiting, key=self.engine.order):
            if name in busy:
                continue  # one activation at a time: the next waits for this one to end
            if graph.in_degree(name) <= 1:
                return name
            if any(graph.reaches(r, name) for r in busy):
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
        if not state.running or state.pending or state.waiting or state.busy_steps():
            return
        end = state.steps.get(END)
        if end is not None and end.status == "completed" and end.ran_tool:
            result = end.result
        elif state.last_step is not None:
            result = state.steps[state.last_step].result
        else:
            result = None
        self._end_execution("completed", result=result)

    def _routes(
        self,
        step: Step,
        *,
        result: Any,
        error: dict[str, Any] | None,
        variables: Mapping[str, Any],
        args: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Where the step goes next, with each edge's rendered args.

        On success every entry is evaluated in order (unconditional edges always fire, the
        first true `when` fires, `else` when none did). On failure only `when` entries
        count and a `when` that cannot be evaluated is false.
        """
        failed = error is not None
        extra: dict[str, Any] = {}
        if result is not render.MISSING:
            extra["result"] = result
        if error is not None:
            extra["error"] = error
        context = self.context(args=args, extra=extra, variables=variables)
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
        # As the graph has it: a step with no routing of its own goes on to `end`.
        routes_somewhere = step.next or any(rule.then.next for rule in step.case)
        if (
            not failed
            and not routes_somewhere
            and self.engine.playbook.has_end
            and step.step != END
        ):
            fired.append(Edge(step=END))
        return [
            {
                "step": edge.step,
                "args": render.render(edge.args, context, where=f"{where} -> {edge.step} args"),
            }
            for edge in fired
        ]

    def _vars(
        self, step: Step, result: Any, args: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        if not step.vars:
            return {}
        context = self.context(args=args, extra={"result": result})
        rendered = render.render(step.vars, context, where=f"step `{step.step}` vars")
        assert isinstance(rendered, dict)
        return rendered

    def _workload(self, given: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**self.engine.playbook.workload, **given}
        context = {**merged, "workload": merged, "execution_id": str(self.state.execution_id)}
        rendered = render.render(merged, context, where="workload")
        assert isinstance(rendered, dict)
        return rendered


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _preview(value: Any, limit: int = 200) -> str:
    text = msgspec.json.encode(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def parent_notice(state: ExecutionState, now: float) -> ChildCompleted:
    """The message telling a parent execution that this child ended."""
    result = state.result
    if state.return_step is not None and state.status == "completed":
        returned = state.steps.get(state.return_step)
        result = returned.result if returned is not None else None
    assert state.parent_execution_id is not None and state.parent_command_id is not None
    return ChildCompleted(
        execution_id=state.parent_execution_id,
        dedup_id=f"child:{state.execution_id}",
        at=now,
        command_id=state.parent_command_id,
        child_execution_id=state.execution_id,
        status=state.status,
        result=result,
        error=state.error,
    )


def refuse_start(state: ExecutionState, message: StartExecution, reason: str) -> Decision:
    """Record a start whose playbook cannot be loaded as a failed execution, so it is
    visible (and a waiting parent is told) instead of vanishing."""
    if state.status != "new":
        return Decision(duplicate=True)
    events = [
        Event(
            type=ev.EXECUTION_STARTED,
            dedup_key="execution.started",
            status="running",
            payload={
                "path": message.path,
                "version": message.version or 0,
                "workload": {},
                "parent_execution_id": message.parent_execution_id,
                "parent_command_id": message.parent_command_id,
            },
        ),
        Event(
            type=ev.EXECUTION_FAILED,
            dedup_key="execution.ended",
            status="failed",
            error={"type": "catalog", "message": reason},
        ),
    ]
    for event in events:
        state.seq += 1
        event.version = state.seq
        fold(state, event)
    decision = Decision(events=events)
    if state.parent_execution_id is not None and state.parent_command_id is not None:
        decision.parent_notice = parent_notice(state, message.at)
    return decision
