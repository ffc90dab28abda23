"""What a runner renders of a command: its tool block and args, its sink, NoETL's `job`.

Pure: no I/O. `renders` says whether rendering runs a template at all, so the runner can
keep template-free work on its event loop (nothing there can reach the render deadline).
"""

from __future__ import annotations

from typing import Any

from noetl import render
from noetl.engine.iteration import deep_merge
from noetl.messages import CommandIssued
from plugins.base import ToolPlugin


def render_tool(
    command: CommandIssued, plugin: ToolPlugin, context: dict[str, Any]
) -> dict[str, Any]:
    """Render args, then the tool block with the args bound; raw fields stay as written.
    A pagination page's `overrides` (rendered by the engine) apply last."""
    where = f"step `{command.step}`"
    args = render.render(command.args, context, where=f"{where} args")
    assert isinstance(args, dict)
    args.update(command.edge_args)
    context = {**context, **args, "args": args}
    raw_fields: frozenset[str] = getattr(plugin, "raw_fields", frozenset())
    spec = {
        key: value
        if key in raw_fields
        else render.render(value, context, where=f"{where} tool.{key}")
        for key, value in command.tool.items()
    }
    spec["args"] = args
    return deep_merge(spec, command.overrides) if command.overrides else spec


def renders(command: CommandIssued, plugin: ToolPlugin) -> bool:
    """Whether `render_tool` runs a template for `command` (its args or a tool field the
    plugin does not keep raw); when it runs none, it cannot reach the render deadline and
    needs no thread. `edge_args` and `overrides` arrive rendered."""
    if render.has_template(command.args):
        return True
    raw_fields: frozenset[str] = getattr(plugin, "raw_fields", frozenset())
    return any(
        render.has_template(value) for key, value in command.tool.items() if key not in raw_fields
    )


def render_sink(
    block: dict[str, Any], result: Any, context: dict[str, Any], where: str
) -> tuple[dict[str, Any], Any]:
    """A sink's rendered tool block and the value it writes."""
    # NoETL's names for the step's result in a sink: `response` and `this`.
    scope = {**context, "result": result, "response": result, "this": result}
    tool = render.render(block.get("tool") or {}, scope, where=f"{where}.tool")
    assert isinstance(tool, dict)
    data = block.get("args", block.get("data"))
    value = result if data is None else render.render(data, scope, where=f"{where}.args")
    if data is None and ("args" in tool or "data" in tool):
        # NoETL's form: the rows inside the sink's tool block (rendered with it).
        tool = dict(tool)
        value = tool.pop("args") if "args" in tool else tool.pop("data")
    return tool, value


def job(command: CommandIssued) -> dict[str, Any]:
    """NoETL's `job`: which execution of which playbook version this is."""
    return {
        "execution_id": str(command.execution_id),
        "path": command.path,
        "version": command.version,
    }
