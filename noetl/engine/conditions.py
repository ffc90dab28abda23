"""Conditions as NoETL reads them: an undefined name tested for truth is false, noted.

`when` (in `next` and `case`), `retry.when` and `continue_while` evaluate here. Pure: the
notes are handed back for the run to record as a `step.warning` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl import render


def holds(template: str, context: Mapping[str, Any], where: str, notes: list[str]) -> bool:
    """Whether the condition holds; each undefined name it tested is appended to `notes`.
    Raises RenderError for any other error (an undefined name compared or printed)."""
    found = render.condition(template, context, where=where)
    notes.extend(f"{where}: {name}, taken as false" for name in found.undefined)
    return found.holds
