"""Sandboxed Jinja2 rendering of playbook templates, with native types (pure, no I/O).

A string that is exactly one `{{ expression }}` renders to the expression's value (list,
dict, number, boolean, None); any other template renders to a `str`. Step results, `result`
and `response` are read leniently (documentation/docs/reference/playbook.md, "Templates"):
they are wrapped in read-only proxies when a template looks them up, and unwrapped before a
value leaves this module.
Compiled templates are cached by their source text, so a template is parsed only once.
"""

from __future__ import annotations

import base64
import enum
import itertools
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Final, NamedTuple, NoReturn, cast

import msgspec
from jinja2 import Template, meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import ChainableUndefined, Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from noetl.errors import RenderError

__all__ = [
    "MISSING",
    "Condition",
    "build_context",
    "condition",
    "evaluate",
    "is_template",
    "referenced_names",
    "render",
    "syntax_error",
    "truthy",
]


# While `condition` renders, the undefined names that tests treated as false.
_UNDEFINED_TESTS: ContextVar[list[str] | None] = ContextVar("undefined_tests", default=None)


class Condition(NamedTuple):
    """A rendered condition: whether it holds, and what undefined names made it false."""

    holds: bool
    undefined: tuple[str, ...]


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""Sentinel meaning "name not bound" (e.g. no `result` because the step failed)."""
_FALSE: Final = object()  # a condition whose whole value is undefined

# Names always read leniently; step names are added per context by `build_context`.
_LENIENT_ALWAYS: Final = frozenset({"result", "response"})
# Private context key holding the step names to read leniently. Templates cannot see it.
_LENIENT_KEY: Final = "__noetl_lenient__"
# The names `build_context` binds itself, which shadow step results of the same name.
_BUILTINS: Final = frozenset({"workload", "vars", "execution_id", "args"})
# Where a native single-expression template stores its value.
_VALUE: Final = "__noetl_value__"
_FALSE_STRINGS: Final = frozenset({"false", "0", "", "none", "null"})
MAX_RENDERED_CHARS: Final = 16 * 1024 * 1024
"""The longest string a template may render to (and the largest sequence `*` may build)."""
MAX_INT_BITS: Final = 4096
"""The largest integer `**` may compute, in bits."""
_MAX_NAMES: Final = 30
_MAX_TEXT: Final = 300
_CACHE_SIZE: Final = 8192
# Rendered values that are lazy or views become lists, so they can be stored and sent.
_LISTABLE: Final = (Iterator, KeysView, ValuesView, ItemsView, range)
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


# -- lenient proxies ------------------------------------------------------------------------


class _LenientMapping(Mapping[str, Any]):
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
            return _wrap(target[key])
        inner = target.get("data")
        if isinstance(inner, Mapping) and key in inner:
            return _wrap(inner[key])
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
        return bool(self._target == _unwrap(other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._target)

    def __str__(self) -> str:
        return str(self._target)


class _LenientSequence(Sequence[Any]):
    """Read-only view of a list or tuple inside a result; its items are wrapped lazily."""

    __slots__ = ("_target",)

    def __init__(self, target: list[Any] | tuple[Any, ...]) -> None:
        self._target = target

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return _LenientSequence(self._target[index])
        return _wrap(self._target[index])

    def __len__(self) -> int:
        return len(self._target)

    def __iter__(self) -> Iterator[Any]:
        return map(_wrap, self._target)

    def __reversed__(self) -> Iterator[Any]:
        return map(_wrap, reversed(self._target))

    def __contains__(self, item: object) -> bool:
        return _unwrap(item) in self._target

    def __eq__(self, other: object) -> bool:
        return bool(self._target == _unwrap(other))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Any) -> list[Any]:
        return [*self._target, *_unwrap(other)]

    def __radd__(self, other: Any) -> list[Any]:
        return [*_unwrap(other), *self._target]

    def __repr__(self) -> str:
        return repr(self._target)

    def __str__(self) -> str:
        return str(self._target)


def _wrap(value: Any) -> Any:
    """A proxy for a dict, list or tuple read from a result; anything else as is."""
    if isinstance(value, (_LenientMapping, _LenientSequence)):
        return value
    if isinstance(value, Mapping):
        return _LenientMapping(value)
    if isinstance(value, (list, tuple)):
        return _LenientSequence(value)
    return value


def _unwrap(value: Any) -> Any:
    """The object behind a proxy (shallow)."""
    if isinstance(value, (_LenientMapping, _LenientSequence)):
        return value._target
    return value


def _plain(value: Any) -> Any:
    """`value` without proxies, lazy iterables or undefined objects, deep.

    Containers holding none of them are returned as they are (no copy).
    """
    if isinstance(value, (_LenientMapping, _LenientSequence)):
        # A proxy's target comes from the context and so never holds proxies.
        return value._target
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, _LISTABLE):
        value = list(value)
    if isinstance(value, dict):
        copy: dict[Any, Any] | None = None
        for key, item in value.items():
            new = _plain(item)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        return value if copy is None else copy
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new = _plain(item)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


# -- undefined ------------------------------------------------------------------------------


class _Undefined(ChainableUndefined, StrictUndefined):
    """Strict on use (output, comparison, arithmetic, iteration) but chainable on access,
    and false as a truth value.

    `a.b.c` with `a` missing stays undefined, so `is defined` and `default` still work on
    the chain, and using it raises naming the first missing name. In a test (`if`, `and`,
    `or`, `not`, a `when`) it is false, as in NoETL, and the name is noted for `condition`.
    """

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]  # StrictUndefined raises instead
        notes = _UNDEFINED_TESTS.get()
        if notes is not None:
            notes.append(self._undefined_message)
        return False

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        name = self._undefined_name
        owner = _unwrap(self._undefined_obj)
        if owner is missing:
            return f"{name!r} is undefined"
        if isinstance(owner, Mapping):
            return f"{name!r} is undefined: no such key (keys: {_listing(owner)})"
        if isinstance(owner, (list, tuple)):
            return f"{name!r} is undefined: no such element (length {len(owner)})"
        return f"{name!r} is undefined: no such attribute of {type(owner).__name__!r}"


# -- environment ----------------------------------------------------------------------------


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with dict keys winning over attributes and lenient result proxies, and
    `*` / `**` refused when their result would be huge (a template must not be able to freeze
    or exhaust the process that renders it with `{{ 10 ** 10 ** 9 }}` or `{{ 'x' * 10**10 }}`).
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`left * right` or `left ** right`, after checking the size of the result."""
        if operator == "**":
            _check_power(left, right)
        else:
            _check_repeat(left, right)
            _check_repeat(right, left)
        return super().call_binop(context, operator, left, right)

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
    if (
        isinstance(sequence, str | list | tuple | bytes)
        and isinstance(count, int)
        and len(sequence) * count > MAX_RENDERED_CHARS
    ):
        raise SecurityError(
            f"repeating {len(sequence)} items {count:,} times would exceed "
            f"{MAX_RENDERED_CHARS:,} items"
        )


