"""The step plan: what the engine needs of a playbook version, resolved once.

A `Plan` is compiled when an `Engine` is built, and the coordinator keeps one engine per
(path, version), so the loop, tool, workbook and retry resolution and the template names a
command needs are worked out once per catalog version instead of on every decision.
Invariant: a plan is never mutated after `compile_plan` returns; every dict it holds is
copied before it leaves the engine in a message.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import msgspec

from noetl import render
from noetl.dsl import Graph, Playbook, Retry, Step, script_file
from noetl.dsl.loader import NodePath
from noetl.dsl.tool_fields import RAW_FIELDS
from noetl.errors import RenderError
from noetl.messages import CodeLines


class LoopSpec(msgspec.Struct, frozen=True):
    """A step's iteration, from `loop` or from the older `iterator` tool."""

    items: Any  # the `in` / `collection` template or value; None for pagination
    iterator: str
    concurrency: int
    continue_on_error: bool
    paginate: bool = False


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """One kind of command a step issues: its raw tool block, args and what they name.

    `names` are the step results the templates of `tool`, `args` and the inline sink read
    (sorted, so the context a command carries is built in a stable order); None when a
    template does not parse, so the error surfaces where it always did: on issuing.
    """

    tool: dict[str, Any]
    args: dict[str, Any]
    sink: dict[str, Any] | None
    names: tuple[str, ...] | None
    files: dict[str, str]
    code_lines: CodeLines | None = None


class StepPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A step with everything derived from it resolved: tool, loop, retry, sinks.

    `call` is None for a step without a tool (it only routes). `after_sink` is the call of
    a sink written once after a loop or pagination ended; `rule_sinks[i]` the call of
    `case[i].then.sink`.
    """

    step: Step
    timeout: float | None
    call: Call | None
    loop: LoopSpec | None
    retry: Retry | None
    per_item_sink: bool
    after_sink: Call
    rule_sinks: tuple[Call, ...]

    @property
    def name(self) -> str:
        """The step's name."""
        return self.step.step

    @property
    def kind(self) -> Any:
        """The resolved tool kind (a workbook step's task kind), None without a tool."""
        return None if self.call is None else self.call.tool.get("kind")

    @property
    def starts_child(self) -> bool:
        """True when the step's tool call is a child execution (`playbook` kind)."""
        return bool(self.kind == "playbook")


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A pinned playbook version, compiled: the steps' plans, the graph and the order."""

    playbook: Playbook
    path: str
    version: int
    graph: Graph
    steps: dict[str, StepPlan]
    # Declaration index of each step: the tie-breaker that keeps decisions deterministic.
    order: dict[str, int]
    has_end: bool
    # Whether deciding for this version may run more than lookups (`templated`).
    templated: bool


def compile_plan(
    playbook: Playbook,
    version: int,
    files: Mapping[str, str] | None,
    code_lines: Mapping[NodePath, CodeLines] | None = None,
) -> Plan:
    """Resolve every step of `playbook` once (see the module docstring); `code_lines` are
    where python code blocks sit in the file, by path (`dsl.load_with_lines`)."""
    by_path = {posixpath.normpath(k): v for k, v in (files or {}).items()}
    lines = code_lines or {}
    return Plan(
        playbook=playbook,
        path=playbook.catalog_path,
        version=version,
        graph=Graph.of(playbook),
        steps={
            s.step: _step_plan(playbook, _with_task_sink(playbook, s), by_path, lines, i)
            for i, s in enumerate(playbook.workflow)
        },
        order={s.step: i for i, s in enumerate(playbook.workflow)},
        has_end=playbook.has_end,
        templated=templated(playbook),
    )


