"""The bench's table, each figure next to its ratio to the baseline's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import msgspec
from rich.table import Table

from noetl.bench.model import Document

# Figures where more is better; for every other figure less is better.
_HIGHER_IS_BETTER: Final = ("_per_s",)
# Ratios within this factor of 1 are noise on a shared machine, not a change.
_NOISE: Final = 1.25


def figures(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric figure as (dotted name, value), machine facts and sizes excluded."""
    for key, value in document.items():
        name = f"{prefix}{key}"
        if key in ("machine", "quick", "items", "events", "executions", "rows", "steps"):
            continue
        if isinstance(value, dict):
            yield from figures(value, f"{name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield name, float(value)


def _ratio_cell(name: str, value: float, baseline: float | None) -> str:
    if baseline is None or baseline == 0:
        return ""
    ratio = value / baseline
    better = ratio > 1 if name.endswith(_HIGHER_IS_BETTER) else ratio < 1
    worse_by = ratio if not name.endswith(_HIGHER_IS_BETTER) else 1 / ratio if ratio else 0
    if better and max(ratio, 1 / ratio) > _NOISE:
        return f"[green]{ratio:.2f}x[/]"
    if not better and worse_by > _NOISE:
        return f"[red]{ratio:.2f}x[/]"
    return f"{ratio:.2f}x"


def table(document: Document, baseline: dict[str, Any] | None) -> Table:
    """The figures, their baseline values and the ratios (green better, red worse)."""
    current = msgspec.to_builtins(document)
    previous = dict(figures(baseline)) if baseline else {}
    machine = document.machine
    title = (
        f"noetl-runtime bench{' --quick' if document.quick else ''}: {machine.cores} cores "
        f"(load {machine.load_avg}), Python {machine.python}, NATS {machine.nats}, "
        f"PostgreSQL {machine.postgres}"
    )
    grid = Table("figure", "value", "baseline", "ratio", title=title)
    for name, value in figures(current):
        before = previous.get(name)
        grid.add_row(
            name,
            f"{value:.3f}",
            "" if before is None else f"{before:.3f}",
            _ratio_cell(name, value, before),
        )
    return grid


def comparable(document: Document, baseline: dict[str, Any] | None) -> str | None:
    """Why the baseline's figures do not compare with these, if they do not."""
    if baseline is None:
        return None
    if bool(baseline.get("quick")) != document.quick:
        return "the baseline was measured with different sizes (--quick): ratios are not comparable"
    return None
