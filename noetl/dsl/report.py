"""What validation finds: each problem located in the file, and the report of one check."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from noetl.dsl.loader import NodePath
from noetl.dsl.models import Playbook
from noetl.messages import CodeLines

Severity = Literal["error", "warning"]


class Problem(Struct):
    """One finding, located in the file; `str()` gives `FILE:LINE:COL: message`."""

    file: str
    line: int
    col: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


class Report(Struct):
    """The outcome of a check: the playbook when there is no error, and every finding;
    with the playbook, where each python `code` block's lines sit in the file."""

    playbook: Playbook | None
    errors: list[Problem]
    warnings: list[Problem]
    code_lines: dict[NodePath, CodeLines] = {}

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    @property
    def findings(self) -> list[Problem]:
        """Errors and warnings together, in file order."""
        return sorted([*self.errors, *self.warnings], key=lambda p: (p.line, p.col))

    def strict(self) -> Report:
        """The same findings with every warning counted as an error (`validate --strict`)."""
        if not self.warnings:
            return self
        promoted = [msgspec.structs.replace(p, severity="error") for p in self.warnings]
        errors = sorted([*self.errors, *promoted], key=lambda p: (p.line, p.col))
        return Report(None, errors, [])