def templated(playbook: Playbook) -> bool:
    """Whether a decision for this playbook may run a template that is more than a plain
    lookup (`render.may_run_long`) anywhere in it, or any `case` rule (`then.result:
    {from: NAME}` is evaluated as a template made from a plain name). Deliberately
    coarse: False promises that the engine renders nothing of this playbook but lookups,
    so a decision cannot run until the render clock's deadline."""
    if any(step.case for step in playbook.workflow):
        return True
    return render.may_run_long(msgspec.to_builtins(playbook))


def _step_plan(
    playbook: Playbook,
    step: Step,
    files: Mapping[str, str],
    code_lines: Mapping[NodePath, CodeLines],
    index: int,
) -> StepPlan:
    loop = _loop_of(step) if step.tool is not None else None
    call = None
    timeout = step.timeout
    sink = step.sink
    per_item = bool(sink is not None and (sink.get("per_item") or sink.get("per_page")))
    if step.tool is not None:
        tool, args, timeout = _resolve_tool(playbook, step)
        inline = sink if sink is not None and (loop is None or per_item) else None
        where = _tool_path(playbook, step, ("workflow", index, "tool"))
        call = _call(tool, args, inline, files, code_lines.get((*where, "code")))
    after = _call(dict(sink or {}), {}, None, files)
    rule_sinks = tuple(_call(dict(rule.then.sink or {}), {}, None, files) for rule in step.case)
    return StepPlan(
        step=step,
        timeout=timeout,
        call=call,
        loop=loop,
        retry=_retry_of(playbook, step),
        per_item_sink=per_item,
        after_sink=after,
        rule_sinks=rule_sinks,
    )


def _call(
    tool: dict[str, Any],
    args: dict[str, Any],
    sink: dict[str, Any] | None,
    files: Mapping[str, str],
    code_lines: CodeLines | None = None,
) -> Call:
    raw = RAW_FIELDS.get(str(tool.get("kind")), frozenset())
    templated = {k: v for k, v in tool.items() if k not in raw}
    try:
        found = (
            render.referenced_names(templated)
            | render.referenced_names(args)
            | render.referenced_names(sink)
        )
        names: tuple[str, ...] | None = tuple(sorted(found))
    except RenderError:
        names = None
    uri = script_file(tool)
    text = None if uri is None else files.get(posixpath.normpath(uri))
    return Call(
        tool=tool,
        args=args,
        sink=sink,
        names=names,
        files={} if uri is None or text is None else {uri: text},
        code_lines=code_lines,
    )


def _tool_path(playbook: Playbook, step: Step, path: NodePath) -> NodePath:
    """Where in the document the tool block a step runs is (as `_resolve_tool` finds it)."""
    tool = step.tool or {}
    if tool.get("kind") == "iterator" and isinstance(tool.get("task"), dict):
        path = (*path, "task", "tool") if "tool" in tool["task"] else (*path, "task")
        tool = tool["task"].get("tool", tool["task"])
    if tool.get("kind") == "workbook":
        task = playbook.task(str(tool["name"]))
        index = next(i for i, t in enumerate(playbook.workbook) if t is task)
        path = ("workbook", index, "tool")
    return path


def _resolve_tool(
    playbook: Playbook, step: Step
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
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
        task = playbook.task(str(tool["name"]))
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


def _with_task_sink(playbook: Playbook, step: Step) -> Step:
    """The step as it runs: a workbook step without a sink of its own writes through its
    task's `sink`."""
    tool = step.tool or {}
    if step.sink is None and tool.get("kind") == "workbook":
        sink = playbook.task(str(tool["name"])).sink
        if sink is not None:
            return msgspec.structs.replace(step, sink=sink)
    return step


def _retry_of(playbook: Playbook, step: Step) -> Retry | None:
    """The retry policy of a step (its own, else its workbook task's)."""
    if step.retry is not None:
        return step.retry
    if step.tool is not None and step.tool.get("kind") == "workbook":
        return playbook.task(str(step.tool["name"])).retry
    return None


def _loop_of(step: Step) -> LoopSpec | None:
    """How the step iterates, if it does."""
    loop = step.loop
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
