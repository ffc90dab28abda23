"""A tool's context for tests that call tools directly, without a runner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl.errors import ToolError
from plugins.base import ToolContext

__all__ = ["tool_context"]


def tool_context(
    credentials: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    execution_id: int = 1,
    command_id: str = "cmd-1",
    step: str = "step",
    **fields: Any,
) -> ToolContext:
    """A context whose credential store is the `credentials` mapping: a name it lacks is
    a ToolError, as the runner's store says."""
    store = dict(credentials or {})

    async def lookup(name: str) -> Mapping[str, Any]:
        if name not in store:
            raise ToolError(f"no credential {name!r}")
        return store[name]

    return ToolContext(
        execution_id=execution_id, command_id=command_id, step=step, credentials=lookup, **fields
    )
