"""Building the messages a decision causes: runner commands, child starts, parent notices.

Pure: each message is a function of the plan and the state alone, so a pending command's
message can be rebuilt at any time (republishing after a crash) and comes out the same.
"""

from __future__ import annotations

from typing import Any, cast

from noetl import keys, render
from noetl.dsl.tool_fields import RAW_FIELDS
from noetl.engine.context import item_locals, loop_result, template_context
from noetl.engine.events import TERMINAL_STATUSES
from noetl.engine.plan import Plan, StepPlan
from noetl.engine.state import ExecutionState
from noetl.messages import (
    ChildCompleted,
    CommandContext,
    CommandIssued,
    StartExecution,
    TerminalStatus,
)
from noetl.pools import PoolRouting, without_pool

_DEFAULT_ROUTING = PoolRouting()


def command_message(
    plan: Plan, state: ExecutionState, command_id: str, pools: PoolRouting | None = None
) -> CommandIssued:
    """The runner message of pending command `command_id`, for the pool `pools` route it
    to (the default pool when None)."""
    pending = state.pending[command_id]
    step = plan.steps[pending.step]
    assert step.call is not None
    if pending.phase == "sink" and pending.rule is not None and pending.index is None and step.loop:
        call = step.rule_sinks[pending.rule]
        locals_: dict[str, Any] = {"result": loop_result(state, step.name)}  # `loop.done`
    elif pending.phase == "sink" and pending.rule is not None:
        call = step.rule_sinks[pending.rule]
        # A loop item's rule sink sees the item and `loop` beside the item's result (or
        # the item's `error`, for a `call.error` rule).
        outcome = {"result": pending.data} if pending.error is None else {"error": pending.error}
        locals_ = {**item_locals(step, state, pending), **outcome}
    elif pending.phase == "sink":
        call = step.after_sink
        locals_ = {"result": loop_result(state, step.name)}
    else:
        call = step.call
        locals_ = item_locals(step, state, pending)
    names = call.names
    if names is None:  # a template that does not parse: raise its error here, as ever
        raw = RAW_FIELDS.get(str(call.tool.get("kind")), frozenset())
        names = tuple(
            sorted(
                render.referenced_names({k: v for k, v in call.tool.items() if k not in raw})
                | render.referenced_names(call.args)
                | render.referenced_names(call.sink)
            )
        )
    steps = state.steps
    if reads_context(call.tool):  # python code may read any step through `context`
        names = tuple(sorted(steps))
    context = CommandContext(
        workload=state.workload,
        vars=state.variables,
        steps={n: steps[n].result for n in names if n in steps and steps[n].status == "completed"},
        locals=locals_ or None,
    )
    kind = "sink" if pending.phase == "sink" else str(call.tool.get("kind", ""))
    return CommandIssued(
        execution_id=state.execution_id,
        dedup_id=command_id,
        command_id=command_id,
        step=pending.step,
        kind=kind,
        pool=command_pool(step, kind, pools),
        tool=without_pool(call.tool),
        args=dict(call.args),
        edge_args=pending.args,
        context=context,
        timeout=step.timeout,
        attempt=pending.attempt,
        path=plan.path,
        version=plan.version,
        index=pending.index,
        overrides=pending.overrides,
        sink=call.sink,
        credentials=credential_bindings(plan, state, step.step.credentials),
        files=call.files,
        code_lines=call.code_lines,
    )


def credential_bindings(
    plan: Plan, state: ExecutionState, step_bindings: dict[str, Any]
) -> dict[str, Any]:
    """The credentials a command may name: the playbook's `keychain` entries (each read by
    the runner as `keychain.NAME`; a templated `credential` rendered here, where it sees the
    workload), then the step's own `credentials`, which win a shared alias. Only names
    travel: the runner decrypts the values. Raises RenderError."""
    entries = plan.playbook.keychain
    if not entries:
        return step_bindings
    context = template_context(state) if any("{{" in (e.credential or "") for e in entries) else {}
    bindings: dict[str, Any] = {}
    for entry in entries:
        name = entry.credential or entry.name
        if "{{" in name:
            name = str(render.render(name, context, where=f"keychain `{entry.name}` credential"))
        bindings[entry.name] = {"key": name}
    return {**bindings, **step_bindings}


def command_pool(step: StepPlan, kind: str, pools: PoolRouting | None) -> str:
    """The runner pool of a command of `kind` of `step` (see noetl.pools): a sink goes
    where its step goes, whatever its tool block names."""
    tool = step.call.tool if step.call is not None and kind != "sink" else {}
    return (pools or _DEFAULT_ROUTING).pool_for(tool, step.step.runner_pool, kind)


def reads_context(tool: dict[str, Any]) -> bool:
    """Whether a tool's code may read NoETL's `context` (python code naming it, or code
    the engine cannot read: base64 or a script)."""
    if tool.get("kind") != "python":
        return False
    code = tool.get("code")
    return "code_b64" in tool or "script" in tool or (isinstance(code, str) and "context" in code)


def child_message(plan: Plan, state: ExecutionState, command_id: str) -> StartExecution:
    """The start message of the child execution that pending command `command_id` awaits.

    Raises RenderError, ValueError or KeyError when the tool's `path`, `version` or args
    cannot be rendered (the command then fails).
    """
    pending = state.pending[command_id]
    step = plan.steps[pending.step]
    assert pending.child is not None and step.call is not None
    tool = step.call.tool
    context = template_context(state, args=pending.args, extra=item_locals(step, state, pending))
    where = f"step `{step.name}`"
    # A copy: `render` returns what has no template unchanged, and the plan is shared.
    rendered = render.render(dict(step.call.args), context, where=f"{where} args")
    assert isinstance(rendered, dict)
    rendered.update(pending.args)
    version = render.render(tool.get("version"), context, where=f"{where} tool.version")
    return StartExecution(
        execution_id=pending.child,
        dedup_id=keys.start_id(pending.child),
        path=str(render.render(tool["path"], context, where=f"{where} tool.path")),
        version=None if version in (None, "") else int(version),
        workload=rendered,
        parent_execution_id=state.execution_id,
        parent_command_id=command_id,
        depth=state.depth + 1,
        root_execution_id=state.root_execution_id or state.execution_id,
        return_step=tool.get("return_step"),
        timeout=step.timeout,
    )


def parent_notice(state: ExecutionState, now: float) -> ChildCompleted:
    """The message telling a parent execution that this child ended."""
    result = state.result
    if state.return_step is not None and state.status == "completed":
        returned = state.steps.get(state.return_step)
        result = returned.result if returned is not None else None
    assert state.parent_execution_id is not None and state.parent_command_id is not None
    assert state.status in TERMINAL_STATUSES
    return ChildCompleted(
        execution_id=state.parent_execution_id,
        dedup_id=keys.child_ended_id(state.execution_id),
        at=now,
        command_id=state.parent_command_id,
        child_execution_id=state.execution_id,
        status=cast(TerminalStatus, state.status),
        result=result,
        error=state.error,
    )
