"""What a credential may hold, apart from where it is stored: names, the known types and
their fields (`validate_credential` normalises what `credential set` and the API accept),
and how playbooks refer to credentials (`auth`, a step's `credentials`).

Pure: no I/O. Any type not in `KNOWN_TYPES` is stored as a free-form object.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from noetl.errors import ConfigError

__all__ = [
    "KNOWN_TYPES",
    "parse_auth",
    "parse_bindings",
    "validate_credential",
    "validate_name",
]

_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


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
