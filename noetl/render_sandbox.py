"""The Jinja2 sandbox templates run in: strict-but-chainable undefined names that are false
in tests, dict keys before attributes, huge `*` / `**` / `+` and long sequences refused
(`noetl.render_items`), the template's clock checked at every call
(`noetl.render_limits`), and a scope that reads the context without copying it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final

from jinja2.exceptions import SecurityError
from jinja2.runtime import ChainableUndefined, Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from noetl.render_filters import FILTERS
from noetl.render_items import bounded_list, bounded_range, check_count
from noetl.render_limits import MAX_RENDERED_CHARS, check_time
from noetl.render_values import (
    LENIENT_KEY,
    MISSING,
    SCALARS,
    LenientMapping,
    LenientSequence,
    OversizedView,
    defined,
    listing,
    plain,
    unwrap,
    wrap,
)

MAX_INT_BITS: Final = 4096
"""The largest integer `**` may compute, in bits."""
# Names always read leniently; step names are added per context by `build_context`.
_LENIENT_ALWAYS: Final = frozenset({"result", "response"})
# While `condition` renders, the undefined names that tests treated as false.
UNDEFINED_TESTS: ContextVar[list[str] | None] = ContextVar("undefined_tests", default=None)


class StrictUndefinedName(ChainableUndefined, StrictUndefined):
    """Strict on use (output, comparison, arithmetic, iteration) but chainable on access,
    and false as a truth value.

    `a.b.c` with `a` missing stays undefined, so `is defined` and `default` still work on
    the chain, and using it raises naming the first missing name. In a test (`if`, `and`,
    `or`, `not`, a `when`) it is false, as in NoETL, and the name is noted for `condition`.
    """

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]  # StrictUndefined raises instead
        notes = UNDEFINED_TESTS.get()
        if notes is not None:
            notes.append(self._undefined_message)
        return False

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        name = self._undefined_name
        owner = unwrap(self._undefined_obj)
        if owner is missing:
            return f"{name!r} is undefined"
        if isinstance(owner, Mapping):
            return f"{name!r} is undefined: no such key (keys: {listing(owner)})"
        if isinstance(owner, (list, tuple)):
            return f"{name!r} is undefined: no such element (length {len(owner)})"
        return f"{name!r} is undefined: no such attribute of {type(owner).__name__!r}"


# -- environment ----------------------------------------------------------------------------


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with dict keys winning over attributes and lenient result proxies, and
    `*` / `**` / `+` refused when their result would be huge (a template must not be able to
    freeze or exhaust the process that renders it with `{{ 10 ** 10 ** 9 }}` or
    `{{ 'x' * 10**10 }}`); calls and these operators check the template's clock.
    """

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`left * right`, `left ** right` or `left + right`, after checking the size of the
        result and the clock."""
        check_time()
        if operator == "**":
            _check_power(left, right)
        elif operator == "+":
            _check_concat(left, right)
        else:
            _check_repeat(left, right)
            _check_repeat(right, left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """A call from the template (function, method, macro, `loop(...)`), on the clock;
        its result may not be a sequence over the limit (`s.split()`)."""
        check_time()
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, list | tuple):
            check_count("the result of a call", len(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`obj.attribute`: a key of a mapping first, then a (safe) attribute."""
        value = _key(obj, attribute)
        if value is not MISSING:
            return value
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """`obj[argument]`, with lenient `data` / `result` on result lists too."""
        value = _key(obj, argument)
        if value is not MISSING:
            return value
        return super().getitem(obj, argument)


def _check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent * abs(base).bit_length() > MAX_INT_BITS
    ):
        raise SecurityError(f"{base} ** {exponent} would have more than {MAX_INT_BITS} bits")


def _check_repeat(sequence: Any, count: Any) -> None:
    if not isinstance(count, int):
        return
    if isinstance(sequence, str | bytes) and len(sequence) * count > MAX_RENDERED_CHARS:
        raise SecurityError(
            f"repeating {len(sequence)} items {count:,} times would exceed "
            f"{MAX_RENDERED_CHARS:,} items"
        )
    if isinstance(sequence, list | tuple):
        check_count(f"a list of {len(sequence):,} repeated {count:,} times", len(sequence) * count)


def _check_concat(left: Any, right: Any) -> None:
    if isinstance(left, str) and isinstance(right, str):
        if len(left) + len(right) > MAX_RENDERED_CHARS:
            raise SecurityError(
                f"joining {len(left):,} and {len(right):,} characters would exceed "
                f"{MAX_RENDERED_CHARS:,} characters"
            )
    elif isinstance(left, Sequence) and isinstance(right, Sequence):
        check_count(f"a list of {len(left):,} + {len(right):,} items", len(left) + len(right))


def _key(obj: Any, key: Any) -> Any:
    """The value under `key` when `obj` is a mapping holding it (or a lenient alias), else
    MISSING. Uses `get`, so that a defaultdict-like mapping is never mutated."""
    if isinstance(obj, OversizedView):
        obj.refuse()
    try:
        if type(obj) is dict:
            return obj.get(key, MISSING)
        if isinstance(obj, LenientMapping):
            return obj._lookup(key)
        if isinstance(obj, LenientSequence):
            if key == "command_0":
                return obj.command_0
            return obj if key in ("data", "result") else MISSING
        if isinstance(obj, Undefined):
            return obj
        if isinstance(obj, Mapping):
            return obj.get(key, MISSING)
    except TypeError:  # an unhashable key
        pass
    return MISSING


def _finalize(value: Any) -> Any:
    """Applied to each `{{ }}` output of a string template before it becomes text."""
    return value if type(value) in SCALARS else plain(value)


ENV: Final = SandboxEnvironment(
    undefined=StrictUndefinedName,
    finalize=_finalize,
    autoescape=False,
    keep_trailing_newline=True,
    cache_size=0,  # templates are cached by `_compile` instead
)
ENV.filters.update(FILTERS)
ENV.filters["list"] = bounded_list
GLOBALS: Final = ENV.globals
GLOBALS["range"] = bounded_range


class Scope(Mapping[str, Any]):
    """What a template sees at top level: the context (step results and `result` /
    `response` wrapped in lenient proxies; names bound to MISSING left out), then Jinja's
    globals. Nothing is copied."""

    __slots__ = ("_context", "_lenient")

    def __init__(self, context: Mapping[str, Any]) -> None:
        self._context = context
        self._lenient: frozenset[str] = context.get(LENIENT_KEY) or frozenset()

    def lookup(self, key: str) -> Any:
        """The value a template sees under `key`, or Jinja's `missing`."""
        if key != LENIENT_KEY:
            value = self._context.get(key, MISSING)
            if value is not MISSING:
                if key in _LENIENT_ALWAYS or key in self._lenient:
                    return wrap(value)
                return value
        return GLOBALS.get(key, missing)

    def __getitem__(self, key: str) -> Any:
        value = self.lookup(key)
        if value is missing:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.lookup(key) is not missing

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(defined(self._context), GLOBALS)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ScopeContext(Context):
    """Jinja's context over a `_Scope`, resolving a name with a single lookup."""

    def resolve_or_missing(self, key: str) -> Any:
        """The template's own variable `key`, else the scope's, else `missing`."""
        if key in self.vars:
            return self.vars[key]
        parent = self.parent
        if isinstance(parent, Scope):
            return parent.lookup(key)
        # A context Jinja derived (for loop variables) holds a dict copy of the scope.
        return super().resolve_or_missing(key)


ENV.context_class = ScopeContext
