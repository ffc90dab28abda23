"""`case` rules on loop steps and at a step's end.

On a loop step (`loop.in`, not a pagination) `call.done` / `call.error` rules apply to
each item: their `set` and `collect` as the item ends, `then.result` replaces the item's
result, a `sink` writes the item (seeing it, `loop.index` and its `result` or `error`; the
item ends when it has written), a `retry` calls that item again (within `max_attempts`,
with `retry.args` overriding the request). The `next` they name is not taken then: it
is kept with the item (in its `step.item` event) and taken once, when the loop ends.
There a matching `loop.done` rule's `sink` writes the step's list first
(`loop_sink_rule`); the step then completes applying that same rule. At the end, routes
come from the first of:

1. the first matching `loop.done` rule's `next`;
2. the `next`s of per-item rules, joined: each target once, in the order of the lowest
   item index that named it, its args merged in item order (a later item's value wins a
   key), as arrivals at a join are; a route found in a rule of a failed item counts too;
3. the first matching `step.exit` rule (its `next`, possibly none: the branch ends);
4. the step's `next`.

Everything here is decided from the state and recorded in events, so replay agrees.
"""

from __future__ import annotations

from typing import Any

from noetl.engine import routing, rules, wire
from noetl.engine.context import item_locals
from noetl.engine.iteration import deep_merge
from noetl.engine.payloads import Route, RuleCall, StepItem
from noetl.engine.plan import StepPlan
from noetl.engine.state import PendingCommand
from noetl.engine.steps import RuleOutcome, StepRun
from noetl.errors import RenderError
from noetl.messages import ErrorInfo


