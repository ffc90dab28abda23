"""`noetl-runtime db ...`: create, upgrade and check the database schema (PostgreSQL only,
no NATS; the embedded server in local mode)."""

from __future__ import annotations

import click

from noetl.cli_core import EXIT_FAILED, EXIT_OK, run_command, say, settings, with_store
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
