"""The life of a step within a decision: start, issue, loop, complete or fail, route on.

`StepRun` asks the pure modules (routing, rules, loops, commands) what follows and emits
each answer as an event. How a failed command is handled (retry, `case`, routing) is the
`Run`'s business (`run.py`): a step only reports it through `failed`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import msgspec

from noetl import blobs, keys, render
from noetl.engine import events as ev
from noetl.engine import routing, wire
from noetl.engine.commands import child_message, command_message, command_pool
from noetl.engine.context import loop_result, template_context
from noetl.engine.emitter import Emitter
from noetl.engine.events import Event
from noetl.engine.limits import DEFAULT_LIMITS, Limits
from noetl.engine.loops import loop_failure, loop_items, page_outcome
from noetl.engine.payloads import (
    CommandIssuedPayload,
    Paginate,
    Route,
    RuleCall,
    StepCompleted,
    StepFailed,
    StepItem,
    StepStarted,
    StepWarning,
)
from noetl.engine.plan import Plan, StepPlan
from noetl.engine.state import ExecutionState, PendingCommand
from noetl.errors import RenderError
from noetl.messages import ErrorInfo, Phase
from noetl.pools import DEFAULT_POOL


class RuleOutcome(msgspec.Struct, kw_only=True):
    """What a per-item `case` rule did to a loop item: which rule, the vars it set, the
    routes it named, and `handled` when it took the item's failure."""

    index: int
    updates: dict[str, Any] = {}
    routes: list[Route] = []
    handled: bool = False


