"""Validation: build the models from a YAML document and report every problem at once.

The models are the schema: field names, types, defaults and bounds come from msgspec's
type information, so a field added to a model is validated without touching this module.
The few shapes YAML writes more loosely than the models (`next` forms, case `set`, raw
tool blocks) have hooks of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from msgspec import Struct
from msgspec import inspect as mi

from noetl.dsl.code_lines import code_lines, python_code_paths
from noetl.dsl.document_rules import API_VERSION, DocumentRules, Ref, is_template, suggest
from noetl.dsl.loader import Document, NodePath, SyntaxProblem, parse_yaml
from noetl.dsl.models import (
    CaseRule,
    CaseThen,
    Collect,
    Edge,
    Else,
    KeychainEntry,
    Loop,
    Metadata,
    NextEntry,
    Pagination,
    Playbook,
    Retry,
    Step,
    When,
    WorkbookTask,
)
from noetl.dsl.report import Problem, Report
from noetl.dsl.tool_fields import BUILTIN_KINDS, TOOL_FIELDS, TOOL_NEEDS, TOOL_TYPES
from noetl.pools import POOL_FIELD, bad_pool_name

_LABELS: dict[type, str] = {
    Playbook: "the playbook",
    Metadata: "`metadata`",
    Loop: "`loop`",
    Retry: "`retry`",
    Pagination: "`pagination`",
    CaseRule: "a `case` rule",
    KeychainEntry: "a `keychain` entry",
    CaseThen: "the `then` of a `case` rule",
    Collect: "`collect`",
    Edge: "a route",
    When: "a `when` entry",
    Else: "an `else` entry",
}


def check_text(
    text: str, *, filename: str = "<playbook>", known_kinds: Collection[str] = ()
) -> Report:
    """Validate playbook YAML `text`; `known_kinds` adds tool kinds registered by plugins."""
    parsed = parse_yaml(text)
    if isinstance(parsed, SyntaxProblem):
        return Report(None, [Problem(filename, parsed.line, parsed.col, parsed.message)], [])
    report = _Checker(parsed, filename, BUILTIN_KINDS | frozenset(known_kinds)).run()
    if report.playbook is not None:
        report.code_lines = {
            path: code_lines(parsed, path, filename, code)
            for path, code in python_code_paths(parsed.data)
        }
    return report


def check_file(path: str | Path, *, known_kinds: Collection[str] = ()) -> Report:
    """Validate the playbook file at `path`; an unreadable file is reported as a problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Report(None, [Problem(str(path), 1, 1, f"cannot read the playbook: {exc}")], [])
    return check_text(text, filename=str(path), known_kinds=known_kinds)


@cache
def _fields(cls: type[Struct]) -> dict[str, mi.Field]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {f.encode_name: f for f in info.fields}


def _type_name(value: object) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


Hook = Callable[[Any, NodePath], tuple[bool, Any]]


