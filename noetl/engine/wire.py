"""What the wire can carry: values decided by the engine travel in msgpack messages.

A template may render a value msgpack cannot encode (`{{ 2 ** 100 }}`); found while
deciding, it fails the step that rendered it instead of the publish that would carry it
(which would be retried, dead-lettered and leave the execution waiting).
"""

from __future__ import annotations

from typing import Any

import msgspec

from noetl.errors import RenderError

_ENCODER = msgspec.msgpack.Encoder()
# What msgspec raises for a value it cannot encode (an int beyond 64 bits, an odd type).
WIRE_ERRORS = (OverflowError, TypeError, ValueError, msgspec.EncodeError)


def check(value: Any, where: str) -> None:
    """Raise RenderError naming `where` when `value` cannot be sent in a message."""
    try:
        _ENCODER.encode(value)
    except WIRE_ERRORS as exc:
        raise RenderError(f"{where}: the value cannot be sent in a message: {exc}") from exc
