"""Connections of the SQL tools and table sinks from credentials: `resolve_auth` reads a
call's `auth` / `connection_string`; `postgres_params` / `snowflake_params` turn a credential
into connection arguments, adding every secret to `ctx.secrets` (`add_secret`), so the
runner and `ctx.mask` hide it wherever it shows up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.sql import kind_of

__all__ = [
    "add_secret",
    "describe_postgres",
    "postgres_params",
    "resolve_auth",
    "snowflake_params",
]


async def resolve_auth(
    ctx: ToolContext, spec: Mapping[str, Any], who: str
) -> tuple[str, dict[str, Any]]:
    """`(label, data)` of the connection a call names: `auth` or `connection_string`.

    `auth` is a credential name (a step's `credentials` alias first), `{type, credential}`,
    or the connection fields themselves. `connection_string` becomes `{"dsn": ...}`.
    """
    auth = spec.get("auth")
    if auth is None:
        dsn = spec.get("connection_string")
        if dsn is None:
            raise ToolError(
                f"{who}: `auth` (a credential) or `connection_string` is required",
                error_type=kind_of(who),
            )
        if not isinstance(dsn, str):
            raise ToolError(f"{who}: `connection_string` must be text", error_type=kind_of(who))
        return "connection_string", {"dsn": dsn}
    name = auth
    if isinstance(auth, Mapping):
        name = auth.get("credential", auth.get("key"))
        if name is None:
            return "auth", dict(auth)
    if not isinstance(name, str):
        raise ToolError(
            f"{who}: `auth` must be a credential name or {{type, credential}}",
            error_type=kind_of(who),
        )
    name = ctx.bindings.get(name, name)
    data = await ctx.credential(name)
    if not isinstance(data, Mapping):
        raise ToolError(f"{who}: credential {name!r} is not a mapping", error_type=kind_of(who))
    return name, dict(data)


def add_secret(ctx: ToolContext, label: str, field: str, value: Any) -> None:
    """Tell the runner to mask `value` (a secret used by this call)."""
    if value is not None and str(value):
        ctx.secrets[f"{label}.{field}"] = str(value)


def postgres_params(
    ctx: ToolContext, label: str, data: Mapping[str, Any], who: str
) -> dict[str, Any]:
    """asyncpg's connection arguments for a postgres credential (`dsn` or fields).

    Registers the password (and the DSN holding it) as secrets of this call.
    """
    dsn = data.get("dsn") or data.get("connection_string") or data.get("url")
    if dsn is not None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgres://", "postgresql://")):
            raise ToolError(
                f"{who}: credential {label!r} holds a `dsn` that is not a postgresql:// URI",
                error_type=kind_of(who),
            )
        add_secret(ctx, label, "dsn", dsn)
        with contextlib.suppress(ValueError):
            password = urlsplit(dsn).password
            add_secret(ctx, label, "password", password and unquote(password))
        return {"dsn": dsn}
    params: dict[str, Any] = {}
    for field, aliases in (
        ("host", ("host", "hostname")),
        ("port", ("port",)),
        ("user", ("user", "username")),
        ("password", ("password",)),
        ("database", ("database", "dbname", "db")),
    ):
        for alias in aliases:
            if data.get(alias) is not None:
                params[field] = data[alias]
                break
    if "host" not in params:
        raise ToolError(
            f"{who}: credential {label!r} needs `dsn` or `host` (with port, user, "
            "password, database)",
            error_type=kind_of(who),
        )
    if "port" in params:
        try:
            params["port"] = int(params["port"])
        except (TypeError, ValueError) as exc:
            raise ToolError(
                f"{who}: credential {label!r} has a bad `port`", error_type=kind_of(who)
            ) from exc
    sslmode = data.get("sslmode") or data.get("ssl")
    if sslmode is not None:
        params["ssl"] = sslmode
    add_secret(ctx, label, "password", params.get("password"))
    return params


def describe_postgres(params: Mapping[str, Any]) -> str:
    """`user@host:port/database` of connection arguments: no password, for messages."""
    if "dsn" in params:
        try:
            parts = urlsplit(params["dsn"])
            user = f"{parts.username}@" if parts.username else ""
            port = f":{parts.port}" if parts.port else ""
            return f"{user}{parts.hostname or 'localhost'}{port}{parts.path or ''}"
        except ValueError:
            return "<connection string>"
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    database = f"/{params['database']}" if params.get("database") else ""
    return f"{user}{params['host']}{port}{database}"


#: Credential fields passed to snowflake.connector.connect as they are.
_SNOWFLAKE_FIELDS = (
    "account",
    "user",
    "password",
    "warehouse",
    "database",
    "schema",
    "role",
    "host",
    "port",
    "protocol",
    "region",
    "authenticator",
    "token",
    "login_timeout",
    "network_timeout",
    "session_parameters",
    "passcode",
)
_SNOWFLAKE_SECRETS = ("password", "token", "passcode", "private_key", "private_key_passphrase")


def snowflake_params(
    ctx: ToolContext, label: str, data: Mapping[str, Any], who: str
) -> dict[str, Any]:
    """snowflake.connector.connect's arguments for a snowflake credential.

    `private_key` may be PEM text (with `private_key_passphrase` when encrypted); it is
    loaded into a key object, the form every connector version takes.
    """
    params = {field: data[field] for field in _SNOWFLAKE_FIELDS if data.get(field) is not None}
    if "username" in data and "user" not in params:
        params["user"] = data["username"]
    for field in _SNOWFLAKE_SECRETS:
        add_secret(ctx, label, field, data.get(field))
    key = data.get("private_key")
    if key is not None:
        params["private_key"] = _load_private_key(
            key, data.get("private_key_passphrase"), label, who
        )
    if "account" not in params or "user" not in params:
        raise ToolError(
            f"{who}: credential {label!r} needs `account` and `user` (with "
            "`password` or `private_key`)",
            error_type=kind_of(who),
        )
    return params


def _load_private_key(key: Any, passphrase: Any, label: str, who: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    if not isinstance(key, str | bytes):
        raise ToolError(
            f"{who}: credential {label!r}: `private_key` must be PEM text", error_type=kind_of(who)
        )
    pem = key.encode() if isinstance(key, str) else key
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    try:
        return serialization.load_pem_private_key(pem, password=secret)
    except (ValueError, TypeError) as exc:
        # The library's message names no key material, only what is wrong with it.
        raise ToolError(
            f"{who}: credential {label!r}: unusable `private_key`: {exc}", error_type=kind_of(who)
        ) from exc
