"""The bench table: each figure with its ratio to the baseline, coloured by direction."""

from __future__ import annotations

import msgspec
from rich.console import Console

from noetl.bench.model import Chain, Document, Floors, Machine, Spread, Throughput
from noetl.bench.report import comparable, figures, table


def _document(quick: bool = False) -> Document:
    return Document(
        machine=Machine(cores=2, python="3.11.7", nats="2.10.0", postgres="16.2", load_avg=1.0),
        quick=quick,
        floors=Floors(pg_commit_ms=1.0, js_publish_ack_ms=0.5),
        chain=Chain(per_step_ms=Spread(p50=3.0, min=2.5, max=4.0), per_step_over_floor=2.0),
        throughput=Throughput(executions_per_s=100.0, steps_per_s=300.0, executions=500),
    )


def _render(document: Document, baseline: dict[str, object] | None) -> str:
    console = Console(record=True, width=200, color_system="truecolor")
    console.print(table(document, baseline))
    return console.export_text(styles=True)


def test_figures_are_the_measures_only() -> None:
    found = dict(figures(msgspec.to_builtins(_document())))
    assert found["chain.per_step_ms.p50"] == 3.0
    assert found["throughput.steps_per_s"] == 300.0
    assert "throughput.executions" not in found and not any(k.startswith("machine") for k in found)


def test_ratios_to_the_baseline_and_their_direction() -> None:
    baseline = msgspec.to_builtins(_document())
    baseline["chain"]["per_step_ms"]["p50"] = 1.5  # now twice as slow: worse
    baseline["throughput"]["steps_per_s"] = 150.0  # now twice as many: better
    text = _render(_document(), baseline)
    slower = next(line for line in text.splitlines() if "chain.per_step_ms.p50" in line)
    faster = next(line for line in text.splitlines() if "throughput.steps_per_s" in line)
    assert "2.00x" in slower and "\x1b[31m" in slower  # red
    assert "2.00x" in faster and "\x1b[32m" in faster  # green
    same = next(line for line in text.splitlines() if "floors.pg_commit_ms" in line)
    assert "1.00x" in same and "\x1b[3" not in same


def test_no_baseline_and_an_incomparable_one() -> None:
    assert "x" not in _render(_document(), None).split("chain.per_step_ms.p50")[1].split("\n")[0]
    assert comparable(_document(quick=True), msgspec.to_builtins(_document())) is not None
    assert comparable(_document(), msgspec.to_builtins(_document())) is None