def _key(obj: Any, key: Any) -> Any:
    """The value under `key` when `obj` is a mapping holding it (or a lenient alias), else
    MISSING. Uses `get`, so that a defaultdict-like mapping is never mutated."""
    try:
        if type(obj) is dict:
            return obj.get(key, MISSING)
        if isinstance(obj, _LenientMapping):
            return obj._lookup(key)
        if isinstance(obj, _LenientSequence):
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
    return value if type(value) in _SCALARS else _plain(value)


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON text of `value` (keys in their order, proxies unwrapped)."""
    data = msgspec.json.encode(_plain(value))
    if indent:
        data = msgspec.json.format(data, indent=indent)
    return data.decode()


def _fromjson(value: Any) -> Any:
    """The value parsed from JSON text."""
    return msgspec.json.decode(_unwrap(value))


def _b64encode(value: Any) -> str:
    """Base64 of a string (UTF-8) or bytes."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"b64encode expects a string, got {type(_unwrap(value)).__name__}")
    return base64.b64encode(value).decode("ascii")


def _b64decode(value: Any) -> str:
    """The UTF-8 text encoded in base64 (missing `=` padding tolerated)."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if not isinstance(value, str):
        raise TypeError(f"b64decode expects a string, got {type(_unwrap(value)).__name__}")
    value = value.strip()
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode()


def _dig(value: Any, path: Any, default: Any = None) -> Any:
    """The value at a dotted `path` ("a.b.0.c") into nested dicts and lists, or `default`."""
    current = _unwrap(value)
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


_ENV: Final = _Environment(
    undefined=_Undefined,
    finalize=_finalize,
    autoescape=False,
    keep_trailing_newline=True,
    cache_size=0,  # templates are cached by `_compile` instead
)
_ENV.filters.update(
    tojson=_tojson,
    fromjson=_fromjson,
    b64encode=_b64encode,
    b64decode=_b64decode,
    dig=_dig,
)
_GLOBALS: Final = _ENV.globals


class _Scope(Mapping[str, Any]):
    """What a template sees at top level: the context (step results and `result` /
    `response` wrapped in lenient proxies; names bound to MISSING left out), then Jinja's
    globals. Nothing is copied."""

    __slots__ = ("_context", "_lenient")

    def __init__(self, context: Mapping[str, Any]) -> None:
        self._context = context
        self._lenient: frozenset[str] = context.get(_LENIENT_KEY) or frozenset()

    def lookup(self, key: str) -> Any:
        """The value a template sees under `key`, or Jinja's `missing`."""
        if key != _LENIENT_KEY:
            value = self._context.get(key, MISSING)
            if value is not MISSING:
                if key in _LENIENT_ALWAYS or key in self._lenient:
                    return _wrap(value)
                return value
        return _GLOBALS.get(key, missing)

    def __getitem__(self, key: str) -> Any:
        value = self.lookup(key)
        if value is missing:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.lookup(key) is not missing

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(_defined(self._context), _GLOBALS)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Context(Context):
    """Jinja's context over a `_Scope`, resolving a name with a single lookup."""

    def resolve_or_missing(self, key: str) -> Any:
        """The template's own variable `key`, else the scope's, else `missing`."""
        if key in self.vars:
            return self.vars[key]
        parent = self.parent
        if isinstance(parent, _Scope):
            return parent.lookup(key)
        # A context Jinja derived (for loop variables) holds a dict copy of the scope.
        return super().resolve_or_missing(key)


