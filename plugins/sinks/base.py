"""The sink interface: where a step's result is written after the tool succeeds.

The runner renders the sink's `tool` block, turns the data into rows with `rows_of` and
calls `await get_sink(kind).write(ctx, spec, rows)`; the returned mapping (`rows` written,
and what else the sink reports) is recorded with the step. A ToolError fails the step.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from noetl.errors import ToolError
from noetl.sql_shape import is_statements, last_rows
from plugins.base import ToolContext


@runtime_checkable
class Sink(Protocol):
    """A sink kind: writes rows somewhere and says how many."""

    kind: str

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Write `rows` as `spec` (the sink's rendered tool block) says; `{"rows": n, ...}`."""
        ...


def rows_of(value: Any) -> list[dict[str, Any]]:
    """The rows in a step's data: a mapping is one row, a list of mappings many; NoETL's
    mapping of SQL statements stands for the rows of its last statement that has rows."""
    if is_statements(value):
        value = last_rows(value)
    if isinstance(value, Mapping):
        return [dict(value)]
    if isinstance(value, list | tuple):
        rows = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise ToolError(
                    f"sink: item {index} of the data is a {type(item).__name__}, "
                    "not a mapping: a sink writes a dict or a list of dicts",
                    error_type="sink",
                )
            rows.append(dict(item))
        return rows
    raise ToolError(
        f"sink: the data is a {type(value).__name__}; a sink writes a dict (one "
        "row) or a list of dicts",
        error_type="sink",
    )


#: Each sink kind's class, imported on first use (the cloud SDKs are slow to import).
SINK_CLASSES: dict[str, str] = {
    "postgres": "plugins.sinks.postgres:PostgresSink",
    "duckdb": "plugins.sinks.duckdb:DuckdbSink",
    "snowflake": "plugins.sinks.snowflake:SnowflakeSink",
    "file": "plugins.sinks.file:FileSink",
    "s3": "plugins.sinks.objects:S3Sink",
    "gcs": "plugins.sinks.objects:GcsSink",
    "event_log": "plugins.sinks.event_log:EventLogSink",
}

# One instance per kind for the process: the postgres sink keeps its pools across writes.
_instances: dict[str, Sink] = {}


def get_sink(kind: str) -> Sink:
    """The sink of `kind` (one shared instance per kind)."""
    sink = _instances.get(kind)
    if sink is None:
        target = SINK_CLASSES.get(kind)
        if target is None:
            raise ToolError(
                f"sink: unknown kind {kind!r} (one of {', '.join(SINK_CLASSES)})",
                error_type="unknown_kind",
            )
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        sink = _instances[kind] = cls()
    return sink


async def close_sinks() -> None:
    """Release what the sinks hold (connection pools); call at runner shutdown."""
    sinks = list(_instances.values())
    _instances.clear()
    for sink in sinks:
        close = getattr(sink, "aclose", None)
        if close is not None:
            await close()
