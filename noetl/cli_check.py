"""`noetl-runtime db check`: report every violation of the runtime's invariants.

Exit codes: 0 the event table is clean, 1 a violation was found (or a runtime error), 2 usage.
Reads PostgreSQL only; in local mode the embedded servers are started like for any command.
"""

from __future__ import annotations

from typing import Any

import click
import msgspec

from noetl.cli_core import (
    EXIT_FAILED,
    EXIT_OK,
    json_option,
    out,
    print_json,
    print_table,
    run_command,
    settings,
    with_store,
)
from noetl.store import Store
from noetl.store.check import CheckReport, check_events

__all__ = ["db_check"]


def report_document(report: CheckReport) -> dict[str, Any]:
    """The `--json` document (execution ids as strings, like every other command)."""
    violations = []
    for v in report.violations:
        item = msgspec.to_builtins(v)
        item["execution_id"] = str(v.execution_id)
        violations.append(item)
    return {"clean": report.clean, "executions": report.executions, "violations": violations}


def _show(report: CheckReport) -> None:
    if report.clean:
        out.print(f"clean: no violation in {report.executions} execution(s)")
        return
    print_table(
        ("invariant", "execution", "step / command", "what", "events"),
        (
            (
                v.invariant,
                str(v.execution_id),
                v.command_id or v.step or "",
                v.message,
                " ".join(str(i) for i in v.event_ids),
            )
            for v in report.violations
        ),
    )
    out.print(f"{len(report.violations)} violation(s) in {report.executions} execution(s)")


@click.command(name="check")
@click.option("--execution", "execution", help="Check one execution (default: all).")
@json_option("Print one JSON document.")
@click.option(
    "--settle",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds after an execution's end before every command must have an outcome.",
)
@click.option(
    "--stuck-after",
    type=float,
    default=3600.0,
    show_default=True,
    help="Silence allowed to a running execution without a timeout of its own.",
)
def db_check(execution: str | None, as_json: bool, settle: float, stuck_after: float) -> None:
    """Check the event table against the runtime's invariants (exit 1 on a violation)."""
    execution_id = None
    if execution is not None:
        try:
            execution_id = int(execution)
        except ValueError:
            raise click.UsageError(f"execution id must be a number, got {execution!r}") from None

    async def body(store: Store) -> int:
        if execution_id is not None:
            await store.get_execution(execution_id)
        report = await check_events(
            store.pool, execution_id, settle=settle, stuck_after=stuck_after
        )
        if as_json:
            print_json(report_document(report))
        else:
            _show(report)
        return EXIT_OK if report.clean else EXIT_FAILED

    run_command(with_store(settings(), body))
