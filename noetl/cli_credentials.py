"""`noetl-runtime credential ...`: create, show, list and delete stored credentials.

Exit codes: 0 success, 1 no such credential or a runtime error, 2 usage or invalid data.
Only PostgreSQL is used (NATS is not needed); in local mode the embedded servers are
started like for any other command.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from noetl import local
from noetl.config import Settings
from noetl.crypto import load_key
from noetl.errors import ConfigError, NoetlError
from noetl.secrets import redact
from noetl.store import Store
from noetl.store.credentials import (
    KNOWN_TYPES,
    CredentialInfo,
    CredentialStore,
    validate_credential,
    validate_name,
)

__all__ = ["credential"]

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)

Body = Callable[[CredentialStore], Awaitable[int]]


def _say(line: str) -> None:
    _err.print(line, markup=False)


def _fail(message: str, code: int) -> NoReturn:
    _say(f"error: {message}")
    sys.exit(code)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _settings() -> Settings:
    """Settings from the environment and the root command's options (`--pg-dsn`, ...)."""
    root = click.get_current_context().find_root()
    overrides: dict[str, Any] = getattr(root.obj, "overrides", None) or {}
    return Settings.from_env(**overrides)


async def _with_store(settings: Settings, key: bytes, body: Body) -> int:
    services = await asyncio.to_thread(local.resolve, settings, announce=_say)
    store = await Store.connect(services.pg_dsn, max_size=2)
    try:
        await store.init_schema()
        return await body(CredentialStore(store.pool, key))
    finally:
        await store.close()


def _run(body: Body) -> None:
    """Connect to the database, run `body`, exit with its code; errors become messages."""
    try:
        settings = _settings()
        key = load_key(settings, announce=_say)
        code = asyncio.run(_with_store(settings, key, body))
    except ConfigError as exc:
        _fail(str(exc), 2)
    except NoetlError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


def _read_data(value: str) -> Any:
    """`--data`: JSON text, `@file.json`, or `@-` for standard input."""
    text = value
    if value == "@-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"--data {value}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--data is not valid JSON: {exc}") from exc


def _info(item: CredentialInfo) -> dict[str, Any]:
    return {
        "name": item.name,
        "type": item.type,
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


def _when(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="seconds")


@click.group()
def credential() -> None:
    """Manage credentials: stored encrypted, used by tools through `auth: NAME`.

    Shown values of secret fields are always masked (`***`).
    """


@credential.command(name="set")
@click.argument("name")
@click.option(
    "--type",
    "type_",
    required=True,
    help=f"Credential type: {', '.join(KNOWN_TYPES)}, or any other for free-form data.",
)
@click.option(
    "--data",
    required=True,
    help="The data as a JSON object, @file.json, or @- to read it from stdin.",
)
def set_credential(name: str, type_: str, data: str) -> None:
    """Create or replace credential NAME."""
    payload = _read_data(data)
    try:
        validate_name(name)
        kind, clean = validate_credential(type_, payload)
    except ConfigError as exc:
        _fail(str(exc), 2)

    async def body(store: CredentialStore) -> int:
        created = await store.set(name, kind, clean)
        _out.print(
            f"{'created' if created else 'updated'} credential `{name}` ({kind})", markup=False
        )
        return 0

    _run(body)


@credential.command(name="get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def get_credential(name: str, as_json: bool) -> None:
    """Show credential NAME, its secret values masked."""

    async def body(store: CredentialStore) -> int:
        found = await store.get(name)
        shown = redact(found.data)
        if as_json:
            _print_json(
                {
                    "name": found.name,
                    "type": found.type,
                    "data": shown,
                    "created_at": found.created_at.isoformat(),
                    "updated_at": found.updated_at.isoformat(),
                }
            )
            return 0
        table = Table("field", "value", title=f"{found.name} ({found.type})")
        for field, value in shown.items():
            table.add_row(field, value if isinstance(value, str) else json.dumps(value))
        _out.print(table)
        _out.print(
            f"created {_when(found.created_at)}, updated {_when(found.updated_at)}", markup=False
        )
        return 0

    _run(body)


@credential.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_credentials(as_json: bool) -> None:
    """List credentials (names and types, never data)."""

    async def body(store: CredentialStore) -> int:
        items = await store.list()
        if as_json:
            _print_json([_info(item) for item in items])
        elif not items:
            _say("no credentials; create one with `noetl-runtime credential set`")
        else:
            table = Table("name", "type", "created", "updated")
            for item in items:
                table.add_row(item.name, item.type, _when(item.created_at), _when(item.updated_at))
            _out.print(table)
        return 0

    _run(body)


@credential.command(name="delete")
@click.argument("name")
def delete_credential(name: str) -> None:
    """Delete credential NAME."""

    async def body(store: CredentialStore) -> int:
        if not await store.delete(name):
            _say(f"error: credential `{name}` does not exist")
            return 1
        _out.print(f"deleted credential `{name}`", markup=False)
        return 0

    _run(body)
