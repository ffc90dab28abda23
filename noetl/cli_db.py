"""`noetl-runtime db ...`: create, upgrade and check the database schema, and prune old
executions (PostgreSQL only, no NATS; the embedded server in local mode)."""

from __future__ import annotations

import click
import msgspec

from noetl.cli_core import (
    EXIT_FAILED,
    EXIT_OK,
    json_option,
    out,
    print_json,
    run_command,
    say,
    settings,
    with_store,
)
from noetl.errors import ConfigError
from noetl.retention import parse_duration, prune
from noetl.store import Store

__all__ = ["db"]


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command(name="init")
def db_init() -> None:
    """Create or upgrade the schema (idempotent)."""

    async def body(store: Store) -> int:
        applied = await store.init_schema()
        say(f"applied migrations {applied}" if applied else "schema is up to date")
        return EXIT_OK

    run_command(with_store(settings(), body))


@db.command(name="validate")
def db_validate() -> None:
    """Say what is missing or different in the schema (exit 1 if anything)."""

    async def body(store: Store) -> int:
        problems = await store.check_schema()
        for problem in problems:
            say(problem)
        if not problems:
            say("schema is valid")
        return EXIT_FAILED if problems else EXIT_OK

    run_command(with_store(settings(), body))


@db.command(name="prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    help="Delete executions that ended longer ago than this: 30d, 12h, 90m, 45s, 2w.",
)
@click.option(
    "--archive",
    "archive",
    metavar="DIR|s3://BUCKET/PREFIX|gs://BUCKET/PREFIX",
    help="First write each execution's events there (one JSONL object per execution); "
    "only what was written is deleted.",
)
@click.option("--gzip", "gzipped", is_flag=True, help="Compress the archived JSONL (.jsonl.gz).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Execution trees deleted per transaction.",
)
@json_option("Print one JSON document.")
def db_prune(
    older_than: str,
    archive: str | None,
    gzipped: bool,
    dry_run: bool,
    batch: int,
    as_json: bool,
) -> None:
    """Delete ended executions (and their events and unused large values) older than a
    duration; running ones, and parents of running ones, are never touched."""
    try:
        age = parse_duration(older_than)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None

    async def body(store: Store) -> int:
        report = await prune(
            store,
            age,
            archive=archive,
            gzipped=gzipped,
            dry_run=dry_run,
            batch=batch,
            say=say if not as_json else lambda _: None,
        )
        if as_json:
            print_json(msgspec.to_builtins(report))
        else:
            verb = "would delete" if dry_run else "deleted"
            kept = f", archived to {archive}" if archive and not dry_run else ""
            out.print(
                f"{verb} {report.executions} execution(s) ended before {report.cutoff} "
                f"({report.events} event(s)) and {report.blobs} stored value(s) nothing "
                f"refers to any more{kept}",
                markup=False,
            )
        return EXIT_OK

    run_command(with_store(settings(), body))
