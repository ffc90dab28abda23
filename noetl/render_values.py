"""The values that cross the template boundary: lenient views of results, and back.

Step results, `result` and `response` are read leniently (NoETL's addressing: a key missing
at the top of a result is looked up in its `data`; `.data` / `.result` on a result without
such a key is the result itself). They are wrapped in read-only proxies when a template
looks them up, and `plain` unwraps them before a value leaves the renderer.
"""

from __future__ import annotations

import enum
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from typing import Any, Final, NoReturn

from jinja2.runtime import Undefined

from noetl.blobs import Oversized
from noetl.errors import TooManyItems
from noetl.render_items import bounded_list
from noetl.sql_shape import command_view, is_statements, last_rows


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""Sentinel meaning "name not bound" (e.g. no `result` because the step failed)."""
# Private context key holding the step names to read leniently. Templates cannot see it.
LENIENT_KEY: Final = "__noetl_lenient__"
# Rendered values that are lazy or views become lists, so they can be stored and sent.
_LISTABLE: Final = (Iterator, KeysView, ValuesView, ItemsView, range)
SCALARS: Final = frozenset({str, int, float, bool, type(None)})
MAX_NAMES: Final = 30  # names listed in an error message


class LenientMapping(Mapping[str, Any]):
    """Read-only view of a result dict with NoETL's lenient addressing.

    A missing key is looked up in the dict's own `data`; `data` and `result`, when not keys,
    are the dict itself. Values are wrapped lazily as they are read.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Mapping[str, Any]) -> None:
        self._target = target

    def _lookup(self, key: Any) -> Any:
        target = self._target
        if key in target:
            return wrap(target[key])
        inner = target.get("data")
        if isinstance(inner, Mapping) and key in inner:
            return wrap(inner[key])
        if key in ("data", "result"):
            return self
        return MISSING

    def __getitem__(self, key: Any) -> Any:
        value = self._lookup(key)
        if value is MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._target

    def __iter__(self) -> Iterator[str]:
        return iter(self._target)

    def __len__(self) -> int:
        return len(self._target)

    def __eq__(self, other: object) -> bool:
        return bool(self._target == unwrap(other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._target)

    def __str__(self) -> str:
        return str(self._target)


class LenientSequence(Sequence[Any]):
    """Read-only view of a list or tuple inside a result; its items are wrapped lazily."""

    __slots__ = ("_target",)

    def __init__(self, target: list[Any] | tuple[Any, ...]) -> None:
        self._target = target

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return LenientSequence(self._target[index])
        return wrap(self._target[index])

    def __len__(self) -> int:
        return len(self._target)

    def __iter__(self) -> Iterator[Any]:
        return map(wrap, self._target)

    def __reversed__(self) -> Iterator[Any]:
        return map(wrap, reversed(self._target))

    def __contains__(self, item: object) -> bool:
        return unwrap(item) in self._target

    def __eq__(self, other: object) -> bool:
        return bool(self._target == unwrap(other))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Any) -> list[Any]:
        return [*self._target, *unwrap(other)]

    def __radd__(self, other: Any) -> list[Any]:
        return [*unwrap(other), *self._target]

    def __repr__(self) -> str:
        return repr(self._target)

    def __str__(self) -> str:
        return str(self._target)

    # NoETL's loop result shape, `{results: [...], stats: {total, success, failed}}`, read
    # from the list a loop step gives: the list is its own `results`, and a failed item
    # (kept as `{error: ...}`) counts in `stats.failed`.
    @property
    def results(self) -> LenientSequence:
        """The list itself (NoETL's `step.results`)."""
        return self

    @property
    def command_0(self) -> LenientMapping:
        """NoETL's per-statement shape of a single SQL statement's rows (see sql_shape)."""
        return LenientMapping(command_view(self._target))

    @property
    def stats(self) -> dict[str, int]:
        """`{total, success, failed}` of the items (NoETL's `step.stats`)."""
        failed = sum(1 for item in self._target if _is_failure(item))
        total = len(self._target)
        return {"total": total, "success": total - failed, "failed": failed}


class OversizedView:
    """What a template sees of a stored value the coordinator left unloaded
    (`blobs.Oversized`): its length; any other read raises TooManyItems."""

    __slots__ = ("_target",)

    def __init__(self, target: Oversized) -> None:
        self._target = target

    def refuse(self) -> NoReturn:
        """Raise TooManyItems with the value's count."""
        target = self._target
        raise TooManyItems("a stored result, not loaded", target.count, target.limit)

    def __len__(self) -> int:
        return self._target.count

    def __iter__(self) -> Iterator[Any]:
        self.refuse()

    def __getitem__(self, key: Any) -> Any:
        self.refuse()

    def __contains__(self, item: object) -> bool:
        self.refuse()


def _is_failure(item: Any) -> bool:
    return isinstance(item, Mapping) and item.keys() == {"error"}


class StatementsView(LenientMapping):
    """NoETL's mapping of SQL statements (see `noetl.sql_shape`), read as its `command_<i>`
    and also as the list of rows it stands for: the rows of the last statement that
    returned rows give its length, `[i]` and iteration."""

    __slots__ = ()

    def _lookup(self, key: Any) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            rows = last_rows(self._target)
            return wrap(rows[key]) if -len(rows) <= key < len(rows) else MISSING
        return super()._lookup(key)

    def __iter__(self) -> Iterator[Any]:
        return map(wrap, last_rows(self._target))

    def __len__(self) -> int:
        return len(last_rows(self._target))


def wrap(value: Any) -> Any:
    """A proxy for a dict, list or tuple read from a result; anything else as is."""
    if isinstance(value, (LenientMapping, LenientSequence, OversizedView)):
        return value
    if isinstance(value, Oversized):
        return OversizedView(value)
    if is_statements(value):
        return StatementsView(value)
    if isinstance(value, Mapping):
        return LenientMapping(value)
    if isinstance(value, (list, tuple)):
        return LenientSequence(value)
    return value


def unwrap(value: Any) -> Any:
    """The object behind a proxy (shallow)."""
    if isinstance(value, (LenientMapping, LenientSequence, OversizedView)):
        return value._target
    return value


def plain(value: Any) -> Any:
    """`value` without proxies, lazy iterables or undefined objects, deep.

    Containers holding none of them are returned as they are (no copy).
    """
    if isinstance(value, (LenientMapping, LenientSequence, OversizedView)):
        # A proxy's target comes from the context and so never holds proxies.
        return value._target
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, _LISTABLE):
        value = bounded_list(value)
    return map_items(value, plain)


def map_items(value: Any, change: Callable[[Any], Any]) -> Any:
    """`value` with `change` applied to each value of a dict, list or tuple (one level; dict
    keys untouched), rebuilt only if an item changed (`is not`); anything else as is."""
    if isinstance(value, dict):
        copy: dict[Any, Any] | None = None
        for key, item in value.items():
            new = change(item)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        return value if copy is None else copy
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new = change(item)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def defined(context: Mapping[str, Any]) -> Iterator[str]:
    """The names a context binds (for a template)."""
    return (name for name, value in context.items() if value is not MISSING and name != LENIENT_KEY)


def listing(names: Iterable[Any]) -> str:
    """Names sorted, at most MAX_NAMES of them (for error messages)."""
    ordered = sorted(str(name) for name in names)
    if not ordered:
        return "(none)"
    shown = ", ".join(ordered[:MAX_NAMES])
    if len(ordered) > MAX_NAMES:
        shown += f", ... ({len(ordered) - MAX_NAMES} more)"
    return shown
