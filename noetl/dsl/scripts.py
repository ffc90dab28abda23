"""Which script files a playbook names by path relative to itself (they travel with it)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

from noetl.dsl.models import Playbook


def script_file(tool: Mapping[str, Any]) -> str | None:
    """The relative path of the `file` script a tool block names, if it names one.

    Absolute paths and other sources (http, s3, gcs) do not travel with the playbook, and
    neither does a uri that is a template (it is only known when the step runs).
    """
    script = tool.get("script")
    if not isinstance(script, Mapping) or not isinstance(script.get("uri"), str):
        return None
    uri: str = script["uri"]
    source = script.get("source") or {}
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind not in (None, "file") or "://" in uri or "{{" in uri:
        return None
    if posixpath.isabs(uri) or posixpath.normpath(uri).startswith(".."):
        return None
    return uri


def _tools(playbook: Playbook) -> Iterator[Mapping[str, Any]]:
    for step in playbook.workflow:
        if step.tool is not None:
            yield step.tool
            task = step.tool.get("task")
            if isinstance(task, Mapping):
                yield task.get("tool", task)
    for task in playbook.workbook:
        yield task.tool


def script_files(playbook: Playbook) -> set[str]:
    """Every relative file script the playbook's tools name."""
    return {uri for tool in _tools(playbook) if (uri := script_file(tool)) is not None}
