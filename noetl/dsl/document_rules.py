"""The rules about the whole document: header, step names and routes, templates, code.

`DocumentRules` is the half of the checker that runs once every step and task is built:
the names they use are checked against the names they define, and every template and
python code block is parsed. `noetl.dsl.validate._Checker` builds on it.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Collection, Iterable
from typing import Any, Final

import jinja2
from msgspec import Struct

from noetl.dsl.code_lines import code_lines
from noetl.dsl.graph import START, Graph
from noetl.dsl.loader import Document, NodePath, Position
from noetl.dsl.models import Step, WorkbookTask
from noetl.dsl.report import Problem, Severity
from noetl.dsl.tool_fields import RAW_FIELDS

API_VERSION = "noetl.io/v2"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# Only syntax is checked, which needs no filters or sandbox.
_JINJA = jinja2.Environment()

# NoETL keychain kinds filled here: both read one stored credential.
KEYCHAIN_KINDS: Final = frozenset({"credential", "postgres_credential"})


class Ref(Struct):
    """A name used somewhere (a route target, a workbook task), checked once all are known."""

    label: str
    name: str
    path: NodePath


def suggest(word: object, options: Collection[str]) -> str:
    close = difflib.get_close_matches(str(word), sorted(options), n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class DocumentRules:
    """What the checker has gathered, how it reports, and the rules that need all of it."""

    doc: Document
    filename: str
    errors: list[Problem]
    warnings: list[Problem]
    steps: list[tuple[NodePath, Step]]
    tasks: list[tuple[NodePath, WorkbookTask]]
    step_refs: list[Ref]
    task_refs: list[Ref]

    def _error(self, path: NodePath, message: str, *, at_key: bool = False) -> None:
        self.errors.append(self._problem(path, message, "error", at_key))

    def _warning(self, path: NodePath, message: str, *, at_key: bool = False) -> None:
        self.warnings.append(self._problem(path, message, "warning", at_key))

    def _problem(self, path: NodePath, message: str, severity: Severity, at_key: bool) -> Problem:
        line, col = self.doc.key_at(path) if at_key else self.doc.value_at(path)
        return Problem(self.filename, line, col, message, severity)

    def _python(self, code: str, path: NodePath) -> None:
        """Report a syntax error in python `code` at its line in the file."""
        try:
            ast.parse(code)  # a top-level `return` parses: the tool runs such code as a body
        except SyntaxError as exc:
            line, col = self.doc.text_line_at(path, (exc.lineno or 1) - 1)
            if (exc.lineno and exc.lineno > 1) or path in self.doc.block_scalars:
                col += max((exc.offset or 1) - 1, 0)
            folded = code_lines(self.doc, path, self.filename, code).line_of(exc.lineno or 1)
            if folded != line:  # folded or quoted code: its line is known, not its column
                line, col = folded, self.doc.value_at(path)[1]
            self.errors.append(
                Problem(self.filename, line, col, f"Python syntax error in `code`: {exc.msg}")
            )

    # -- whole-document rules ------------------------------------------------------------

    def _header(self, data: dict[Any, Any]) -> None:
        api = data.get("apiVersion")
        if isinstance(api, str) and api != API_VERSION:
            self._error(("apiVersion",), f"apiVersion must be `{API_VERSION}`, got `{api}`")
        kind = data.get("kind")
        if isinstance(kind, str) and kind != "Playbook":
            self._error(("kind",), f"kind must be `Playbook`, got `{kind}`")
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str) and not _IDENTIFIER.fullmatch(name):
            self._error(
                ("metadata", "name"),
                "`metadata.name` must be an identifier "
                f"(letters, digits, `_` and `-`, not starting with a digit), got `{name}`",
            )

    def _keychain(self, data: dict[Any, Any]) -> None:
        """NoETL's `keychain`: an entry this runtime cannot fill (a secret manager, an
        OAuth2 token, a condition) is an error, since leaving it out would leave
        `{{ keychain.NAME }}` unset. Entries naming a stored credential are filled."""
        entries = data.get("keychain")
        if not isinstance(entries, list):
            return
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue  # the model reports the wrong type
            kind = entry.get("kind", "credential")
            name = entry.get("name", f"#{i}")
            if kind not in KEYCHAIN_KINDS:
                self._error(
                    ("keychain", i, "kind") if "kind" in entry else ("keychain", i),
                    f"keychain entry `{name}`: kind `{kind}` is not supported by this "
                    "runtime (it fills `credential` entries, from a stored credential); "
                    "store the value as a credential (`noetl-runtime credential set`) and "
                    "name it in a `credential` entry, a tool's `auth` or `{{ secret.NAME }}`",
                )
            elif "when" in entry or "map" in entry:
                field = "when" if "when" in entry else "map"
                self._error(
                    ("keychain", i, field),
                    f"keychain entry `{name}`: `{field}` is not supported (entries here "
                    "name one stored credential each)",
                    at_key=True,
                )

    def _firsts(self, named: Iterable[tuple[NodePath, str, str]], what: str) -> dict[str, Position]:
        """Where each name of `named` (path, its name's key, name) is first defined; a later
        definition of a name is warned of as ignored."""
        first: dict[str, Position] = {}
        for path, key, name in named:
            where = (*path, key)
            if name in first:
                self._warning(
                    where,
                    f"duplicate {what} `{name}`: this definition is ignored, the "
                    f"first (line {first[name][0]}) is used",
                )
            else:
                first[name] = self.doc.value_at(where)
        return first

    def _routes(self, has_workflow: bool) -> None:
        """Step names: `start`, duplicates, route targets, workbook tasks, reachability."""
        first = self._firsts(((path, "step", s.step) for path, s in self.steps), "step name")
        if has_workflow and START not in first:
            self._error(
                ("workflow",),
                f"the workflow has no step named `{START}`, where every "
                f"execution begins{suggest(START, first)}",
                at_key=True,
            )
        for ref in self.step_refs:
            if ref.name not in first:
                self._error(
                    ref.path,
                    f"{ref.label} names unknown step `{ref.name}`{suggest(ref.name, first)}",
                )
        tasks = self._firsts(((path, "name", t.name) for path, t in self.tasks), "workbook task")
        for ref in self.task_refs:
            if ref.name not in tasks:
                self._error(
                    ref.path, f"the workbook has no task `{ref.name}`{suggest(ref.name, tasks)}"
                )
        if START not in first:
            return
        unreachable = Graph(step for _, step in self.steps).unreachable()
        for path, step in self.steps:
            if step.step in unreachable:
                unreachable.discard(step.step)  # once per name, at its first definition
                self._warning(
                    (*path, "step"), f"step `{step.step}` is not reachable from `{START}`"
                )

    def _loop_end_rules(self) -> None:
        """What a `loop.done` rule (a rule naming `loop.done` on a `loop.in` step) cannot
        do: call the whole loop again (`retry`), or write beside the step's own `sink`."""
        for path, step in self.steps:
            loop = step.loop
            if loop is None or loop.pagination is not None:
                continue
            after_sink = step.sink is not None and not (
                step.sink.get("per_item") or step.sink.get("per_page")
            )
            for i, rule in enumerate(step.case):
                if "loop.done" not in rule.when:
                    continue
                where = (*path, "case", i, "then")
                if rule.then.retry is not None:
                    self._error(
                        (*where, "retry"),
                        f"step `{step.step}` case[{i}]: `retry` on a `loop.done` rule is not "
                        "supported (it would run the whole loop again); retry the items "
                        "that fail with a `call.error` rule's `retry` or the step's `retry`",
                    )
                if rule.then.sink is not None and after_sink:
                    self._error(
                        (*where, "sink"),
                        f"step `{step.step}` case[{i}]: a `loop.done` rule's `sink` and the "
                        "step's own `sink` both write the list when the loop ends; keep one",
                    )

    def _templates(self, value: Any, path: NodePath) -> None:
        """Parse every template string; python code is not a template and is skipped."""
        if isinstance(value, dict):
            code = RAW_FIELDS.get(str(value.get("kind")), frozenset())
            for key, item in value.items():
                if key not in code:
                    self._templates(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._templates(item, (*path, i))
        elif is_template(value):
            try:
                _JINJA.parse(value)
            except jinja2.TemplateSyntaxError as exc:
                line, col = self.doc.text_line_at(path, (exc.lineno or 1) - 1)
                self.errors.append(
                    Problem(
                        self.filename, line, col, f"Jinja2 syntax error in template: {exc.message}"
                    )
                )
