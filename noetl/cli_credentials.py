"""`noetl-runtime credential ...`: create, show, list and delete stored credentials.

Exit codes: 0 success, 1 no such credential or a runtime error, 2 usage or invalid data.
Only PostgreSQL is used (NATS is not needed); in local mode the embedded servers are
started like for any other command.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import click

from noetl.cli_core import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    json_option,
    out,
    print_json,
    print_table,
    read_json,
    run_command,
    say,
    settings,
    with_store,
)
from noetl.errors import ConfigError
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

Body = Callable[[CredentialStore], Awaitable[int]]


def _run(body: Body) -> None:
    """Open the credential store (PostgreSQL only, no NATS), run `body`, exit with its code."""
    config = settings()

    async def with_credentials(store: Store) -> int:
        await store.init_schema()
        return await body(await CredentialStore.open(store.pool, config, announce=say))

    run_command(with_store(config, with_credentials))


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
    payload = read_json(data, "--data", stdin=True)
    try:
        validate_name(name)
        kind, clean = validate_credential(type_, payload)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)

    async def body(store: CredentialStore) -> int:
        created = await store.set(name, kind, clean)
        out.print(
            f"{'created' if created else 'updated'} credential `{name}` ({kind})", markup=False
        )
        return EXIT_OK

    _run(body)


@credential.command(name="get")
@click.argument("name")
@json_option()
def get_credential(name: str, as_json: bool) -> None:
    """Show credential NAME, its secret values masked."""

    async def body(store: CredentialStore) -> int:
        found = await store.get(name)
        shown = redact(found.data)
        if as_json:
            print_json(
                {
                    "name": found.name,
                    "type": found.type,
                    "data": shown,
                    "created_at": found.created_at.isoformat(),
                    "updated_at": found.updated_at.isoformat(),
                }
            )
            return EXIT_OK
        print_table(
            ("field", "value"),
            [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in shown.items()],
            title=f"{found.name} ({found.type})",
        )
        out.print(
            f"created {_when(found.created_at)}, updated {_when(found.updated_at)}", markup=False
        )
        return EXIT_OK

    _run(body)


@credential.command(name="list")
@json_option("Print a JSON array.")
def list_credentials(as_json: bool) -> None:
    """List credentials (names and types, never data)."""

    async def body(store: CredentialStore) -> int:
        items = await store.list()
        if as_json:
            print_json([_info(item) for item in items])
        elif not items:
            say("no credentials; create one with `noetl-runtime credential set`")
        else:
            print_table(
                ("name", "type", "created", "updated"),
                [(i.name, i.type, _when(i.created_at), _when(i.updated_at)) for i in items],
            )
        return EXIT_OK

    _run(body)


@credential.command(name="delete")
@click.argument("name")
def delete_credential(name: str) -> None:
    """Delete credential NAME."""

    async def body(store: CredentialStore) -> int:
        if not await store.delete(name):
            say(f"error: credential `{name}` does not exist")
            return EXIT_FAILED
        out.print(f"deleted credential `{name}`", markup=False)
        return EXIT_OK

    _run(body)
