"""Large values: stored once in PostgreSQL by content hash, referenced everywhere else.

A reference is a small dict `{"$noetl_ref": "<sha256>", "size": <bytes>}`. It travels in
messages and events in place of the value, so no NATS message exceeds the server's max
payload whatever a step returns. Blobs are content-addressed, so resolving a reference is
a pure function of the reference: the engine stays deterministic with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec

from noetl.errors import ResultTooLarge

REF_KEY: Final = "$noetl_ref"

_json = msgspec.json.Encoder()


class Oversized(dict[str, Any]):
    """A stored value left unloaded because it holds a list of `count` items (at its top or
    under one of its keys), more than `limit`: the coordinator, which would hold all of it
    and never iterates it, keeps its reference instead.

    It is the reference, as a plain dict to everything but templates, which see it through
    `render_values.OversizedView`: its length, and TooManyItems on any other read.
    """

    __slots__ = ("count", "limit")

    def __init__(self, ref: Mapping[str, Any], count: int, limit: int) -> None:
        super().__init__(ref)
        self.count = count
        self.limit = limit


def is_ref(value: Any) -> bool:
    """True when `value` is a reference to a stored blob (an Oversized value is one)."""
    return isinstance(value, dict) and REF_KEY in value and len(value) <= 2


def make_ref(data: bytes) -> tuple[dict[str, Any], str]:
    """The reference of JSON `data`, and its digest."""
    digest = hashlib.sha256(data).hexdigest()
    return {REF_KEY: digest, "size": len(data)}, digest


def encode(value: Any) -> bytes:
    """The JSON bytes a value is measured and stored as."""
    return _json.encode(value)


def encode_within(value: Any, limit: int) -> bytes:
    """`encode(value)`, or ResultTooLarge when it takes more than `limit` bytes."""
    data = _json.encode(value)
    if len(data) > limit:
        raise ResultTooLarge(len(data), limit)
    return data


def refs_in(value: Any, depth: int = 2) -> Iterator[str]:
    """Digests referenced at the top of `value` or in its lists/dicts up to `depth` deep
    (where results sit: a step result, a loop's list of results)."""
    if is_ref(value):
        yield str(value[REF_KEY])
    elif depth > 0 and isinstance(value, list):
        for item in value:
            yield from refs_in(item, depth - 1)
    elif depth > 0 and isinstance(value, dict):
        for item in value.values():
            yield from refs_in(item, depth - 1)


def resolve(value: Any, blobs: Mapping[str, Any], depth: int = 2) -> Any:
    """`value` with the references it holds (as `refs_in` finds them) replaced."""
    if is_ref(value):
        return blobs.get(str(value[REF_KEY]), value)
    if depth > 0 and isinstance(value, list):
        if not any(True for _ in refs_in(value, depth)):
            return value
        return [resolve(item, blobs, depth - 1) for item in value]
    if depth > 0 and isinstance(value, dict):
        if not any(True for _ in refs_in(value, depth)):
            return value
        return {k: resolve(v, blobs, depth - 1) for k, v in value.items()}
    return value
