"""The playbooks the bench runs, written to files so they register like a user's."""

from __future__ import annotations

from pathlib import Path

_HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {{name: {name}}}\nworkflow:\n"


def chain(directory: Path, steps: int) -> Path:
    """`steps` trivial python steps one after the other."""
    path = directory / f"bench_chain_{steps}.yaml"
    path.write_text(chain_text(steps))
    return path


def chain_text(steps: int) -> str:
    """The text of the chain playbook."""
    lines = [_HEAD.format(name=f"bench_chain_{steps}")]
    for i in range(steps):
        name = "start" if i == 0 else f"s{i}"
        lines.append(f"  - step: {name}\n    tool: {{kind: python, code: 'result = {i}'}}\n")
        if i < steps - 1:
            lines.append(f"    next: [s{i + 1}]\n")
    return "".join(lines)


def fanout(directory: Path, name: str) -> Path:
    """An async loop of `workload.items` trivial python items, then a step summing them."""
    path = directory / f"{name}.yaml"
    path.write_text(
        _HEAD.format(name=name)
        + "  - step: start\n"
        + '    loop: {in: "{{ range(workload.items) | list }}", iterator: n, mode: async}\n'
        + "    tool: {kind: python, args: {n: '{{ n }}'}, code: 'result = n'}\n"
        + "    next: [total]\n"
        + "  - step: total\n"
        + "    tool: {kind: python, args: {values: '{{ start }}'}, code: 'result = sum(values)'}\n"
    )
    return path