_ENV.context_class = _Context


# -- compilation ----------------------------------------------------------------------------


class _Compiled(NamedTuple):
    template: Template
    native: bool  # one `{{ expression }}`: its value is stored under _VALUE, not printed
    lookup: bool  # native, and only a name with attributes / constant subscripts


@lru_cache(maxsize=_CACHE_SIZE)
def _compile(source: str) -> _Compiled:
    """The compiled template of a source text. Raises TemplateSyntaxError."""
    tree = _ENV.parse(source)
    expression = _single_expression(tree)
    if expression is None:
        return _Compiled(_ENV.from_string(tree), native=False, lookup=False)
    # Like Environment.compile_expression, but without copying the context at each call.
    assign = nodes.Assign(nodes.Name(_VALUE, "store", lineno=1), expression, lineno=1)
    template = _ENV.from_string(nodes.Template([assign], lineno=1))
    return _Compiled(template, native=True, lookup=_is_lookup(expression))


def _single_expression(tree: nodes.Template) -> nodes.Expr | None:
    """The expression when the template is exactly one `{{ expression }}` (whitespace
    around it allowed), else None."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts = [
        part
        for part in tree.body[0].nodes
        if not (isinstance(part, nodes.TemplateData) and not part.data.strip())
    ]
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    return parts[0]


def _is_lookup(node: nodes.Node) -> bool:
    """Whether the expression only reads the context (`a.b[0]['c']`): its value is then an
    object of the context, a proxy of one or undefined, never a container holding proxies."""
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
            return False
        node = node.node
    return isinstance(node, nodes.Name)


@lru_cache(maxsize=_CACHE_SIZE)
def _names_in(source: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(_ENV.parse(source)))


# -- public API -----------------------------------------------------------------------------


def is_template(value: str) -> bool:
    """Whether the string contains Jinja2 markup (`{{` or `{%`)."""
    return "{{" in value or "{%" in value


def render(value: Any, context: Mapping[str, Any], *, where: str = "") -> Any:
    """Render every template inside `value` with `context`.

    Dicts (values only, keys are not rendered), lists and tuples are rendered recursively
    and rebuilt only when something inside them changed; anything that is not a template is
    returned as the same object. A string that is exactly one `{{ expression }}` renders to
    the expression's native value, any other template to a `str`. `where` names the place
    in the playbook for error messages. Raises RenderError.
    """
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            return _render_string(value, context, where)
        return value
    if isinstance(value, dict):
        copy: dict[Any, Any] | None = None
        for key, item in value.items():
            new = render(item, context, where=where)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        return value if copy is None else copy
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new = render(item, context, where=where)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def evaluate(expression_template: str, context: Mapping[str, Any], *, where: str = "") -> Any:
    """Render one template string (e.g. a `when`); same rules as `render`."""
    return render(expression_template, context, where=where)


def condition(template: str, context: Mapping[str, Any], *, where: str = "") -> Condition:
    """Render a condition (a `when`, `continue_while`, a case rule) and say whether it holds.

    An undefined name used as a truth value, alone (`{{ flag }}`) or in `if`/`and`/`or`/`not`,
    is false rather than an error, as in NoETL; `Condition.undefined` says which (for a
    warning). Any other error (an undefined name compared or printed, a sandbox refusal)
    raises RenderError as `render` does.
    """
    notes: list[str] = []
    token = _UNDEFINED_TESTS.set(notes)
    try:
        value = (
            _render_string(template, context, where, test=True)
            if is_template(template)
            else template
        )
        holds = value is not _FALSE and truthy(value)
    finally:
        _UNDEFINED_TESTS.reset(token)
    return Condition(holds, tuple(dict.fromkeys(notes)))


def truthy(value: Any) -> bool:
    """Whether a rendered `when` holds: Python truthiness, except that the strings "false",
    "0", "none", "null" (any case, surrounding blanks ignored) and "" are false."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_STRINGS
    return bool(value)


