"""Playbooks written by tests: the YAML head every test playbook shares, and its steps."""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["CHAIN_STEPS", "playbook_text", "slow_chain", "write_playbook"]


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


#: The steps of `slow_chain` (`start`, `s1`… `s7`), then `end`.
CHAIN_STEPS = 8


def slow_chain(directory: Path) -> Path:
    """Write `slow_chain`: python steps, each taking a moment, each adding one to a counter;
    `end` returns `{done: true}`."""
    lines = [
        "apiVersion: noetl.io/v2",
        "kind: Playbook",
        "metadata: {name: slow_chain}",
        "workflow:",
    ]
    for i in range(CHAIN_STEPS):
        name = "start" if i == 0 else f"s{i}"
        following = "end" if i == CHAIN_STEPS - 1 else f"s{i + 1}"
        previous = "0" if i == 0 else f"{{{{ {'start' if i == 1 else f's{i - 1}'}.n }}}}"
        lines += [
            f"  - step: {name}",
            "    tool:",
            "      kind: python",
            f'      args: {{n: "{previous}"}}',
            "      code: |",
            "        import time",
            "        time.sleep(0.4)",
            "        result = {'n': int(n) + 1}",
            f"    next: [{following}]",
        ]
    lines += ["  - step: end", "    tool: {kind: python, code: 'result = {\"done\": True}'}"]
    path = directory / "slow_chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
