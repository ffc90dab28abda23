"""Sandboxed Jinja2 rendering of playbook templates, with native types (pure, no I/O).

A string that is exactly one `{{ expression }}` renders to the expression's value (list,
dict, number, boolean, None); any other template renders to a `str`. Step results, `result`
and `response` are read leniently (documentation/docs/reference/playbook.md, "Templates";
`noetl.render_values`) and templates run in a bounded sandbox (`noetl.render_sandbox`).
Compiled templates are cached by their source text, so a template is parsed only once.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final, NamedTuple, NoReturn, cast

from jinja2 import Template, meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Undefined
from jinja2.visitor import NodeTransformer

from noetl.errors import RenderError, RenderTimeout, TooManyItems
from noetl.render_limits import TemplateTimeout, clock, joined, time_limit
from noetl.render_sandbox import ENV, UNDEFINED_TESTS, Scope, ScopeContext
from noetl.render_values import (
    LENIENT_KEY,
    MISSING,
    SCALARS,
    defined,
    listing,
    map_items,
    plain,
    unwrap,
)

__all__ = [
    "MISSING",
    "Condition",
    "build_context",
    "condition",
    "evaluate",
    "has_template",
    "is_template",
    "may_run_long",
    "referenced_names",
    "render",
    "syntax_error",
    "truthy",
]


class Condition(NamedTuple):
    """A rendered condition: whether it holds, and what undefined names made it false."""

    holds: bool
    undefined: tuple[str, ...]


_FALSE: Final = object()  # a condition whose whole value is undefined
# The names `build_context` binds itself, which shadow step results of the same name.
_BUILTINS: Final = frozenset({"workload", "vars", "execution_id", "args"})
# Where a native single-expression template stores its value.
_VALUE: Final = "__noetl_value__"
_FALSE_STRINGS: Final = frozenset({"false", "0", "", "none", "null"})
_MAX_TEXT: Final = 300
_CACHE_SIZE: Final = 8192


# -- compilation ----------------------------------------------------------------------------


class _Compiled(NamedTuple):
    template: Template
    native: bool  # one `{{ expression }}`: its value is stored under _VALUE, not printed
    lookup: bool  # native, and only a name with attributes / constant subscripts


class _Bounds(NodeTransformer):
    """Rewrites a parsed template so that every `for` loop checks the clock at each item
    and every `~` checks the size of what it builds (`noetl.render_limits`)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call("guarded", [cast(nodes.Expr, node.iter)], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call("concat", node.nodes, node.lineno)


def _call(function: str, arguments: list[nodes.Expr], lineno: int) -> nodes.Call:
    name = nodes.ImportedName(f"noetl.render_limits.{function}", lineno=lineno)
    return nodes.Call(name, arguments, [], None, None, lineno=lineno)


@lru_cache(maxsize=_CACHE_SIZE)
def _compile(source: str) -> _Compiled:
    """The compiled template of a source text. Raises TemplateSyntaxError."""
    tree = _Bounds().visit(ENV.parse(source))
    expression = _single_expression(tree)
    if expression is None:
        return _Compiled(ENV.from_string(tree), native=False, lookup=False)
    # Like Environment.compile_expression, but without copying the context at each call.
    assign = nodes.Assign(nodes.Name(_VALUE, "store", lineno=1), expression, lineno=1)
    template = ENV.from_string(nodes.Template([assign], lineno=1))
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
    return frozenset(meta.find_undeclared_variables(ENV.parse(source)))


# -- public API -----------------------------------------------------------------------------


def is_template(value: str) -> bool:
    """Whether the string contains Jinja2 markup (`{{` or `{%`)."""
    return "{{" in value or "{%" in value


def has_template(value: Any) -> bool:
    """Whether `render` would run a template anywhere inside `value` (dict values, lists
    and tuples, walked as `render` walks them). False means rendering `value` runs no
    template, so it cannot run until the render clock's deadline."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(has_template(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_template(item) for item in value)
    return False


def may_run_long(value: Any) -> bool:
    """Whether `render` may run a template inside `value` (walked as `render` walks it)
    that is more than a plain lookup: exactly one `{{ name }}`, `{{ a.b }}` or
    `{{ a[0]['k'] }}` with constant subscripts. A lookup has no loop, call, filter or
    operator: it reads the context and ends, so it cannot run until the render clock's
    deadline, and may be rendered where a long render would hold up other work. A template
    that does not parse fails at once and counts as none."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return False
        try:
            return not _compile(value).lookup
        except TemplateSyntaxError:
            return False
    if isinstance(value, dict):
        return any(may_run_long(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(may_run_long(item) for item in value)
    return False


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
    return map_items(value, lambda item: render(item, context, where=where))


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
    token = UNDEFINED_TESTS.set(notes)
    try:
        value = (
            _render_string(template, context, where, test=True)
            if is_template(template)
            else template
        )
        holds = value is not _FALSE and truthy(value)
    finally:
        UNDEFINED_TESTS.reset(token)
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
        context[LENIENT_KEY] = frozenset(lenient)
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
        scope = cast(dict[str, Any], Scope(context))
        jinja_context = ScopeContext(ENV, scope, None, template.blocks)
        with clock():
            if not native:
                return joined(template.root_render_func(jinja_context))
            for _ in template.root_render_func(jinja_context):
                pass
        value = jinja_context.vars[_VALUE]
        if type(value) in SCALARS:
            return value
        if test and isinstance(value, Undefined):
            bool(value)  # notes the name
            return _FALSE
        if lookup:
            # No walk: it would cost O(size) for a big list read straight from the context.
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            return unwrap(value)
        return plain(value)
    except UndefinedError as exc:
        _fail(where, text, exc, f"{exc}. Defined names: {listing(defined(context))}")
    except TemplateTimeout as exc:
        raise RenderTimeout(
            f"{_prefix(where)}cannot render {_shorten(text)}: it ran longer than "
            f"{time_limit():g} s (NOETL_RENDER_TIMEOUT)"
        ) from exc
    except (SecurityError, TooManyItems) as exc:
        _fail(where, text, exc, f"refused by the sandbox: {exc}")
    except Exception as exc:
        _fail(where, text, exc, f"{type(exc).__name__}: {exc}")


def _fail(where: str, text: str, exc: Exception, detail: str) -> NoReturn:
    raise RenderError(f"{_prefix(where)}cannot render {_shorten(text)}: {detail}") from exc


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _shorten(text: str) -> str:
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    return repr(text)


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