class _Checker(DocumentRules):
    """One validation run over one document."""

    def __init__(self, doc: Document, filename: str, kinds: frozenset[str]) -> None:
        self.doc = doc
        self.filename = filename
        self.kinds = kinds
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.steps: list[tuple[NodePath, Step]] = []
        self.tasks: list[tuple[NodePath, WorkbookTask]] = []
        self.step_refs: list[Ref] = []
        self.task_refs: list[Ref] = []
        self.hooks: dict[tuple[type, str], Hook] = {
            (Playbook, "workflow"): self._workflow,
            (Playbook, "workbook"): self._workbook,
            (Step, "tool"): self._tool,
            (WorkbookTask, "tool"): self._tool,
            (Step, "next"): self._next,
            (Step, "loop"): self._loop,
            (Step, POOL_FIELD): self._pool,
            (When, "then"): lambda value, path: self._edges(value, path, "`then`"),
            (Else, "else"): lambda value, path: self._edges(value, path, "`else`"),
            (CaseThen, "next"): lambda value, path: self._edges(value, path, "case `next`"),
            (CaseThen, "set"): self._set,
            (CaseRule, "then"): self._then,
        }

    def run(self) -> Report:
        data = self.doc.data
        if data is None:
            self._error((), "the document is empty: a playbook is a YAML mapping")
            return self._report(None)
        if not isinstance(data, dict):
            self._error((), f"a playbook must be a YAML mapping, got {_type_name(data)}")
            return self._report(None)
        if data.get("apiVersion") == "noetl.io/v1":
            # A v1 document differs everywhere: one clear message beats a page of noise.
            self._error(
                ("apiVersion",),
                "apiVersion noetl.io/v1 is not supported: this "
                f"runtime runs {API_VERSION} playbooks only; migrate the playbook "
                f"to {API_VERSION} (steps route with `next`, tools are written "
                "`tool: {kind: ...}`)",
            )
            return self._report(None)
        for dup in self.doc.duplicates:
            line, col = dup.dropped
            self.warnings.append(
                Problem(
                    self.filename,
                    line,
                    col,
                    f"duplicate key `{dup.path[-1]}`: this value is replaced by the one at "
                    f"line {dup.kept[0]} (the last one wins)",
                    "warning",
                )
            )
        self._keychain(data)
        ok, playbook = self._struct(Playbook, data, ())
        self._header(data)
        self._routes("workflow" in data)
        self._loop_end_rules()
        for section in ("workload", "workbook", "workflow"):
            if section in data:
                self._templates(data[section], (section,))
        return self._report(playbook if ok else None)

    # -- reporting ----------------------------------------------------------------------

    def _report(self, playbook: Playbook | None) -> Report:
        def ordered(problems: list[Problem]) -> list[Problem]:
            unique = {(p.line, p.col, p.message): p for p in problems}
            return [unique[k] for k in sorted(unique)]

        errors = ordered(self.errors)
        return Report(None if errors else playbook, errors, ordered(self.warnings))

    # -- models, generically ------------------------------------------------------------

    def _struct(self, cls: type[Struct], value: Any, path: NodePath) -> tuple[bool, Any]:
        """Build `cls` from `value`, reporting each bad field; a bad optional field keeps
        its default so that one mistake does not hide the rest of the document."""
        what = self._label(cls, value)
        if not isinstance(value, dict):
            self._error(path, f"{what} must be a mapping, got {_type_name(value)}")
            return False, None
        fields = _fields(cls)
        kwargs: dict[str, Any] = {}
        ok = True
        for key, raw in value.items():
            child = (*path, key)
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                # NoETL ignored keys it did not know; so do we, saying so (`--strict` refuses).
                if cls is not Metadata:  # free-form: version, labels, anything
                    self._warning(
                        child,
                        f"unknown field `{key}` in {what} is ignored{suggest(key, fields)}",
                        at_key=True,
                    )
                continue
            hook = self.hooks.get((cls, key))
            good, built = hook(raw, child) if hook else self._value(field.type, raw, child, key)
            if good:
                kwargs[field.name] = built
            elif field.required:
                ok = False
        for name, field in fields.items():
            if field.required and name not in value:
                self._error(path, f"{what} is missing required field `{name}`", at_key=True)
                ok = False
        return (True, cls(**kwargs)) if ok else (False, None)

    def _label(self, cls: type[Struct], value: Any) -> str:
        key = {Step: "step", WorkbookTask: "name"}.get(cls)
        if key is None:
            return _LABELS[cls]
        name = value.get(key) if isinstance(value, dict) else None
        noun = "step" if cls is Step else "workbook task"
        return f"{noun} `{name}`" if isinstance(name, str) else f"a {noun}"

    def _value(self, tp: mi.Type, raw: Any, path: NodePath, name: str) -> tuple[bool, Any]:
        """Check `raw` against the msgspec type `tp`, building nested models."""
        if isinstance(tp, mi.AnyType):
            return True, raw
        if isinstance(tp, mi.StructType):
            return self._struct(tp.cls, raw, path)
        if isinstance(tp, mi.UnionType):
            if raw is None and any(isinstance(t, mi.NoneType) for t in tp.types):
                return True, None
            # Model unions are all `X | None`.
            (option,) = (t for t in tp.types if not isinstance(t, mi.NoneType))
            return self._value(option, raw, path, name)
        if isinstance(tp, mi.ListType):
            if not isinstance(raw, list):
                return self._wrong(path, name, "a list", raw)
            built = [
                self._value(tp.item_type, item, (*path, i), name) for i, item in enumerate(raw)
            ]
            return True, [item for good, item in built if good]
        if isinstance(tp, mi.DictType):
            return self._mapping(tp, raw, path, name)
        if isinstance(tp, mi.LiteralType):
            if raw in tp.values and isinstance(raw, str):
                return True, raw
            choices = ", ".join(f"`{v}`" for v in tp.values)
            self._error(path, f"`{name}` must be one of {choices}, got `{raw}`")
            return False, None
        return self._scalar(tp, raw, path, name)

    def _mapping(self, tp: mi.DictType, raw: Any, path: NodePath, name: str) -> tuple[bool, Any]:
        if not isinstance(raw, dict):
            return self._wrong(path, name, "a mapping", raw)
        out: dict[Any, Any] = {}
        for key, item in raw.items():
            if not isinstance(key, str):
                self._error(
                    (*path, key),
                    f"keys of `{name}` must be strings, got {_type_name(key)} `{key}`",
                    at_key=True,
                )
                continue
            good, built = self._value(tp.value_type, item, (*path, key), key)
            if good:
                out[key] = built
        return True, out

    def _scalar(self, tp: mi.Type, raw: Any, path: NodePath, name: str) -> tuple[bool, Any]:
        if isinstance(tp, mi.StrType):
            return (True, raw) if isinstance(raw, str) else self._wrong(path, name, "a string", raw)
        if isinstance(tp, mi.BoolType):
            return (
                (True, raw) if isinstance(raw, bool) else self._wrong(path, name, "a boolean", raw)
            )
        if isinstance(tp, mi.NoneType):
            return (True, None) if raw is None else self._wrong(path, name, "null", raw)
        assert isinstance(tp, mi.IntType | mi.FloatType), tp
        number = (int,) if isinstance(tp, mi.IntType) else (int, float)
        if not isinstance(raw, number) or isinstance(raw, bool):
            expected = "an integer" if isinstance(tp, mi.IntType) else "a number"
            return self._wrong(path, name, expected, raw)
        if tp.gt is not None and not raw > tp.gt:
            self._error(path, f"`{name}` must be greater than {tp.gt}, got {raw}")
            return False, None
        if tp.ge is not None and not raw >= tp.ge:
            self._error(path, f"`{name}` must be at least {tp.ge}, got {raw}")
            return False, None
        return True, raw if isinstance(tp, mi.IntType) else float(raw)

    def _wrong(self, path: NodePath, name: str, expected: str, raw: Any) -> tuple[bool, Any]:
        self._error(path, f"`{name}` must be {expected}, got {_type_name(raw)}")
        return False, None

    # -- hooks: the looser YAML shapes ---------------------------------------------------

    def _workflow(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        if not isinstance(value, list):
            return self._wrong(path, "workflow", "a list of steps", value)
        for i, raw in enumerate(value):
            good, step = self._struct(Step, raw, (*path, i))
            if good:
                self.steps.append(((*path, i), step))
        return True, [step for _, step in self.steps]

    def _workbook(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        if not isinstance(value, list):
            return self._wrong(path, "workbook", "a list of tasks", value)
        for i, raw in enumerate(value):
            good, task = self._struct(WorkbookTask, raw, (*path, i))
            if good:
                self.tasks.append(((*path, i), task))
        return True, [task for _, task in self.tasks]

    def _loop(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        good, loop = self._struct(Loop, value, path)
        if good and loop.in_ is None and loop.pagination is None:
            self._error(path, "`loop` needs `in` (the items) or `pagination`", at_key=True)
        return good, loop

    def _items(self, value: Any, path: NodePath) -> Iterator[tuple[Any, NodePath]]:
        """The entries of a routing list; a single entry may be written without a list."""
        if isinstance(value, list):
            yield from ((item, (*path, i)) for i, item in enumerate(value))
        elif value is not None:
            yield value, path

    def _next(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        entries: list[NextEntry] = []
        for raw, where in self._items(value, path):
            if isinstance(raw, str):
                entries.append(self._edge(raw, where, "`next`"))
                continue
            if not isinstance(raw, dict):
                self._error(
                    where, f"a `next` entry must be a step name or a mapping, got {_type_name(raw)}"
                )
                continue
            cls: type[NextEntry]
            if "when" in raw:
                cls = When
            elif "else" in raw:
                cls = Else
            elif "step" in raw:
                cls = Edge
            else:
                self._error(where, "a `next` entry needs `step`, `when` or `else`")
                continue
            good, entry = self._struct(cls, raw, where)
            if good:
                if isinstance(entry, Edge):
                    self._ref_step("`next`", entry.step, (*where, "step"))
                entries.append(entry)
        return True, entries

    def _edges(self, value: Any, path: NodePath, label: str) -> tuple[bool, Any]:
        edges: list[Edge] = []
        for raw, where in self._items(value, path):
            if isinstance(raw, str):
                edges.append(self._edge(raw, where, label))
                continue
            if not isinstance(raw, dict):
                self._error(
                    where,
                    f"an entry of {label} must be a step name or a "
                    f"`{{step, args}}` mapping, got {_type_name(raw)}",
                )
                continue
            good, edge = self._struct(Edge, raw, where)
            if good:
                self._ref_step(label, edge.step, (*where, "step"))
                edges.append(edge)
        return True, edges

    def _edge(self, name: str, path: NodePath, label: str) -> Edge:
        self._ref_step(label, name, path)
        return Edge(step=name)

    def _ref_step(self, label: str, name: str, path: NodePath) -> None:
        self.step_refs.append(Ref(label, name, path))

    def _then(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        """A rule's `then`: a mapping, or NoETL's list of action maps applied in order as
        one rule (their `set`s merged, a later name winning, and rendered together; their
        `next`s joined; a later sink, retry or collect replacing an earlier one)."""
        if not isinstance(value, list):
            return self._struct(CaseThen, value, path)
        merged = CaseThen()
        ok = True
        for i, item in enumerate(value):
            good, then = self._struct(CaseThen, item, (*path, i))
            if not good:
                ok = False
                continue
            merged = CaseThen(
                set={**merged.set, **then.set},
                next=[*merged.next, *then.next],
                sink=then.sink if then.sink is not None else merged.sink,
                retry=then.retry if then.retry is not None else merged.retry,
                collect=then.collect if then.collect is not None else merged.collect,
                result=then.result if then.result is not None else merged.result,
            )
        return ok, merged if ok else None

    def _set(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        """Case `set` as a mapping, or the list form `[{name, value}]`, as a mapping."""
        if isinstance(value, dict):
            return self._mapping(mi.DictType(mi.StrType(), mi.AnyType()), value, path, "set")
        if not isinstance(value, list):
            return self._wrong(path, "set", "a mapping or a list of `{name, value}`", value)
        out: dict[str, Any] = {}
        for i, item in enumerate(value):
            where = (*path, i)
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                self._error(where, "a `set` item must be a `{name, value}` mapping")
                continue
            for key in item.keys() - {"name", "value"}:
                self._warning(
                    (*where, key),
                    f"unknown field `{key}` in a `set` item is ignored"
                    f"{suggest(key, ('name', 'value'))}",
                    at_key=True,
                )
            out[item["name"]] = item.get("value")
        return True, out

    def _pool(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        """A runner pool name: routing is decided unrendered, so no template either."""
        problem = bad_pool_name(value)
        if problem is not None:
            self._error(path, f"`{POOL_FIELD}`: {problem}")
            return False, None
        return True, value

    def _tool(self, value: Any, path: NodePath) -> tuple[bool, Any]:
        if value is None:  # `tool:` left empty: a step that only routes
            return True, None
        if not isinstance(value, dict):
            return self._wrong(path, "tool", "a mapping with a `kind`", value)
        self._tool_block(value, path)
        return True, value

    def _tool_block(self, tool: dict[Any, Any], path: NodePath) -> None:
        """Check a raw tool block: its kind, and for builtin kinds its fields."""
        if "kind" not in tool:
            self._error(path, "the tool is missing required field `kind`", at_key=True)
            return
        kind = tool["kind"]
        if not isinstance(kind, str):
            self._wrong((*path, "kind"), "kind", "a string", kind)
            return
        if POOL_FIELD in tool:
            self._pool(tool[POOL_FIELD], (*path, POOL_FIELD))
        if kind not in self.kinds:
            self._error((*path, "kind"), f"unknown tool kind `{kind}`{suggest(kind, self.kinds)}")
            return
        fields = TOOL_FIELDS.get(kind)
        if fields is None:
            return
        for key, raw in tool.items():
            where = (*path, key)
            if key == POOL_FIELD:
                continue
            if key not in fields:
                # Kept in the block: the plugin may use it (NoETL's `pool`, `assert`, ...).
                self._warning(
                    where,
                    f"unknown field `{key}` in the `{kind}` tool is passed to the plugin as is"
                    f"{suggest(key, fields)}",
                    at_key=True,
                )
                continue
            types, expected = TOOL_TYPES.get(key, ((object,), ""))
            # `args` are layered over other args when the step runs: a template cannot be.
            templated = is_template(raw) and key != "args"
            if not isinstance(raw, types) and not templated and raw is not None:
                self._wrong(where, key, expected, raw)
        needs = TOOL_NEEDS.get(kind, ())
        if needs and not any(tool.get(key) is not None for key in needs):
            wanted = " or ".join(f"`{key}`" for key in needs)
            self._error(path, f"the `{kind}` tool needs {wanted}", at_key=True)
        if kind == "python" and isinstance(tool.get("code"), str):
            self._python(tool["code"], (*path, "code"))
        if kind == "workbook" and isinstance(tool.get("name"), str):
            self.task_refs.append(Ref("workbook", tool["name"], (*path, "name")))
        if kind == "iterator" and isinstance(tool.get("task"), dict):
            self._tool_block(tool["task"], (*path, "task"))
