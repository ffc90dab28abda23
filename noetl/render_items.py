"""How many items a template may build into one sequence, counted while it builds them.

Outside a loop's `in:` a sequence may hold as many items as a rendered string may hold
characters, and `range()` Jinja's 100,000; while a loop's items render
(`items_at_most`), both are the loop-size limit, so that a template asking for ten million
items fails when it asks (`range`, `*`, `+`) or at the first item past the limit (`| list`
of a generator), never after building them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from jinja2.sandbox import MAX_RANGE

from noetl.errors import TooManyItems

MAX_SEQUENCE_ITEMS: Final = 16 * 1024 * 1024
"""The longest sequence a template may build outside a loop's `in:`."""

_LIMIT: ContextVar[int | None] = ContextVar("item_limit", default=None)


@contextmanager
def items_at_most(limit: int) -> Iterator[None]:
    """Within the block, no template builds a sequence (or range) of more than `limit`."""
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def sequence_limit() -> int:
    """The most items a template may put in one sequence here."""
    limit = _LIMIT.get()
    return MAX_SEQUENCE_ITEMS if limit is None else limit


def check_count(what: str, count: int) -> None:
    """Raise TooManyItems when a sequence of `count` items is over the limit."""
    limit = sequence_limit()
    if count > limit:
        raise TooManyItems(what, count, limit)


def bounded_range(*args: int) -> range:
    """`range()` for templates: at most Jinja's 100,000 numbers, or the loop-size limit
    while a loop's items render."""
    numbers = range(*args)
    limit = _LIMIT.get()
    limit = MAX_RANGE if limit is None else limit
    if len(numbers) > limit:
        raise TooManyItems(f"range({', '.join(map(str, args))})", len(numbers), limit)
    return numbers


def bounded_list(values: Iterable[Any], what: str = "the list") -> list[Any]:
    """`list(values)`, reading at most one item past the limit before refusing."""
    limit = sequence_limit()
    if isinstance(values, Sized):
        check_count(what, len(values))
        return list(values)
    items = list(itertools.islice(values, limit + 1))
    if len(items) > limit:
        raise TooManyItems(what, None, limit)
    return items
