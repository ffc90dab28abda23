"""The time and size bounds of one template rendering, checked from inside the sandbox.

A template runs on a clock started by `clock` (`NOETL_RENDER_TIMEOUT` seconds). Python
cannot interrupt a running thread, so the template itself checks it: at every call the
sandbox makes (functions, macros, `*` / `**` / `+`), at every item of every `for` loop (the
compiler wraps each loop's iterable in `guarded`), and at every piece of output (`joined`).
Between two checks runs at most one filter or one operation on values bounded in size, so
a template overruns its limit by little. The same hooks bound sizes: `~` and `+` refuse
results longer than MAX_RENDERED_CHARS, and so does the rendered text, as it grows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from jinja2.exceptions import SecurityError

MAX_RENDERED_CHARS: Final = 16 * 1024 * 1024
"""The longest string a template may render to (and the largest sequence `*`, `+` or `~`
may build)."""
DEFAULT_TIME_LIMIT: Final = 5.0

# Seconds one template may run; set once per process from NOETL_RENDER_TIMEOUT.
_time_limit = DEFAULT_TIME_LIMIT
# The monotonic time the template being rendered must end by (none outside a rendering).
_DEADLINE: ContextVar[float] = ContextVar("render_deadline", default=float("inf"))
_monotonic = time.monotonic


class TemplateTimeout(SecurityError):
    """The template ran past its deadline."""


def set_time_limit(seconds: float) -> None:
    """Let every template rendered from now on run at most `seconds` (> 0)."""
    global _time_limit
    if seconds <= 0:
        raise ValueError(f"the render time limit must be positive, got {seconds}")
    _time_limit = seconds


def time_limit() -> float:
    """Seconds one template may run."""
    return _time_limit


@contextmanager
def clock() -> Iterator[None]:
    """Start the clock of one template for the duration of the block."""
    token = _DEADLINE.set(_monotonic() + _time_limit)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_time() -> None:
    """Raise TemplateTimeout when the template being rendered is past its deadline."""
    if _monotonic() > _DEADLINE.get():
        raise TemplateTimeout(f"the template ran longer than {_time_limit:g} s")


class Guarded:
    """A `for` loop's iterable, checking the clock at each item; `len` as the original's
    (Jinja's `loop.length` uses it when it can)."""

    __slots__ = ("_iterable",)

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]  # TypeError: Jinja counts instead

    def __iter__(self) -> Iterator[Any]:
        deadline = _DEADLINE.get()
        for item in self._iterable:
            if _monotonic() > deadline:
                raise TemplateTimeout(f"the template ran longer than {_time_limit:g} s")
            yield item


def guarded(iterable: Iterable[Any]) -> Guarded:
    """What the compiled template iterates instead of a `for` loop's iterable."""
    return Guarded(iterable)


def concat(*parts: Any) -> str:
    """`a ~ b ~ ...`, refused when the result would exceed MAX_RENDERED_CHARS."""
    texts = [str(part) for part in parts]
    size = sum(map(len, texts))
    if size > MAX_RENDERED_CHARS:
        raise SecurityError(
            f"`~` would build {size:,} characters, more than {MAX_RENDERED_CHARS:,}"
        )
    return "".join(texts)


def joined(pieces: Iterable[str]) -> str:
    """The rendered text from its pieces, checking the clock and the size as it grows."""
    parts: list[str] = []
    size = 0
    deadline = _DEADLINE.get()
    for piece in pieces:
        size += len(piece)
        if size > MAX_RENDERED_CHARS:
            raise SecurityError(f"the template renders more than {MAX_RENDERED_CHARS:,} characters")
        if _monotonic() > deadline:
            raise TemplateTimeout(f"the template ran longer than {_time_limit:g} s")
        parts.append(piece)
    return "".join(parts)