def referenced_names(value: Any) -> set[str]:
    """The top-level names the templates inside `value` use without defining them (Jinja2's
    `find_undeclared_variables`; Jinja globals such as `range` are not included).

    Walks dict values, lists and tuples like `render`. Raises RenderError on a syntax error.
    """
    names: set[str] = set()
    _collect_names(value, names)
    return names


def syntax_error(text: str) -> tuple[int, str] | None:
    """(line within the template, 1-based; message) of the template's syntax error, or None.

    Also reports what Jinja2 finds when compiling, such as an unknown filter.
    """
    if not is_template(text):
        return None
    try:
        _compile(text)
    except TemplateSyntaxError as exc:
        return exc.lineno, exc.message or "syntax error"
    return None


def build_context(
    *,
    workload: Mapping[str, Any],
    variables: Mapping[str, Any],
    steps: Mapping[str, Any],
    execution_id: str,
    args: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The names a template sees, lowest precedence first: the keys of `workload`, the keys
    of `variables`, step results by step name, each arg by name, then `workload`, `vars`,
    `execution_id`, `args` and everything in `extra` (`result`, `error`, `response`, `loop`,
    the loop iterator, `secret`, `event`).

    Only the top level is copied. The dict also holds a private entry naming the step
    results to read leniently; a copy made with `{**context, ...}` keeps it.
    """
    context: dict[str, Any] = {**workload, **variables, **steps}
    if args:
        context.update(args)
    context.update(
        workload=workload,
        vars=variables,
        execution_id=str(execution_id),
        args=args if args is not None else {},
    )
    if extra:
        context.update(extra)
    lenient = steps.keys() - _BUILTINS - (args or {}).keys() - (extra or {}).keys()
    if lenient:
        context[_LENIENT_KEY] = frozenset(lenient)
    return context


# -- internals ------------------------------------------------------------------------------


def _render_string(text: str, context: Mapping[str, Any], where: str, test: bool = False) -> Any:
    try:
        template, native, lookup = _compile(text)
    except TemplateSyntaxError as exc:
        raise RenderError(
            f"{_prefix(where)}syntax error at line {exc.lineno} of {_shorten(text)}: {exc.message}"
        ) from exc
    try:
        # Built directly rather than by Template.new_context, which copies the context (or,
        # when shared, the globals' names) at every call; the scope already holds the
        # globals, and Context only needs `in` and `[]` on it.
        scope = cast(dict[str, Any], _Scope(context))
        jinja_context = _Context(_ENV, scope, None, template.blocks)
        if not native:
            return _bounded("".join(template.root_render_func(jinja_context)))
        for _ in template.root_render_func(jinja_context):
            pass
        value = jinja_context.vars[_VALUE]
        if type(value) in _SCALARS:
            return value
        if test and isinstance(value, Undefined):
            bool(value)  # notes the name
            return _FALSE
        if lookup:
            # No walk: it would cost O(size) for a big list read straight from the context.
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            return _unwrap(value)
        return _plain(value)
    except UndefinedError as exc:
        _fail(where, text, exc, f"{exc}. Defined names: {_listing(_defined(context))}")
    except SecurityError as exc:
        _fail(where, text, exc, f"refused by the sandbox: {exc}")
    except Exception as exc:
        _fail(where, text, exc, f"{type(exc).__name__}: {exc}")


def _bounded(text: str) -> str:
    if len(text) > MAX_RENDERED_CHARS:
        raise SecurityError(
            f"the template renders {len(text):,} characters, more than {MAX_RENDERED_CHARS:,}"
        )
    return text


def _fail(where: str, text: str, exc: Exception, detail: str) -> NoReturn:
    raise RenderError(f"{_prefix(where)}cannot render {_shorten(text)}: {detail}") from exc


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _shorten(text: str) -> str:
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    return repr(text)


def _defined(context: Mapping[str, Any]) -> Iterator[str]:
    """The names a context binds (for a template)."""
    return (
        name for name, value in context.items() if value is not MISSING and name != _LENIENT_KEY
    )


def _listing(names: Iterable[Any]) -> str:
    """Names sorted, at most _MAX_NAMES of them (for error messages)."""
    ordered = sorted(str(name) for name in names)
    if not ordered:
        return "(none)"
    shown = ", ".join(ordered[:_MAX_NAMES])
    if len(ordered) > _MAX_NAMES:
        shown += f", ... ({len(ordered) - _MAX_NAMES} more)"
    return shown


def _collect_names(value: Any, names: set[str]) -> None:
    if isinstance(value, str):
        if is_template(value):
            try:
                names.update(_names_in(value))
            except TemplateSyntaxError as exc:
                raise RenderError(
                    f"syntax error at line {exc.lineno} of {_shorten(value)}: {exc.message}"
                ) from exc
    elif isinstance(value, dict):
        for item in value.values():
            _collect_names(item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_names(item, names)
