"""Template contexts of an execution: what `when`, `vars`, edge args and loops see.

Pure functions of the state (and the stored large values a decision was given); they
never change the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl import blobs, render
from noetl.engine.plan import StepPlan
from noetl.engine.state import ExecutionState, PendingCommand


def template_context(
    state: ExecutionState,
    *,
    values: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The names templates of this execution see; references to large values in step
    results are resolved from `values`. `variables` replaces the state's vars (a rule's
    `set` seen by its own `next`)."""
    results = state.results()
    if values:
        results = {name: blobs.resolve(value, values) for name, value in results.items()}
    if "job" not in results:  # NoETL's `job`; a step of that name keeps its own
        job = {"execution_id": str(state.execution_id), "path": state.path}
        extra = {"job": {**job, "version": state.version}, **(extra or {})}
    return render.build_context(
        workload=state.workload,
        variables=state.variables if variables is None else variables,
        steps=results,
        execution_id=str(state.execution_id),
        args=args,
        extra=extra,
    )


def item_locals(plan: StepPlan, state: ExecutionState, pending: PendingCommand) -> dict[str, Any]:
    """The loop variables of an item command: the iterator name, `loop` and NoETL's
    `loop_index`; empty for a command that is not a loop item."""
    spec = plan.loop
    loop = state.step_state(plan.name).loop
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
        "loop_index": index,
    }


def loop_result(state: ExecutionState, name: str) -> Any:
    """The result of step `name`'s loop so far: the items' results, or the merged pages."""
    loop = state.step_state(name).loop
    if loop is None:
        return None
    return loop.results if loop.items is not None else loop.merged
