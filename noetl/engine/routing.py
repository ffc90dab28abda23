"""Routing: where a step goes next, and which waiting step may start. Pure.

Every function takes the template context (or the state) it reads as an argument and
returns plain data; the decision in the making (`run.py`) records what they return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl import render
from noetl.dsl import Edge, Else, When
from noetl.engine import conditions
from noetl.engine.payloads import Route
from noetl.engine.plan import Plan, StepPlan
from noetl.engine.state import ExecutionState
from noetl.errors import RenderError

END = "end"
START = "start"


def edges(targets: list[Edge], context: Mapping[str, Any]) -> list[Route]:
    """Routes to `targets`, each with its args rendered in `context`."""
    return [
        Route(step=e.step, args=render.render(e.args, context, where=f"-> {e.step} args"))
        for e in targets
    ]


def routes(
    plan: Plan,
    step: StepPlan,
    context: Mapping[str, Any],
    *,
    failed: bool,
    notes: list[str] | None = None,
) -> list[Route]:
    """Where the step goes next, with each edge's rendered args.

    On success every entry is evaluated in order (unconditional edges always fire, the
    first true `when` fires, `else` when none did). On failure only `when` entries count
    and a `when` that cannot be evaluated is false. An undefined name tested for truth is
    false and noted in `notes` (see conditions.py). Raises RenderError on success when a
    `when` or an edge's args cannot be rendered.
    """
    notes = [] if notes is None else notes
    where = f"step `{step.name}` next"
    fired: list[Edge] = []
    matched = False
    for entry in step.step.next:
        if isinstance(entry, Edge):
            if not failed:
                fired.append(entry)
        elif isinstance(entry, When):
            if matched:
                continue
            try:
                hit = conditions.holds(entry.when, context, where, notes)
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
    routes_somewhere = step.step.next or any(rule.then.next for rule in step.step.case)
    if not failed and not routes_somewhere and plan.has_end and step.name != END:
        fired.append(Edge(step=END))
    return [
        Route(
            step=edge.step,
            args=render.render(edge.args, context, where=f"{where} -> {edge.step} args"),
        )
        for edge in fired
    ]


def next_ready(plan: Plan, state: ExecutionState) -> str | None:
    """The first waiting step (in declaration order) that may start now, if any.

    A step never has two activations at once; a step with several predecessors (an
    inclusive join) waits while a busy or other waiting step can still reach it.
    """
    if not state.waiting:
        return None
    graph = plan.graph
    busy = state.busy_steps()
    for name in sorted(state.waiting, key=plan.order.__getitem__):
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


def finished(state: ExecutionState) -> bool:
    """True when a running execution has nothing left to do: nothing pending, waiting or
    timed."""
    return state.running and not (state.pending or state.waiting or state.busy_steps())


def final_result(state: ExecutionState) -> Any:
    """The result of a completed execution: `end`'s if it ran a tool, else the last step's
    that did."""
    end = state.steps.get(END)
    if end is not None and end.status == "completed" and end.ran_tool:
        return end.result
    if state.last_step is not None:
        return state.steps[state.last_step].result
    return None
