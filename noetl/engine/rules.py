"""`case` rules (the event-driven form of NoETL v2): which rule fires and what it sets.

Pure: every function takes the template context it evaluates in and returns plain data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from noetl import render
from noetl.engine import conditions, routing, wire
from noetl.engine.iteration import extract, merge
from noetl.engine.payloads import Route
from noetl.engine.plan import StepPlan
from noetl.errors import RenderError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def rule_extra(result: Any, error: Mapping[str, Any] | None, event: str) -> dict[str, Any]:
    """The names a rule sees besides the execution's: `event`, and `result`/`response` of a
    call that succeeded or `error` of one that failed."""
    extra: dict[str, Any] = {"event": {"name": event}}
    if error is None:
        extra["result"] = extra["response"] = result
    else:
        extra["error"] = error
    return extra


def first_rule(step: StepPlan, context: Mapping[str, Any], notes: list[str]) -> int | None:
    """Index of the first rule whose `when` holds; a `when` that cannot be evaluated is
    false (as with `next` on failure), an undefined name tested is noted in `notes`."""
    for i, rule in enumerate(step.step.case):
        try:
            hit = conditions.holds(rule.when, context, f"step `{step.name}` case[{i}].when", notes)
        except RenderError:
            hit = False
        if hit:
            return i
    return None


def rule_updates(
    step: StepPlan,
    index: int,
    context: Mapping[str, Any],
    result: Any,
    variables: Mapping[str, Any],
) -> dict[str, Any]:
    """The vars rule `index` sets: its rendered `set`, and its `collect` folded into the
    current value of `collect.into` (from `set`, else `variables`).

    Raises RenderError, or KeyError naming the part of `collect.path` that is missing.
    """
    then = step.step.case[index].then
    where = f"step `{step.name}` case[{index}].then"
    # A copy: `render` returns a `set` without templates as it is, and it is the playbook's.
    updates = dict(render.render(then.set, context, where=f"{where}.set"))
    if then.collect is not None and then.collect.into:
        into = then.collect.into
        part = extract(result, then.collect.path)
        previous = updates.get(into, variables.get(into))
        updates[into] = merge(previous, part, then.collect.strategy)
    return updates


# Keys of a rule's `retry` that steer the retry itself rather than change the request.
_RETRY_CONTROL = frozenset(
    {
        "max_attempts",
        "delay",
        "initial_delay",
        "backoff",
        "backoff_multiplier",
        "max_delay",
        "jitter",
    }
)


def retry_overrides(
    step: StepPlan, index: int, context: Mapping[str, Any]
) -> tuple[dict[str, Any], int | None]:
    """What rule `index`'s `retry` changes in the next call (rendered), and its
    `max_attempts` (calls in all, the first included; None: unbounded). NoETL's
    `retry: {args: {...}}` overrides the request's fields of those names. Raises
    RenderError."""
    then = step.step.case[index].then
    where = f"step `{step.name}` case[{index}].then.retry"
    rendered = render.render(then.retry, context, where=where)
    assert isinstance(rendered, dict)
    overrides = {k: v for k, v in rendered.items() if k not in _RETRY_CONTROL and k != "args"}
    if isinstance(rendered.get("args"), dict):
        overrides.update(rendered["args"])
    limit = rendered.get("max_attempts")
    if limit is not None and not isinstance(limit, int):
        raise RenderError(f"{where}.max_attempts: must be an integer, got {limit!r}")
    return overrides, limit


def rule_result(step: StepPlan, index: int, context: Mapping[str, Any], result: Any) -> Any:
    """The step's result after rule `index`: its `then.result` (`{from: NAME}` reads the
    name, dotted paths allowed; anything else is rendered), else the call's. Raises
    RenderError."""
    given = step.step.case[index].then.result
    where = f"step `{step.name}` case[{index}].then.result"
    if given is None:
        return result
    if isinstance(given, dict) and set(given) == {"from"}:
        name = given["from"]
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise RenderError(f"{where}.from: a name or dotted path, got {name!r}")
        return render.evaluate("{{ " + name + " }}", context, where=where)
    return render.render(given, context, where=where)


def collect_error(step: StepPlan, index: int, exc: RenderError | KeyError) -> str:
    """The message of a rule that could not be applied."""
    if isinstance(exc, RenderError):
        return str(exc)
    return f"step `{step.name}` case[{index}].then.collect.path: missing `{exc.args[0]}`"


class RuleEffects(NamedTuple):
    """What a matched rule does: vars it sets, request overrides and the attempt limit of its
    `retry`, its routes, and the result it leaves."""

    updates: dict[str, Any]
    overrides: dict[str, Any]
    limit: int | None
    routes: list[Route]
    result: Any


def rule_effects(
    step: StepPlan,
    index: int,
    context: Mapping[str, Any],
    with_variables: Callable[[dict[str, Any]], Mapping[str, Any]],
    given: Any,
    result: Any,
    variables: Mapping[str, Any],
    *,
    failed: bool,
) -> RuleEffects:
    """Evaluate rule `index` of `step`: `set`/`collect` from `given` in `context`, then the
    rest in the context `with_variables` gives for the vars those leave; a failed call keeps
    its result. Raises RenderError or KeyError (a bad `collect`) for the caller to report."""
    then = step.step.case[index].then
    updates = rule_updates(step, index, context, given, variables)
    context = with_variables({**variables, **updates})
    overrides: dict[str, Any] = {}
    limit: int | None = None
    if then.retry:
        overrides, limit = retry_overrides(step, index, context)
    routes = routing.edges(then.next, context)
    if not failed:
        result = rule_result(step, index, context, result)
    wire.check([updates, overrides, routes, result], f"step `{step.name}` case[{index}]")
    return RuleEffects(updates, overrides, limit, routes, result)


class Matched(NamedTuple):
    """The rule that matched a call's end, and its effects, or why it could not be applied
    (a `set`/`collect`/`retry`/`next`/`result` that failed to render, a missing `collect`)."""

    rule: int
    effects: RuleEffects | str


def call_rule(
    step: StepPlan,
    context: Callable[[Mapping[str, Any], Mapping[str, Any] | None], Mapping[str, Any]],
    result: Any,
    error: Mapping[str, Any] | None,
    variables: Mapping[str, Any],
    notes: list[str],
    *,
    local: Mapping[str, Any] | None = None,
) -> Matched | None:
    """The first rule matching a call's end (`call.done`, or `call.error` when `error` is
    given) and its effects; None when none matches. `context(extra, variables)` builds the
    template context (variables None: the execution's); `local` adds names the rule sees
    (a loop item's). A `call.error` rule collects from the error, the value a failed call
    gave, on a step and on a loop item alike. Undefined names a `when` tested are noted in
    `notes`."""
    event = "call.done" if error is None else "call.error"
    extra = {**(local or {}), **rule_extra(result, error, event)}
    seen = context(extra, None)
    index = first_rule(step, seen, notes)
    if index is None:
        return None
    try:
        effects = rule_effects(
            step,
            index,
            seen,
            lambda updated: context(extra, updated),
            error if error is not None else result,
            result,
            variables,
            failed=error is not None,
        )
    except (RenderError, KeyError) as exc:
        return Matched(index, collect_error(step, index, exc))
    return Matched(index, effects)