class ItemRules(StepRun):
    """Per-item `case` rules and the rules met at a step's end (see the module doc)."""

    def item_case(
        self,
        step: StepPlan,
        command_id: str,
        pending: PendingCommand,
        result: Any,
        failure: ErrorInfo | None,
        rows: int = 0,
    ) -> bool:
        """Apply the first rule matching one loop item's call (`rows`: what its inline
        sink wrote); False when none matches (the item then ends as without rules)."""
        assert pending.index is not None
        error = None if failure is None else failure.record()
        matched = self.call_rule(step, pending, result, error, item=True)
        if matched is None:
            return False
        index, effects = matched
        if isinstance(effects, str):
            failed = ErrorInfo(type="case", message=effects)
            self.item_done(command_id, pending, error=failed, rows=rows)
            return True
        then = step.step.case[index].then
        updates, overrides, limit, routes, result = effects
        outcome = RuleOutcome(index=index, updates=updates, routes=routes)
        if then.retry and (limit is None or pending.attempt < limit):
            outcome.routes = []  # the item is not over: the call that ends it routes
            self._carry_on(step, command_id, pending, outcome, error, rows)
            self.issue(
                step.name,
                pending.activation,
                pending.attempt + 1,
                pending.args,
                index=pending.index,
                overrides=deep_merge(pending.overrides, overrides),
            )
        elif then.sink is not None:
            # The item ends when its sink has written it (see `rule_sink_done`).
            self._carry_on(step, command_id, pending, outcome, error, rows)
            self.issue(
                step.name,
                pending.activation,
                1,
                {},
                index=pending.index,
                phase="sink",
                data=RuleCall(rule=index, result=result)
                if error is None
                else RuleCall(rule=index, error=error),
            )
        elif failure is not None:
            # A rule that retried and ran out leaves the item failed; any other took it.
            outcome.handled = not then.retry
            self.item_done(command_id, pending, error=failure, rows=rows, rule=outcome)
        else:
            self.item_done(command_id, pending, result=result, rows=rows, rule=outcome)
        return True

    def call_rule(
        self,
        step: StepPlan,
        pending: PendingCommand,
        result: Any,
        error: dict[str, Any] | None,
        *,
        item: bool = False,
    ) -> rules.Matched | None:
        """The rule matching a call's end and its effects (`rules.call_rule`), what its
        `when`s noted recorded. `item`: a loop item's call, whose rules see the item's names."""
        notes: list[str] = []
        matched = rules.call_rule(
            step,
            lambda extra, seen: self.context(args=pending.args, extra=extra, variables=seen),
            self.value(result),
            error,
            self.state.variables,
            notes,
            local=item_locals(step, self.state, pending) if item else None,
        )
        self.warn(step.name, notes)
        return matched

    def rule_sink_done(self, command_id: str, pending: PendingCommand, rows: int) -> None:
        """A loop item's rule sink wrote it: the item ends with its result, or with the
        error its `call.error` rule took (still failed when the rule's retries ran out)."""
        if pending.error is None:
            self.item_done(command_id, pending, result=pending.data, rows=rows)
            return
        assert pending.rule is not None
        then = self.plan.steps[pending.step].step.case[pending.rule].then
        outcome = RuleOutcome(index=pending.rule, handled=not then.retry)
        failure = ErrorInfo.of(pending.error, type="error", message="the tool failed")
        self.item_done(command_id, pending, error=failure, rows=rows, rule=outcome)

    def _carry_on(
        self,
        step: StepPlan,
        command_id: str,
        pending: PendingCommand,
        outcome: RuleOutcome,
        error: dict[str, Any] | None,
        rows: int,
    ) -> None:
        """Record an item's call that a retry or a rule's sink follows."""
        assert pending.index is not None
        payload = StepItem(index=pending.index, rule=outcome.index, continued=True)
        if rows:
            payload.rows = rows
        if outcome.updates:
            payload.vars = outcome.updates
        if outcome.routes:
            payload.routes = outcome.routes
        self.emit_item(step, command_id, payload, error)

    def loop_sink_rule(self, step: StepPlan, result: Any) -> int | None:
        """The `loop.done` rule that fires at this loop's end when it has a `sink` (run
        before the step completes, which then applies that same rule)."""
        if not step.step.case or step.loop is None or step.loop.paginate:
            return None
        shown = self.value(result)
        variables = self.step_vars(step, shown)
        index, _ = self._match(step, "loop.done", shown, variables)
        return index if index is not None and step.step.case[index].then.sink else None

    def end_rules(
        self, step: StepPlan, result: Any, variables: dict[str, Any], rule: int | None = None
    ) -> tuple[list[Route] | None, dict[str, Any], Any]:
        """The routes, vars and result of a step that succeeded, by the rules met at its
        end (see the module doc); `rule`: the `loop.done` rule whose sink ran. Raises
        RenderError."""
        routes: list[Route] | None = None
        loop = self.state.step_state(step.name).loop
        if loop is not None and loop.items is not None:
            fired = self._end_rule(step, "loop.done", result, variables, rule)
            if fired is not None:
                routes, variables, result = fired
            if not routes:
                routes = joined(loop.routes) or None
        if routes is None:
            fired = self._end_rule(step, "step.exit", result, variables)
            if fired is not None:
                routes, variables, _ = fired
        return routes, variables, result

    def _match(
        self, step: StepPlan, event: str, result: Any, variables: dict[str, Any]
    ) -> tuple[int | None, dict[str, Any]]:
        """The first rule matching `event` at the step's end, and the vars it sees."""
        args = self.state.step_state(step.name).args
        seen = {**self.state.variables, **variables}
        context = self.context(
            args=args, extra=rules.rule_extra(result, None, event), variables=seen
        )
        notes: list[str] = []
        index = rules.first_rule(step, context, notes)
        self.warn(step.name, notes)
        return index, seen

    def _end_rule(
        self,
        step: StepPlan,
        event: str,
        result: Any,
        variables: dict[str, Any],
        rule: int | None = None,
    ) -> tuple[list[Route], dict[str, Any], Any] | None:
        """The rule met at the step's end (`rule`, else the first matching `event`): its
        routes, the vars with its `set` and `collect`, the result with its `then.result`."""
        args = self.state.step_state(step.name).args
        extra = rules.rule_extra(result, None, event)
        if rule is None:
            index, seen = self._match(step, event, result, variables)
        else:
            index, seen = rule, {**self.state.variables, **variables}
        if index is None:
            return None
        context = self.context(args=args, extra=extra, variables=seen)
        try:
            updates = rules.rule_updates(step, index, context, result, seen)
        except KeyError as exc:
            raise RenderError(rules.collect_error(step, index, exc)) from exc
        context = self.context(args=args, extra=extra, variables={**seen, **updates})
        routes = routing.edges(step.step.case[index].then.next, context)
        if event == "loop.done":  # as before, a `step.exit` rule leaves the result alone
            result = rules.rule_result(step, index, context, result)
        wire.check([updates, routes, result], f"step `{step.name}` case[{index}]")
        return routes, {**variables, **updates}, result


def joined(by_item: dict[int, list[Route]]) -> list[Route]:
    """Routes per-item rules named, taken once: each target once, in the order of the
    lowest item that named it, with the args of every item merged in item order."""
    merged: dict[str, dict[str, Any]] = {}
    for index in sorted(by_item):
        for route in by_item[index]:
            merged.setdefault(route.step, {}).update(route.args)
    return [Route(step=name, args=args) for name, args in merged.items()]
