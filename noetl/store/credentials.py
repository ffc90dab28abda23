"""Credentials in `noetl.credential`, their data encrypted at rest (see `noetl.crypto`).

A credential is a name, a type and a JSON object of data. Known types are validated
(`validate_credential`); any other type is stored as a free-form object.
"""

from __future__ import annotations

import asyncio
import builtins
import difflib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from noetl.config import Settings
from noetl.crypto import decrypt, encrypt, load_key
from noetl.errors import ConfigError, MissingKeyError, RenderError, StoreError
from noetl.secrets import secret_env_name, secret_value, secret_values

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

_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


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


# -- validation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Type:
    """The fields of a known credential type."""

    fields: Mapping[str, str]  # field -> kind: "string", "port", "headers", "object"
    # At least one of these groups must be complete ("" means: no field needed).
    forms: tuple[tuple[str, ...], ...]
    # A field and the fields it excludes (postgres `dsn` and the parts of one).
    alone: tuple[str, tuple[str, ...]] | None = None
    # Common misspellings and names other tools use, -> the field meant.
    aliases: Mapping[str, str] = field(default_factory=dict)


_PG_FIELDS: Final = {
    "dsn": "string",
    "host": "string",
    "port": "port",
    "user": "string",
    "password": "string",
    "database": "string",
    "sslmode": "string",
}
_HTTP_FIELDS: Final = {
    "token": "string",
    "username": "string",
    "password": "string",
    "name": "string",
    "value": "string",
    "headers": "headers",
}

KNOWN_TYPES: Final[Mapping[str, _Type]] = {
    "postgres": _Type(
        _PG_FIELDS,
        (("dsn",), ("host", "user", "database")),
        alone=("dsn", ("host", "port", "user", "password", "database")),
        aliases={
            "username": "user",
            "dbname": "database",
            "db": "database",
            "pass": "password",
            "pwd": "password",
            "hostname": "host",
        },
    ),
    "snowflake": _Type(
        {
            "account": "string",
            "user": "string",
            "password": "string",
            "private_key": "string",
            "private_key_passphrase": "string",
            "token": "string",
            "authenticator": "string",
            "warehouse": "string",
            "database": "string",
            "schema": "string",
            "role": "string",
        },
        (
            ("account", "user", "password"),
            ("account", "user", "private_key"),
            ("account", "user", "token"),
            ("account", "user", "authenticator"),
        ),
        aliases={"username": "user", "pass": "password", "pwd": "password"},
    ),
    "http": _Type(
        _HTTP_FIELDS,
        (("token",), ("username", "password"), ("name", "value"), ("headers",)),
        aliases={"user": "username", "bearer": "token", "header": "name"},
    ),
    "bearer": _Type({"token": "string"}, (("token",),), aliases={"bearer": "token"}),
    "basic": _Type(
        {"username": "string", "password": "string"},
        (("username", "password"),),
        aliases={"user": "username", "pass": "password", "pwd": "password"},
    ),
    "header": _Type(
        {"name": "string", "value": "string", "headers": "headers"},
        (("name", "value"), ("headers",)),
        aliases={"header": "name"},
    ),
    "aws": _Type(
        {
            "aws_access_key_id": "string",
            "aws_secret_access_key": "string",
            "aws_session_token": "string",
            "region": "string",
            "endpoint_url": "string",
        },
        (("aws_access_key_id", "aws_secret_access_key"),),
        aliases={
            "access_key_id": "aws_access_key_id",
            "key_id": "aws_access_key_id",
            "secret_access_key": "aws_secret_access_key",
            "session_token": "aws_session_token",
            "region_name": "region",
            "endpoint": "endpoint_url",
        },
    ),
    "gcs": _Type(
        {
            "service_account": "object",
            "token": "string",
            "project": "string",
            "endpoint_url": "string",
        },
        (("service_account",), ("token",), ("endpoint_url",)),
        aliases={
            "credentials": "service_account",
            "service_account_json": "service_account",
            "key": "service_account",
            "project_id": "project",
            "endpoint": "endpoint_url",
        },
    ),
    "secret": _Type({"value": "string"}, (("value",),), aliases={"secret": "value"}),
}


