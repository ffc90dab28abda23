"""Object key order through JSONB, which keeps keys sorted by length then bytes, not in
the order they came: an SQL row `{"name": .., "id": ..}` would come back as
`{"id": .., "name": ..}`. An object whose order differs from JSONB's is stored with its key
order under `ORDER_KEY`, which `decode` uses and removes; data stored without it (before
this existed) reads as it always did.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import msgspec

__all__ = ["MARK", "ORDER_KEY", "decode", "encode"]

#: The extra key holding an object's key order (never seen by readers of the store).
ORDER_KEY: Final = "@noetl:keys"
#: How a recorded key order shows in JSON text (its key, quoted).
MARK: Final = f'"{ORDER_KEY}"'


def _jsonb_rank(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


def _jsonb_sorted(keys: list[str]) -> list[str]:
    """`keys` in JSONB's order. ASCII keys (nearly all) are sorted by C alone: by text,
    then stably by length, which is by (length, bytes) for them."""
    if not "".join(keys).isascii():
        return sorted(keys, key=_jsonb_rank)
    ordered = sorted(keys)
    ordered.sort(key=len)
    return ordered


# Where recursion stops: values encoded as they are.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
# Key sets longer than this are ranked each time rather than remembered.
_REMEMBERED_KEYS: Final = 32


@lru_cache(maxsize=4096)
def _remembered_order(keys: tuple[Any, ...]) -> list[str] | None:
    return _order_to_record(keys)


def _order_to_record(keys: tuple[Any, ...]) -> list[str] | None:
    """The key order to record for an object with these keys, None when JSONB keeps it."""
    # Plain str: keys may be str subclasses (HTTP headers' istr), which msgspec encodes
    # as keys but not as values.
    names = [str(k) for k in keys]
    if names != _jsonb_sorted(names):
        return names
    return None


def _marked(value: Any) -> Any:
    """`value` with the key order of each object that JSONB would reorder recorded under
    ORDER_KEY. Objects and lists with nothing to record inside are returned as they are,
    not copied (the payloads of most events: a few keys, most of them scalars); the key
    orders of small objects are ranked once per key set (an event type has a few)."""
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            if type(item) not in _SCALARS:
                marked = _marked(item)
                if marked is not item:
                    changed = {} if changed is None else changed
                    changed[key] = marked
        order = None
        if len(value) > 1:
            keys = tuple(value)
            small = len(keys) <= _REMEMBERED_KEYS
            order = _remembered_order(keys) if small else _order_to_record(keys)
        if changed is None and order is None:
            return value
        out = {**value, **changed} if changed else dict(value)
        if order is not None:
            out[ORDER_KEY] = list(order)
        return out
    if isinstance(value, list):
        copied: list[Any] | None = None
        for index, item in enumerate(value):
            if type(item) not in _SCALARS:
                marked = _marked(item)
                if marked is not item:
                    copied = list(value) if copied is None else copied
                    copied[index] = marked
        return value if copied is None else copied
    return value


def _restored(value: Any) -> Any:
    if isinstance(value, dict):
        keys = value.pop(ORDER_KEY, None)
        if isinstance(keys, list) and set(keys) == set(value):
            return {k: _restored(value[k]) for k in keys}
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


def encode(value: Any) -> str:
    """`value` as JSON text for a JSONB column, key orders recorded where JSONB would
    change them."""
    return msgspec.json.encode(_marked(value)).decode()


def decode(text: str | bytes) -> Any:
    """JSONB text back to the value `encode` was given, key order included."""
    value = msgspec.json.decode(text)
    marked = MARK in text if isinstance(text, str) else MARK.encode() in text
    return _restored(value) if marked else value
