"""One decision in the making: how an execution reacts to each kind of message.

`Run` handles starts, command outcomes, child endings, timers (retry backoff, execution
timeout), cancellations and wake-ups; the step lifecycle it drives is `StepRun`'s. A run
lives for one message and is the only thing that emits events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec import UNSET

from noetl import keys, render
from noetl.engine import conditions, routing, rules, wire
from noetl.engine import events as ev
from noetl.engine.context import loop_result
from noetl.engine.events import Event
from noetl.engine.item_rules import ItemRules
from noetl.engine.iteration import backoff_delay, deep_merge
from noetl.engine.payloads import ExecutionStarted, Route, RuleCall, StepItem, TimerFired
from noetl.engine.plan import StepPlan
from noetl.engine.state import PendingCommand, TimerState
from noetl.errors import RenderError
from noetl.messages import CancelExecution, ChildCompleted, ErrorInfo, StartExecution


class Run(ItemRules):
    """Reacts to one message; `decision()` then says what was decided."""

    def start(self, message: StartExecution) -> None:
        """Start the execution (a duplicate when it has started already)."""
        if self.state.status != "new":
            self.duplicate = True
            return
        plan = self.plan
        restored = message.restore
        failure = None
        try:
            workload = self._workload(message.workload)
        except RenderError as exc:
            workload = dict(message.workload)
            failure = ErrorInfo(type=exc.error_type, message=str(exc))
        if (
            failure is None
            and message.return_step is not None
            and message.return_step not in plan.steps
        ):
            failure = ErrorInfo(
                type="return_step",
                message=f"return_step `{message.return_step}` is not a step of "
                f"playbook `{plan.path}`",
            )
        if message.depth > self.limits.max_depth:
            failure = ErrorInfo(
                type="depth",
                message=f"sub-playbook `{plan.path}` would run at depth {message.depth}, "
                f"deeper than the limit of {self.limits.max_depth} (NOETL_MAX_DEPTH) under "
                f"execution {message.root_execution_id}",
            )
        self.emit(
            Event(
                type=ev.EXECUTION_STARTED,
                dedup_key=keys.EXECUTION_STARTED_KEY,
                status="running",
            ),
            ExecutionStarted(
                path=plan.path,
                version=plan.version,
                workload=workload,
                parent_execution_id=message.parent_execution_id,
                parent_command_id=message.parent_command_id,
                depth=message.depth or UNSET,
                root_execution_id=UNSET
                if message.root_execution_id is None
                else message.root_execution_id,
                return_step=message.return_step,
                restarted_from=UNSET if restored is None else message.restarted_from,
                restore=UNSET if restored is None else restored,
                routes=[] if failure or restored is not None else [Route(step=routing.START)],
            ),
        )
        if failure is not None:
            self.end_execution("failed", error=failure)
            return
        timeout = message.timeout or plan.playbook.metadata.timeout
        if timeout:
            self._schedule(
                TimerState(
                    name=keys.EXECUTION_TIMEOUT,
                    due_at=self.now + timeout,
                    action="execution_timeout",
                )
            )
        self.advance()

    def completed(self, command_id: str, result: Any, meta: Mapping[str, Any]) -> None:
        """A command succeeded with `result` (`meta` has its sink's facts)."""
        pending = self._pending(command_id)
        if pending is None:
            return
        rows = int((meta.get("sink") or {}).get("rows", 0))
        step = self.plan.steps[pending.step]
        item = pending.index is not None and step.loop is not None
        if pending.phase == "sink" and pending.rule is not None and item:
            self.rule_sink_done(command_id, pending, rows)
        elif pending.phase == "sink" and pending.rule is not None and step.loop is not None:
            # a `loop.done` rule's sink: the rule it ran for decides the step's end
            loop = self.state.step_state(step.name).loop
            assert loop is not None
            self.complete_step(
                step,
                command_id,
                loop_result(self.state, step.name),
                sink={"rows": loop.rows + rows},
                rule=pending.rule,
            )
        elif pending.phase == "sink" and pending.rule is not None:
            rule = step.step.case[pending.rule]
            context = self.context(
                args=pending.args, extra=rules.rule_extra(pending.data, None, "call.done")
            )
            self.complete_step(
                step,
                command_id,
                pending.data,
                sink={"rows": rows},
                routes=routing.edges(rule.then.next, context),
            )
        elif pending.phase == "sink":
            self.complete_step(
                step, command_id, loop_result(self.state, step.name), sink={"rows": rows}
            )
        elif item:
            ruled = self._item_rules(step)
            if not (ruled and self.item_case(step, command_id, pending, result, None, rows)):
                self.item_done(command_id, pending, result=result, rows=rows)
        elif not (step.step.case and self._case(step, command_id, pending, result, None)):
            self.complete_step(
                step, command_id, result, sink={"rows": rows} if "sink" in meta else None
            )

    def failed(self, command_id: str, error: Mapping[str, Any]) -> None:
        """A command failed: retry it, hand it to a loop or a `case` rule, or fail the
        step."""
        pending = self._pending(command_id)
        if pending is None:
            return
        failure = ErrorInfo.of(error, type="error", message="the tool failed")
        if self._retry(command_id, pending, failure):
            return
        step = self.plan.steps[pending.step]
        item = pending.index is not None and step.loop is not None
        if item and pending.phase == "tool":
            if not (
                self._item_rules(step) and self.item_case(step, command_id, pending, None, failure)
            ):
                self.item_done(command_id, pending, error=failure)
        elif item and pending.rule is not None:  # a loop item's rule sink: the item failed
            self.item_done(command_id, pending, error=failure)
        elif not (
            step.step.case
            and pending.phase == "tool"
            and self._case(step, command_id, pending, None, failure)
        ):
            self.fail_step(pending.step, command_id, failure)

    def child(self, message: ChildCompleted) -> None:
        """A child execution ended: its parent's command completed or failed with it."""
        if message.status == "completed":
            self.completed(message.command_id, message.result, {})
            return
        child_error = message.error or {}
        self.failed(
            message.command_id,
            ErrorInfo(
                type="child",
                message=f"child execution {message.child_execution_id} "
                f"{message.status}: {child_error.get('message', '')}".rstrip(": "),
                details={
                    "child_execution_id": str(message.child_execution_id),
                    "child_error": child_error,
                },
            ).record(),
        )

    def timer(self, name: str) -> None:
        """Timer `name` came due (a duplicate when it fired already)."""
        timer = self.state.timers.get(name)
        if timer is None or not self.state.running:
            self.duplicate = True
            return
        self._fire(timer)

    def cancel(self, message: CancelExecution) -> None:
        """End the execution as cancelled."""
        if not self.state.running:
            self.duplicate = True
            return
        self.end_execution("cancelled", error=ErrorInfo(type="cancelled", message=message.reason))

    def wake(self) -> None:
        """Re-examine the execution (the reconciler's nudge): a duplicate if nothing moves."""
        if not self.state.running:
            self.duplicate = True
            return
        before = len(self.events)
        self.advance()
        self.duplicate = len(self.events) == before

    def abandon(self, exc: Exception) -> None:
        """End the execution as failed by an error met while deciding (see `Engine`); what
        it issued before is dropped by `decision()`."""
        self.end_execution(
            "failed",
            error=ErrorInfo(type="decision", message=f"{type(exc).__name__}: {exc}"),
        )

    @staticmethod
    def _item_rules(step: StepPlan) -> bool:
        """Whether `case` rules apply per item: a step iterating `loop.in` that has any."""
        return bool(step.step.case) and step.loop is not None and not step.loop.paginate

    def _pending(self, command_id: str) -> PendingCommand | None:
        pending = self.state.pending.get(command_id)
        if pending is None or not self.state.running:
            self.duplicate = True
            return None
        return pending

    def _workload(self, given: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**self.plan.playbook.workload, **given}
        context = {**merged, "workload": merged, "execution_id": str(self.state.execution_id)}
        rendered = render.render(merged, context, where="workload")
        assert isinstance(rendered, dict)
        wire.check(rendered, "workload")
        return rendered

    # -- timers and retries -------------------------------------------------------------

    def _schedule(self, timer: TimerState) -> None:
        self.emit(
            Event(
                type=ev.TIMER_SCHEDULED,
                dedup_key=keys.timer_scheduled_key(timer.name),
                step=timer.step,
            ),
            timer,
        )
        self.timers.append(timer)

    def _fire(self, timer: TimerState) -> None:
        self.emit(
            Event(
                type=ev.TIMER_FIRED,
                dedup_key=keys.timer_fired_key(timer.name),
                step=timer.step,
            ),
            TimerFired(name=timer.name),
        )
        if timer.action == "execution_timeout":
            self.end_execution(
                "failed",
                error=ErrorInfo(type="timeout", message="the execution ran past its timeout"),
            )
            return
        retry = timer.retry
        assert timer.step is not None
        self.issue(
            timer.step,
            retry["activation"],
            retry["attempt"],
            retry["args"],
            index=retry.get("index"),
            phase=retry.get("phase", "tool"),
            overrides=retry.get("overrides") or {},
            data=None
            if retry.get("rule") is None
            else RuleCall(
                rule=retry["rule"],
                result=retry.get("data"),
                error=retry.get("item_error") or UNSET,
            ),
        )

    def _retry(self, command_id: str, pending: PendingCommand, failure: ErrorInfo) -> bool:
        """Schedule the next attempt if the step's retry policy wants one."""
        error = failure.record()
        step = self.plan.steps[pending.step]
        policy = step.retry
        if policy is None or pending.attempt >= policy.max_attempts or pending.child:
            return False
        if policy.when:
            context = self.context(args=pending.args, extra={"error": error})
            notes: list[str] = []
            try:
                wanted = conditions.holds(
                    policy.when, context, f"step `{step.name}` retry.when", notes
                )
            except RenderError:
                wanted = False
            self.warn(step.name, notes)
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
            name=keys.retry_timer(command_id),
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
        if pending.rule is not None:  # a `case` rule's sink keeps what it writes
            timer.retry.update(rule=pending.rule, data=pending.data)
            if pending.error is not None:
                timer.retry["item_error"] = pending.error
        self._schedule(timer)
        if delay <= 0:
            self._fire(timer)
        return True

    # -- case (the event-driven form of NoETL v2) --------------------------------------

    def _case(
        self,
        step: StepPlan,
        command_id: str,
        pending: PendingCommand,
        result: Any,
        failure: ErrorInfo | None,
    ) -> bool:
        """Apply the first rule matching the call's end (`call.done` / `call.error`);
        False when none matches."""
        error = None if failure is None else failure.record()
        matched = self.call_rule(step, pending, result, error)
        if matched is None:
            return False
        index, effects = matched
        if isinstance(effects, str):
            self.fail_step(step.name, command_id, ErrorInfo(type="case", message=effects))
            return True
        then = step.step.case[index].then
        updates, overrides, limit, routes, result = effects
        call = pending.index or 0
        if then.retry and (limit is None or call + 1 < limit):
            self.emit(
                Event(
                    type=ev.STEP_ITEM,
                    dedup_key=keys.step_item_key(command_id),
                    step=step.name,
                    command_id=command_id,
                    error=error,
                ),
                StepItem(index=call, vars=updates, rule=index),
            )
            self.issue(
                step.name,
                pending.activation,
                1,
                pending.args,
                index=call + 1,
                overrides=deep_merge(pending.overrides, overrides),
            )
            return True
        if failure is not None and then.retry:  # its retries are spent: the step fails
            self.fail_step(step.name, command_id, failure, updates=updates)
            return True
        if failure is not None:
            self.fail_step(step.name, command_id, failure, handled=routes, updates=updates)
            return True
        if then.sink is not None:
            self.emit(
                Event(
                    type=ev.STEP_ITEM,
                    dedup_key=keys.step_item_key(command_id),
                    step=step.name,
                    command_id=command_id,
                ),
                StepItem(index=pending.index or 0, vars=updates, rule=index),
            )
            self.issue(
                step.name,
                pending.activation,
                1,
                {},
                phase="sink",
                data=RuleCall(rule=index, result=result),
            )
            return True
        self.complete_step(step, command_id, result, routes=routes, updates=updates)
        return True
