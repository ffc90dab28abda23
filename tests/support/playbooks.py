"""Playbooks written by tests: the YAML head every test playbook shares, and its steps."""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["playbook_text", "write_playbook"]


def playbook_text(body: str, *, metadata: str = "{name: t}", workload: str | None = None) -> str:
    """A playbook's YAML whose `workflow:` is `body` (YAML steps, any indentation)."""
    head = f"apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {metadata}\n"
    if workload is not None:
        head += f"workload: {workload}\n"
    return head + "workflow:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def write_playbook(
    directory: Path, name: str, body: str, *, metadata: str = "", workload: str = ""
) -> Path:
    """Write a playbook named `name` whose `workflow:` is `body` (YAML, any indentation);
    `metadata` is added to its metadata mapping after the name."""
    path = directory / f"{name}.yaml"
    path.write_text(
        playbook_text(body, metadata=f"{{name: {name}{metadata}}}", workload=workload or None)
    )
    return path