def validate_name(name: str) -> str:
    """`name` if it is a valid credential name, else ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid credential name {name!r}: use 1 to 128 letters, digits, `_`, `-` or "
            "`.`, not starting with `-` or `.`"
        )
    return name


def validate_credential(type_: str, data: Any) -> tuple[str, dict[str, Any]]:
    """(type lower-cased, data normalised) after checking `data` against the known `type_`
    (ports become ints, a `service_account` given as JSON text becomes an object).

    Unknown types accept any non-empty object. Raises ConfigError listing every problem.
    """
    kind = type_.strip().lower()
    if not _TYPE_NAME.fullmatch(kind):
        raise ConfigError(
            f"invalid credential type {type_!r}: use a lower-case word such as "
            f"{', '.join(KNOWN_TYPES)}"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(f"{kind} credential data must be a JSON object")
    if not data:
        raise ConfigError(f"{kind} credential data is empty")
    spec = KNOWN_TYPES.get(kind)
    if spec is None:
        return kind, dict(data)
    problems: list[str] = []
    normalised: dict[str, Any] = {}
    for key, value in data.items():
        checker = _CHECKS.get(spec.fields.get(key, ""))
        if checker is None:
            meant = spec.aliases.get(key) or next(
                iter(difflib.get_close_matches(key, spec.fields, n=1, cutoff=0.75)), None
            )
            if meant is not None:
                problems.append(f"unknown field `{key}` (did you mean `{meant}`?)")
            normalised[key] = value  # extra fields pass through to the tool
            continue
        try:
            normalised[key] = checker(value)
        except ValueError as exc:
            problems.append(f"`{key}` {exc}")
    present = {k for k, v in data.items() if v not in (None, "")}
    if spec.alone is not None and spec.alone[0] in present:
        others = [f for f in spec.alone[1] if f in present]
        if others:
            problems.append(f"give either `{spec.alone[0]}` or {_listing(others)}, not both")
    if not any(set(form) <= present for form in spec.forms):
        needs = " or ".join(_listing(form) for form in spec.forms)
        problems.append(f"needs {needs}")
    if problems:
        raise ConfigError(f"invalid {kind} credential: " + "; ".join(problems))
    return kind, normalised


def _listing(fields: tuple[str, ...] | list[str]) -> str:
    quoted = [f"`{f}`" for f in fields]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_json_type(value)}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"must be a port number (1-65535), got {value!r}")
    return value


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("must be a non-empty object of header name to value")
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"values must be strings (not for {', '.join(map(str, bad))})")
    return dict(value)


def _object(value: Any) -> dict[str, Any]:
    # A service account key file pasted as JSON text is accepted as well as the object.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("must be a JSON object (the service account key file)") from None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"must be a JSON object, got {_json_type(value)}")
    return dict(value)


def _json_type(value: Any) -> str:
    names = {
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


_CHECKS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "string": _string,
    "port": _port,
    "headers": _headers,
    "object": _object,
}


# -- references from playbooks --------------------------------------------------------------


def parse_auth(auth: Any) -> tuple[str, str | None]:
    """(credential name, expected type or None) of a tool's `auth`: `NAME`, or
    `{credential: NAME, type: TYPE}` (`key` is accepted for `credential`)."""
    if isinstance(auth, str) and auth:
        return auth, None
    if isinstance(auth, Mapping):
        name = auth.get("credential", auth.get("key"))
        expected = auth.get("type")
        if isinstance(name, str) and name and (expected is None or isinstance(expected, str)):
            return name, expected.lower() if expected else None
    raise ConfigError(
        f"`auth` must be a credential name or {{type: TYPE, credential: NAME}}, got {auth!r}"
    )


def parse_bindings(credentials: Mapping[str, Any]) -> dict[str, str]:
    """alias -> credential name of a step's `credentials: {alias: {key: NAME}}` (a plain
    `alias: NAME` is accepted too)."""
    bindings: dict[str, str] = {}
    for alias, ref in credentials.items():
        name = ref.get("key", ref.get("credential")) if isinstance(ref, Mapping) else ref
        if not isinstance(name, str) or not name:
            raise ConfigError(f"credentials.{alias} must be {{key: CREDENTIAL_NAME}}, got {ref!r}")
        bindings[str(alias)] = name
    return bindings


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
