"""Object key order through JSONB, which keeps keys sorted by length then bytes, not in
the order they came: an SQL row `{"name": .., "id": ..}` would come back as
`{"id": .., "name": ..}`. An object whose order differs from JSONB's is stored with its key
order under `ORDER_KEY`, which `decode` uses and removes; data stored without it (before
this existed) reads as it always did.
"""

from __future__ import annotations

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


def _marked(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _marked(v) for k, v in value.items()}
        # Plain str: keys may be str subclasses (HTTP headers' istr), which msgspec encodes
        # as keys but not as values.
        keys = [str(k) for k in value]
        if len(keys) > 1 and keys != _jsonb_sorted(keys):
            out[ORDER_KEY] = keys
        return out
    if isinstance(value, list):
        return [_marked(v) for v in value]
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
