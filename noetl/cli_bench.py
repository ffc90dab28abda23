"""`noetl-runtime bench`: measure the runtime on the configured or embedded servers.

Exit codes: 0 measured, 1 a workload failed (or a runtime error), 2 usage or configuration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from noetl.bench import ALL_WORKLOADS, DEFAULT_WORKLOADS, Workload, run_bench
from noetl.bench.report import comparable, table
from noetl.cli_core import EXIT_OK, json_option, out, run_command, say, settings

__all__ = ["bench"]

DEFAULT_BASELINE = Path("tests/bench/baseline.json")


def _baseline(path: Path | None) -> dict[str, Any] | None:
    """The baseline document: the one named, else tests/bench/baseline.json if present."""
    chosen = path or (DEFAULT_BASELINE if DEFAULT_BASELINE.is_file() else None)
    if chosen is None:
        return None
    try:
        loaded = json.loads(chosen.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise click.UsageError(f"--baseline {chosen}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise click.UsageError(f"--baseline {chosen}: not a bench document")
    return loaded


@click.command()
@click.option(
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice(ALL_WORKLOADS),
    help=f"Run this workload only (repeatable; default: {', '.join(DEFAULT_WORKLOADS)}).",
)
@click.option("--quick", is_flag=True, help="Small sizes: a quick check, not a measurement.")
@json_option("Print one JSON document.")
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Figures to compare with (default {DEFAULT_BASELINE} when present).",
)
def bench(
    workloads: tuple[Workload, ...], quick: bool, as_json: bool, baseline: Path | None
) -> None:
    """Measure step cost, fan-out, throughput, replay and history on this machine.

    Uses NOETL_NATS_URL / NOETL_PG_DSN when set (a scratch database is created and
    dropped; the NATS server must have no mesh running), else embedded servers in a
    temporary home. Each figure is printed with its ratio to the baseline.
    """
    previous = _baseline(baseline)

    async def body() -> int:
        document = await run_bench(settings(), workloads or DEFAULT_WORKLOADS, quick=quick, say=say)
        if as_json:
            sys.stdout.write(msgspec.json.format(msgspec.json.encode(document)).decode() + "\n")
            return EXIT_OK
        out.print(table(document, previous))
        warning = comparable(document, previous)
        if warning:
            say(f"note: {warning}")
        return EXIT_OK

    run_command(body())
