"""The filters templates get besides Jinja2's own: JSON, base64 and `dig`."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from noetl.render_values import plain, unwrap


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON text of `value` (keys in their order, proxies unwrapped)."""
    data = msgspec.json.encode(plain(value))
    if indent:
        data = msgspec.json.format(data, indent=indent)
    return data.decode()


def _fromjson(value: Any) -> Any:
    """The value parsed from JSON text."""
    return msgspec.json.decode(unwrap(value))


def _b64encode(value: Any) -> str:
    """Base64 of a string (UTF-8) or bytes."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"b64encode expects a string, got {type(unwrap(value)).__name__}")
    return base64.b64encode(value).decode("ascii")


def _b64decode(value: Any) -> str:
    """The UTF-8 text encoded in base64 (missing `=` padding tolerated)."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if not isinstance(value, str):
        raise TypeError(f"b64decode expects a string, got {type(unwrap(value)).__name__}")
    value = value.strip()
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode()


def _dig(value: Any, path: Any, default: Any = None) -> Any:
    """The value at a dotted `path` ("a.b.0.c") into nested dicts and lists, or `default`."""
    current = unwrap(value)
    for part in str(path).split(".") if path != "" else ():
        if isinstance(current, Mapping):
            if part not in current:
                return default
            current = current[part]
        elif isinstance(current, (list, tuple)):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                return default
        else:
            return default
    return current


FILTERS: Final[dict[str, Callable[..., Any]]] = {
    "tojson": _tojson,
    "fromjson": _fromjson,
    "b64encode": _b64encode,
    "b64decode": _b64decode,
    "dig": _dig,
}
