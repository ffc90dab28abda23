"""The `event_log` sink: the rows go into the execution's events, nowhere else."""

from __future__ import annotations

from typing import Any

from plugins.base import ToolContext
from plugins.sql import json_safe


class EventLogSink:
    """Sink kind `event_log`: returns the rows, which the runner records with the step."""

    kind = "event_log"

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """`{"rows": n, "data": rows}` (JSON-safe)."""
        return {"rows": len(rows), "data": [json_safe(row) for row in rows]}
