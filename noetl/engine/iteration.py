"""Pure helpers for loops, pagination and retries: merging pages and overrides, backoff."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from noetl.dsl import Retry

_MISSING = object()


def extract(value: Any, path: str | None) -> Any:
    """The value at a dotted `path` (`data.items.0`) inside a page; the page itself when no
    path. Raises KeyError naming the first part that is missing."""
    if not path:
        return value
    current = value
    for part in path.split("."):
        if isinstance(current, dict):
            found = current.get(part, _MISSING)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            found = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            found = _MISSING
        if found is _MISSING:
            raise KeyError(part)
        current = found
    return current


def merge(merged: Any, part: Any, strategy: str) -> Any:
    """Fold one page's `part` into the merged value.

    append: lists are concatenated (a non-list part is appended as one item); extend: the
    same, but a non-list part is an error upstream; replace: the last page wins; collect:
    every page's part is kept as one element.
    """
    if strategy == "replace":
        return part
    acc = [] if merged is None else merged
    if strategy == "collect":
        return [*acc, part]
    if isinstance(part, list):
        return [*acc, *part]
    return [*acc, part]


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it: nested mappings are merged key by key, anything
    else in `update` replaces. Neither argument is changed."""
    merged = dict(base)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def backoff_delay(
    policy: Retry, attempt: int, command_id: str, retry_after: float | None = None
) -> float:
    """Seconds to wait before attempt `attempt + 1`, after `attempt` failed.

    Jitter is derived from the command id, not from a random source, so a replayed
    decision schedules the same timer.
    """
    delay = min(policy.max_delay, policy.delay * (policy.backoff ** (attempt - 1)))
    if policy.jitter and delay > 0:
        digest = hashlib.blake2b(command_id.encode(), digest_size=4).digest()
        fraction = int.from_bytes(digest, "big") / 0xFFFFFFFF
        delay *= 0.5 + fraction / 2
    if retry_after is not None:
        delay = max(delay, min(float(retry_after), policy.max_delay))
    return delay
