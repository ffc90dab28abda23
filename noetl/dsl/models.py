"""Playbook models: the typed form of a `noetl.io/v2` document.

The user-facing reference is documentation/docs/reference/playbook.md.

The loader builds these from YAML after validation, so field names and defaults here are
the language's. Tool blocks stay raw dicts because each plugin defines its own fields.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

Seconds = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=1)]
MergeStrategy = Literal["append", "extend", "replace", "collect"]


class Model(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every playbook model: unknown fields are refused, defaults omitted on encode."""


# Next entries are tagged so `msgspec.convert(to_builtins(playbook), Playbook)` round-trips;
# the YAML form carries no tag, the loader tells the shapes apart by their keys.
class Edge(Model, tag_field="type", tag="edge"):
    """A route to `step`; `args` are rendered when the source step ends."""

    step: str
    args: dict[str, Any] = {}


class When(Model, tag_field="type", tag="when"):
    """A conditional group: `then` fires when `when` is the first true condition."""

    when: str
    then: list[Edge]


class Else(Model, tag_field="type", tag="else"):
    """Fires when no `when` group before it was true (YAML key `else`)."""

    then: list[Edge] = field(name="else")


NextEntry = Edge | When | Else


class Pagination(Model, kw_only=True):
    """HTTP pagination: request pages while `continue_while` holds, merging their items."""

    continue_while: str
    next_page: dict[str, Any]
    type: str = "response_based"
    merge_strategy: MergeStrategy = "append"
    merge_path: str | None = None
    max_iterations: Count = 100


class Loop(Model, kw_only=True):
    """Run the step's tool once per item of `in_` (YAML `in`), or paginate."""

    in_: Any = field(default=None, name="in")
    iterator: str = "item"
    mode: Literal["sequential", "async"] = "sequential"
    max_concurrency: Count = 16
    continue_on_error: bool = False
    pagination: Pagination | None = None


class Retry(Model, kw_only=True):
    """Retry policy: `max_attempts` includes the first; `when` defaults to any error."""

    max_attempts: Count = 3
    delay: NonNegative = 1.0
    backoff: NonNegative = 2.0
    max_delay: NonNegative = 60.0
    jitter: bool = False
    when: str | None = None


class Collect(Model, kw_only=True):
    """Accumulate each call's value (at `path`) into `into`, merged by `strategy`."""

    strategy: MergeStrategy = "append"
    path: str | None = None
    into: str | None = None


class CaseThen(Model, kw_only=True):
    """What a matching `case` rule does. `set` is normalised to a name -> value mapping."""

    set: dict[str, Any] = {}
    next: list[Edge] = []
    sink: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    collect: Collect | None = None
    # NoETL's `result`: the step's result instead of the call's (`{from: NAME}` or a value).
    result: Any = None


class CaseRule(Model):
    """A `case` rule: the first rule whose `when` holds fires its `then`."""

    when: str
    then: CaseThen


class Step(Model, kw_only=True):
    """One workflow step. A step without `tool` only routes."""

    step: str
    desc: str | None = None
    tool: dict[str, Any] | None = None
    args: dict[str, Any] = {}
    loop: Loop | None = None
    retry: Retry | None = None
    timeout: Seconds | None = None
    vars: dict[str, Any] = {}
    sink: dict[str, Any] | None = None
    next: list[NextEntry] = []
    case: list[CaseRule] = []
    credentials: dict[str, Any] = {}
    # The runner pool of the step's commands (a `runner_pool` in the tool block wins).
    runner_pool: str | None = None


class WorkbookTask(Model, kw_only=True):
    """A named task that steps run with `tool: {kind: workbook, name: ...}`."""

    name: str
    tool: dict[str, Any]
    args: dict[str, Any] = {}
    retry: Retry | None = None
    sink: dict[str, Any] | None = None
    timeout: Seconds | None = None


class Metadata(Model, kw_only=True):
    """Who the playbook is: its name, catalog path and whole-execution timeout."""

    name: str
    path: str | None = None
    description: str | None = None
    timeout: Seconds | None = None


# dict=True lets cached_property store the step index; weakref=True lets Graph.of cache
# per playbook object without keeping it alive.
class KeychainEntry(Model, kw_only=True):
    """NoETL's `keychain` entry, in the one kind this runtime fills: a stored credential
    (`credential`, default the entry's `name`), read by tools as `{{ keychain.NAME.field }}`."""

    name: str
    kind: str = "credential"
    credential: str | None = None


class Playbook(Model, kw_only=True, dict=True, weakref=True):
    """A whole `noetl.io/v2` playbook. Treat it as immutable: lookups are cached."""

    api_version: str = field(name="apiVersion")
    kind: str
    metadata: Metadata
    workload: dict[str, Any] = {}
    workbook: list[WorkbookTask] = []
    workflow: list[Step]
    keychain: list[KeychainEntry] = []

    @property
    def catalog_path(self) -> str:
        """The catalog path: `metadata.path`, else the playbook's name."""
        return self.metadata.path or self.metadata.name

    @property
    def has_end(self) -> bool:
        """True when the workflow has a step named `end`."""
        return "end" in self._steps

    def step(self, name: str) -> Step:
        """The step called `name`; KeyError when there is none."""
        return self._steps[name]

    def task(self, name: str) -> WorkbookTask:
        """The workbook task called `name`; KeyError when there is none."""
        return self._tasks[name]

    @cached_property
    def _steps(self) -> dict[str, Step]:
        # setdefault keeps the first of duplicate names, as validation reports the others.
        index: dict[str, Step] = {}
        for step in self.workflow:
            index.setdefault(step.step, step)
        return index

    @cached_property
    def _tasks(self) -> dict[str, WorkbookTask]:
        index: dict[str, WorkbookTask] = {}
        for task in self.workbook:
            index.setdefault(task.name, task)
        return index
