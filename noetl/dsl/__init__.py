"""The playbook language: models, YAML loading with positions, validation and the graph.

`check_*` report every problem found; `load_*` return the playbook or raise PlaybookError.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from noetl.dsl.graph import Graph
from noetl.dsl.loader import NodePath
from noetl.dsl.models import (
    CaseRule,
    CaseThen,
    Collect,
    Edge,
    Else,
    Loop,
    Metadata,
    NextEntry,
    Pagination,
    Playbook,
    Retry,
    Step,
    When,
    WorkbookTask,
)
from noetl.dsl.report import Problem, Report
from noetl.dsl.scripts import script_file, script_files
from noetl.dsl.tool_fields import BUILTIN_KINDS
from noetl.dsl.validate import check_file, check_text
from noetl.errors import PlaybookError
from noetl.messages import CodeLines

__all__ = [
    "BUILTIN_KINDS",
    "CaseRule",
    "CaseThen",
    "Collect",
    "Edge",
    "Else",
    "Graph",
    "Loop",
    "Metadata",
    "NextEntry",
    "Pagination",
    "Playbook",
    "Problem",
    "Report",
    "Retry",
    "Step",
    "When",
    "WorkbookTask",
    "check_file",
    "check_text",
    "load_file",
    "load_text",
    "load_with_lines",
    "script_file",
    "script_files",
]


def load_text(
    text: str, *, filename: str = "<playbook>", known_kinds: Collection[str] = ()
) -> Playbook:
    """The playbook in `text`; PlaybookError lists every error when it is invalid."""
    return _playbook(check_text(text, filename=filename, known_kinds=known_kinds))


def load_with_lines(
    text: str, *, filename: str = "<playbook>", known_kinds: Collection[str] = ()
) -> tuple[Playbook, dict[NodePath, CodeLines]]:
    """The playbook in `text` with where each python `code` block's lines sit in it (by the
    block's path in the document); PlaybookError as `load_text`."""
    report = check_text(text, filename=filename, known_kinds=known_kinds)
    return _playbook(report), report.code_lines


def load_file(path: str | Path, *, known_kinds: Collection[str] = ()) -> Playbook:
    """The playbook in the file at `path`; PlaybookError lists every error when invalid."""
    return _playbook(check_file(path, known_kinds=known_kinds))


def _playbook(report: Report) -> Playbook:
    if report.playbook is None:
        raise PlaybookError([str(problem) for problem in report.errors])
    return report.playbook
