"""`noetl-runtime bench`: measure the runtime on the configured or embedded servers.

Exit codes: 0 measured, 1 a workload failed (or a runtime error), 2 usage.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console

from noetl.bench import ALL_WORKLOADS, DEFAULT_WORKLOADS, Workload, run_bench
from noetl.bench.report import comparable, table
from noetl.config import Settings
from noetl.errors import ConfigError, NoetlError

__all__ = ["bench"]

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False)

DEFAULT_BASELINE = Path("tests/bench/baseline.json")


def _say(line: str) -> None:
    _err.print(line, markup=False)


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
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
    root = click.get_current_context().find_root()
    overrides: dict[str, Any] = getattr(root.obj, "overrides", None) or {}
    try:
        settings = Settings.from_env(**overrides)
        document = asyncio.run(
            run_bench(settings, workloads or DEFAULT_WORKLOADS, quick=quick, say=_say)
        )
    except ConfigError as exc:
        _say(f"error: {exc}")
        sys.exit(2)
    except NoetlError as exc:
        _say(f"error: {exc}")
        sys.exit(1)
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(document)).decode() + "\n")
        return
    _out.print(table(document, previous))
    warning = comparable(document, previous)
    if warning:
        _say(f"note: {warning}")