class StepRun(Emitter, ABC):
    """A decision's step lifecycle over a compiled `Plan`."""

    def __init__(
        self,
        plan: Plan,
        state: ExecutionState,
        now: float,
        values: Mapping[str, Any],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(state, now)
        self.plan = plan
        self.values = values
        self.limits = limits

    @abstractmethod
    def failed(self, command_id: str, error: Mapping[str, Any]) -> None:
        """Command `command_id` failed with `error`."""

    @abstractmethod
    def end_rules(
        self, step: StepPlan, result: Any, variables: dict[str, Any], rule: int | None = None
    ) -> tuple[list[Route] | None, dict[str, Any], Any]:
        """The `case` rules met when a step that succeeded ends: its routes (None: its
        `next` decides), its vars and its result (`result` itself when unchanged); `rule`
        the `loop.done` rule already chosen (its sink ran)."""

    @abstractmethod
    def loop_sink_rule(self, step: StepPlan, result: Any) -> int | None:
        """The `loop.done` rule with a `sink` that fires at this loop's end, if any."""

    def context(self, **kwargs: Any) -> dict[str, Any]:
        """The template context of this execution, large values resolved."""
        return template_context(self.state, values=self.values, **kwargs)

    def value(self, result: Any) -> Any:
        """A result as templates see it: large values resolved (events keep the reference)."""
        return blobs.resolve(result, self.values) if self.values else result

    # -- routing -----------------------------------------------------------------------

    def advance(self) -> None:
        """Start every waiting step that is ready, until none is; then check completion."""
        while self.state.running:
            ready = routing.next_ready(self.plan, self.state)
            if ready is None:
                break
            self.start_step(ready, self.state.waiting[ready])
        if routing.finished(self.state):
            self.end_execution("completed", result=routing.final_result(self.state))

    def routes(
        self,
        step: StepPlan,
        *,
        result: Any,
        error: ErrorInfo | None,
        variables: Mapping[str, Any],
        args: Mapping[str, Any] | None = None,
    ) -> list[Route]:
        """Where the step goes next (see `routing.routes`); `result` MISSING on failure."""
        extra: dict[str, Any] = {}
        if result is not render.MISSING:
            extra["result"] = result
        if error is not None:
            extra["error"] = error.record()
        context = self.context(args=args, extra=extra, variables=variables)
        notes: list[str] = []
        found = routing.routes(self.plan, step, context, failed=error is not None, notes=notes)
        self.warn(step.name, notes)
        if error is None:
            wire.check(found, f"step `{step.name}` next")
        return found

    def step_vars(
        self, step: StepPlan, result: Any, args: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The step's rendered `vars` (they see its `result`)."""
        if not step.step.vars:
            return {}
        context = self.context(args=args, extra={"result": result})
        where = f"step `{step.name}` vars"
        rendered = render.render(step.step.vars, context, where=where)
        assert isinstance(rendered, dict)
        wire.check(rendered, where)
        return rendered

    def warn(self, name: str, notes: list[str]) -> None:
        """Record what a condition of step `name` noted (undefined names taken as false):
        a `step.warning` event, which changes nothing in the state."""
        if not notes:
            return
        self.emit(
            Event(
                type=ev.STEP_WARNING,
                dedup_key=keys.step_warning_key(name, self.state.seq + 1),
                step=name,
            ),
            StepWarning(warnings=list(dict.fromkeys(notes))),
        )

    # -- starting and issuing ----------------------------------------------------------

    def start_step(self, name: str, arrivals: list[dict[str, Any]]) -> None:
        """Start the next activation of `name` with the merged args of its arrivals."""
        step = self.plan.steps[name]
        edge_args: dict[str, Any] = {}
        for args in arrivals:
            edge_args.update(args)
        activation = self.state.step_state(name).activation + 1
        payload = StepStarted(activation=activation, args=edge_args)
        spec = step.loop
        failure = None
        if spec is not None and spec.paginate:
            assert step.step.loop is not None and step.step.loop.pagination is not None
            payload.paginate = Paginate(strategy=step.step.loop.pagination.merge_strategy)
        elif spec is not None:
            payload.items, failure = loop_items(
                spec, name, self.context(args=edge_args), self.limits.max_loop_items
            )
        self.emit(
            Event(
                type=ev.STEP_STARTED,
                dedup_key=keys.step_started_key(name, activation),
                step=name,
                status="running",
            ),
            payload,
        )
        if failure is not None:
            self.fail_step(name, None, failure)
        elif step.call is None:
            self._complete_routing_step(step, activation, edge_args)
        elif spec is None:
            self.issue(name, activation, 1, edge_args)
        elif spec.paginate:
            self.issue(name, activation, 1, edge_args, index=0)
        else:
            self.fill_loop(step)

    def issue(
        self,
        name: str,
        activation: int,
        attempt: int,
        args: dict[str, Any],
        *,
        index: int | None = None,
        phase: Phase = "tool",
        overrides: dict[str, Any] | None = None,
        data: RuleCall | None = None,
    ) -> None:
        """Record a command and build its message (a child start for a `playbook` call)."""
        step = self.plan.steps[name]
        cid = keys.command_id(self.state.execution_id, name, activation, attempt, index, phase)
        kind = "sink" if phase == "sink" else step.kind
        payload = CommandIssuedPayload(activation=activation, attempt=attempt, args=args, kind=kind)
        pool = command_pool(step, str(kind), self.limits.pools)
        if pool != DEFAULT_POOL:
            payload.pool = pool
        if index is not None:
            payload.index = index
        if phase != "tool":
            payload.phase = phase
        if overrides:
            payload.overrides = overrides
        if data is not None:
            payload.data = data
        is_child = phase == "tool" and step.starts_child
        if is_child:
            payload.child = keys.child_execution_id(cid)
        self.emit(
            Event(
                type=ev.COMMAND_ISSUED,
                dedup_key=keys.command_issued_key(cid),
                step=name,
                command_id=cid,
            ),
            payload,
        )
        # A message that cannot be built or sent fails its command now: left to the
        # publish, it would be retried, dead-lettered and the execution would wait.
        try:
            if is_child:
                start = child_message(self.plan, self.state, cid)
                wire.check(start, f"step `{name}`")
                self.children.append(start)
            else:
                command = command_message(self.plan, self.state, cid, self.limits.pools)
                wire.check(command, f"step `{name}`")
                self.commands.append(command)
        except (RenderError, ValueError, KeyError) as exc:
            kind = exc.error_type if isinstance(exc, RenderError) else "render"
            failure = ErrorInfo(type=kind, message=f"step `{name}`: {exc}")
            self.failed(cid, failure.record())

    # -- loops and pages ---------------------------------------------------------------

    def fill_loop(self, step: StepPlan) -> None:
        """Issue items until `concurrency` are in flight or none are left; end the step when
        every item is done."""
        state = self.state
        spec = step.loop
        step_state = state.step_state(step.name)
        loop = step_state.loop
        assert spec is not None and loop is not None and loop.items is not None
        in_flight = sum(1 for p in state.pending.values() if p.step == step.name)
        in_flight += sum(1 for t in state.timers.values() if t.step == step.name)
        while not loop.stopping and loop.issued < len(loop.items) and in_flight < spec.concurrency:
            self.issue(step.name, step_state.activation, 1, step_state.args, index=loop.issued)
            in_flight += 1
        if in_flight == 0 and (loop.stopping or loop.issued == len(loop.items)):
            self.finish_loop(step)

    def emit_item(
        self, step: StepPlan, command_id: str, item: StepItem, error: dict[str, Any] | None
    ) -> None:
        """The `step.item` event of command `command_id`: one per command (its dedup key)."""
        key = keys.step_item_key(command_id)
        self.emit(
            Event(
                type=ev.STEP_ITEM, dedup_key=key, step=step.name, command_id=command_id, error=error
            ),
            item,
        )

    def item_done(
        self,
        command_id: str,
        pending: PendingCommand,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        rows: int = 0,
        rule: RuleOutcome | None = None,
    ) -> None:
        """Record one loop item's (or page's) end, then issue more or end the step; `rule`
        is what a per-item `case` rule did to it."""
        step = self.plan.steps[pending.step]
        spec = step.loop
        assert spec is not None and pending.index is not None
        if spec.paginate:
            self._page_done(step, command_id, pending, result, error, rows)
            return
        payload = StepItem(index=pending.index)
        if error is None:
            payload.result = result
        elif spec.continue_on_error or (rule is not None and rule.handled):
            payload.tolerated = True
        if rule is not None:
            payload.rule = rule.index
            if rule.updates:
                payload.vars = rule.updates
            if rule.routes:
                payload.routes = rule.routes
            if rule.handled:
                payload.handled = True
        if rows:
            payload.rows = rows
        self.emit_item(step, command_id, payload, None if error is None else error.record())
        self.fill_loop(step)
        self.advance()

    def _page_done(
        self,
        step: StepPlan,
        command_id: str,
        pending: PendingCommand,
        response: Any,
        error: ErrorInfo | None,
        rows: int,
    ) -> None:
        assert step.step.loop is not None and step.step.loop.pagination is not None
        index = pending.index
        assert index is not None
        payload = StepItem(index=index)
        next_overrides: dict[str, Any] | None = None
        notes: list[str] = []
        if error is None:
            response = self.value(response)
            outcome = page_outcome(
                step.step.loop.pagination,
                step.name,
                index,
                response,
                self.context(args=pending.args, extra={"response": response}),
                pending.overrides,
                per_page_sink=bool(step.step.sink and step.step.sink.get("per_page")),
                notes=notes,
            )
            self.warn(step.name, notes)
            payload.part, payload.capped = outcome.part, outcome.capped
            next_overrides, error = outcome.next_overrides, outcome.error
        if rows:
            payload.rows = rows
        payload.last = next_overrides is None
        self.emit_item(step, command_id, payload, None if error is None else error.record())
        if next_overrides is not None:
            self.issue(
                step.name,
                pending.activation,
                1,
                pending.args,
                index=index + 1,
                overrides=next_overrides,
            )
            return
        self.finish_loop(step)

    def finish_loop(self, step: StepPlan) -> None:
        """End a loop or pagination whose work is done: fail it, write its sink, or
        complete the step with the collected results."""
        spec = step.loop
        loop = self.state.step_state(step.name).loop
        assert spec is not None and loop is not None
        if loop.failed > loop.handled and not spec.continue_on_error:
            self.fail_step(step.name, None, loop_failure(loop))
            return
        result = loop_result(self.state, step.name)
        activation = self.state.step_state(step.name).activation
        if step.step.sink is not None and not step.per_item_sink:
            self.issue(step.name, activation, 1, {}, phase="sink")
            return
        try:
            rule = None if spec.paginate else self.loop_sink_rule(step, result)
        except RenderError as exc:
            self.fail_step(step.name, None, ErrorInfo(type=exc.error_type, message=str(exc)))
            return
        if rule is not None:  # the rule's sink writes the whole list, then the step ends
            self.issue(step.name, activation, 1, {}, phase="sink", data=RuleCall(rule=rule))
            return
        self.complete_step(
            step,
            None,
            result,
            sink={"rows": loop.rows} if step.per_item_sink or loop.rows else None,
            pages=loop.done if spec.paginate else None,
        )

    # -- ending ------------------------------------------------------------------------

    def complete_step(
        self,
        step: StepPlan,
        command_id: str | None,
        result: Any,
        sink: dict[str, Any] | None = None,
        routes: list[Route] | None = None,
        updates: dict[str, Any] | None = None,
        pages: int | None = None,
        rule: int | None = None,
    ) -> None:
        """End a step that succeeded: `vars`, then routing (a `case` rule's `next` when one
        fired, else the rules at the step's end (see `end_rules`; `rule`: the `loop.done`
        rule whose sink ran), else `next`)."""
        activation = self.state.step_state(step.name).activation
        shown = self.value(result)
        try:
            variables = {**self.step_vars(step, shown), **(updates or {})}
            if routes is None and step.step.case:
                routes, variables, replaced = self.end_rules(step, shown, variables, rule)
                if replaced is not shown:
                    result = replaced
            if routes is None:
                routes = self.routes(step, result=shown, error=None, variables=variables)
        except RenderError as exc:
            self.fail_step(step.name, command_id, ErrorInfo(type=exc.error_type, message=str(exc)))
            return
        payload = StepCompleted(result=result, vars=variables, routes=routes, tool=True)
        if pages is not None:
            payload.pages = pages
        if sink is not None:
            payload.sink = sink
        self.emit(
            Event(
                type=ev.STEP_COMPLETED,
                dedup_key=keys.step_completed_key(step.name, activation),
                step=step.name,
                command_id=command_id,
                status="completed",
            ),
            payload,
        )
        self.advance()

    def fail_step(
        self,
        name: str,
        command_id: str | None,
        error: ErrorInfo,
        *,
        handled: list[Route] | None = None,
        updates: dict[str, Any] | None = None,
    ) -> None:
        """End a step that failed. `handled` are the routes of a `case` rule that matched
        the error (possibly none: the branch then ends without failing the execution)."""
        step = self.plan.steps[name]
        activation = self.state.step_state(name).activation
        if error.step is None:
            error = msgspec.structs.replace(error, step=name)
        routes = (
            handled
            if handled is not None
            else self.routes(
                step, result=render.MISSING, error=error, variables=self.state.variables
            )
        )
        payload = StepFailed(routes=routes)
        if updates:
            payload.vars = updates
        self.emit(
            Event(
                type=ev.STEP_FAILED,
                dedup_key=keys.step_failed_key(name, activation),
                step=name,
                command_id=command_id,
                status="failed",
                error=error.record(),
            ),
            payload,
        )
        if not routes and handled is None:
            self.end_execution("failed", error=error)
            return
        self.advance()

    def _complete_routing_step(
        self, step: StepPlan, activation: int, edge_args: dict[str, Any]
    ) -> None:
        """A step without a tool only routes: it ends in the decision that starts it."""
        try:
            variables = self.step_vars(step, None, args=edge_args)
            routes = self.routes(step, result=None, error=None, variables=variables, args=edge_args)
        except RenderError as exc:
            self.fail_step(step.name, None, ErrorInfo(type=exc.error_type, message=str(exc)))
            return
        self.emit(
            Event(
                type=ev.STEP_COMPLETED,
                dedup_key=keys.step_completed_key(step.name, activation),
                step=step.name,
                status="completed",
            ),
            StepCompleted(result=None, vars=variables, routes=routes, tool=False),
        )
