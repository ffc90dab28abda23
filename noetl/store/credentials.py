"""Credentials in `noetl.credential`, their data encrypted at rest (see `noetl.crypto`).

A credential is a name, a type and a JSON object of data, validated by
`noetl.store.credential_types` (re-exported here) before it is stored.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from noetl.config import Settings
from noetl.crypto import decrypt, encrypt, load_key
from noetl.errors import ConfigError, MissingKeyError, RenderError, StoreError
from noetl.secrets import secret_env_name, secret_value, secret_values
from noetl.store.credential_types import (
    KNOWN_TYPES,
    parse_auth,
    parse_bindings,
    validate_credential,
    validate_name,
)

__all__ = [
    "KNOWN_TYPES",
    "Credential",
    "CredentialInfo",
    "CredentialStore",
    "parse_auth",
    "parse_bindings",
    "resolve_secrets",
    "validate_credential",
    "validate_name",
]


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """A credential without its data."""

    name: str
    type: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential with its decrypted data (kept out of `repr`, so out of tracebacks)."""

    name: str
    type: str
    data: dict[str, Any] = field(repr=False)
    created_at: datetime
    updated_at: datetime


# -- the store ------------------------------------------------------------------------------


def _aad(name: str) -> bytes:
    # Binds a ciphertext to its row: data copied under another name will not decrypt.
    return b"noetl.credential:" + name.encode("utf-8")


class CredentialStore:
    """Credentials in `noetl.credential` of the pool's database, encrypted with `key`.

    When `key` is the MissingKeyError saying why there is none (see `open`), listing and
    deleting still work; reading or writing data raises that error.
    """

    def __init__(self, pool: asyncpg.Pool, key: bytes | MissingKeyError) -> None:
        self.pool = pool
        self._key = key

    @classmethod
    async def open(
        cls,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        announce: Callable[[str], None] | None = None,
    ) -> CredentialStore:
        """The store with the key of `settings` (`noetl.crypto.load_key`). A key file is
        generated only while no credential is stored, so stored credentials are never
        orphaned by a new key: with the key file missing, the store can list and delete
        them, and reading or writing data raises MissingKeyError (where the key belongs, how
        to restore it). Raises ConfigError when the configured key is unusable."""
        stored = await pool.fetchval("SELECT count(*) FROM noetl.credential")
        try:
            key = await asyncio.to_thread(load_key, settings, stored=stored, announce=announce)
        except MissingKeyError as exc:
            return cls(pool, exc)
        return cls(pool, key)

    def _usable_key(self) -> bytes:
        if isinstance(self._key, MissingKeyError):
            raise MissingKeyError(self._key.path, self._key.stored)
        return self._key

    async def set(self, name: str, type: str, data: Mapping[str, Any]) -> bool:
        """Create or replace credential `name` (validated); True if it was created.
        Raises ConfigError on an invalid name, type or data."""
        validate_name(name)
        kind, clean = validate_credential(type, data)
        blob = encrypt(self._usable_key(), msgspec.json.encode(clean), aad=_aad(name))
        created = await self.pool.fetchval(
            """
            INSERT INTO noetl.credential (name, type, data) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET type = EXCLUDED.type, data = EXCLUDED.data, updated_at = now()
            RETURNING xmax = 0
            """,
            name, kind, blob,
        )  # fmt: skip
        return bool(created)

    async def find(self, name: str) -> Credential | None:
        """Credential `name` with its data decrypted, or None if there is none."""
        row = await self.pool.fetchrow(
            "SELECT name, type, data, created_at, updated_at FROM noetl.credential WHERE name = $1",
            name,
        )
        if row is None:
            return None
        key = self._usable_key()
        try:
            plain = decrypt(key, bytes(row["data"]), aad=_aad(name))
        except ConfigError as exc:
            raise ConfigError(f"credential `{name}`: {exc}") from None
        return Credential(
            name=row["name"],
            type=row["type"],
            data=msgspec.json.decode(plain),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    async def get(self, name: str) -> Credential:
        """Credential `name` with its data decrypted. Raises StoreError when missing,
        ConfigError when it cannot be decrypted with this key."""
        credential = await self.find(name)
        if credential is None:
            raise StoreError(
                f"credential `{name}` does not exist; create it with "
                f"`noetl-runtime credential set {name} --type ... --data ...`"
            )
        return credential

    async def for_auth(self, auth: Any) -> Credential:
        """The credential a tool's `auth` names, checked against the type it states."""
        name, expected = parse_auth(auth)
        credential = await self.get(name)
        if expected is not None and credential.type != expected:
            raise ConfigError(
                f"credential `{name}` is of type {credential.type}, but `auth` expects {expected}"
            )
        return credential

    async def all_secret_values(self) -> builtins.set[str]:
        """The secret values of every stored credential that this key decrypts (for masking
        whatever any step records, not only what the step itself read)."""
        if isinstance(self._key, MissingKeyError):
            return builtins.set()
        rows = await self.pool.fetch("SELECT name, data FROM noetl.credential")
        values: builtins.set[str] = builtins.set()
        for row in rows:
            try:
                plain = decrypt(self._key, bytes(row["data"]), aad=_aad(row["name"]))
            except ConfigError:
                continue  # another key's credential: nothing of it can reach this runner
            values |= builtins.set(secret_values(msgspec.json.decode(plain)))
        return values

    async def list(self) -> builtins.list[CredentialInfo]:
        """Every credential, without data, by name."""
        rows = await self.pool.fetch(
            "SELECT name, type, created_at, updated_at FROM noetl.credential ORDER BY name"
        )
        return [
            CredentialInfo(r["name"], r["type"], r["created_at"], r["updated_at"]) for r in rows
        ]

    async def delete(self, name: str) -> bool:
        """Delete credential `name`; False if there was none."""
        deleted = await self.pool.fetchval(
            "DELETE FROM noetl.credential WHERE name = $1 RETURNING true", name
        )
        return bool(deleted)


# -- {{ secret.NAME }} ----------------------------------------------------------------------


async def resolve_secrets(
    names: Iterable[str],
    store: CredentialStore | None,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The value of each secret name, for the template name `secret`: the credential's
    secret value (see `secret_value`) when a credential has the name, else the variable
    `secret_env_name(name)` of `env` (default: the process environment).

    Raises RenderError naming the secret and both ways to define it when neither exists,
    or saying why its credential cannot be decrypted.
    """
    source = os.environ if env is None else env
    resolved: dict[str, str] = {}
    for name in sorted(set(names)):
        if store is not None:
            try:
                credential = await store.find(name)
            except ConfigError as exc:  # no key, or not this key: the step fails, says why
                raise RenderError(f"secret `{name}`: {exc}") from exc
            if credential is not None:
                resolved[name] = secret_value(name, credential.data)
                continue
        variable = secret_env_name(name)
        value = source.get(variable)
        if value is None:
            raise RenderError(
                f"secret `{name}` is not defined: create a credential with "
                f"`noetl-runtime credential set {name} --type secret --data "
                f'\'{{"value": "..."}}\'`, or set {variable} in the runner\'s environment'
            )
        resolved[name] = value
    return resolved
