"""The payload of each event type, typed.

Events are stored (and announced) with their payload as a plain map, the same map these
Structs encode to: `UNSET` fields are left out, so a key is present exactly when the
engine has something to say there (`part` of a page may be present and null, which is not
the same as absent). Every field a stored event may lack has a default, so events written
before these types existed decode and replay unchanged.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from noetl.messages import Phase


class Route(msgspec.Struct, kw_only=True):
    """An edge a step fired: the step it leads to and the args it carries (rendered)."""

    step: str
    args: dict[str, Any] = {}


class ExecutionStarted(msgspec.Struct, kw_only=True):
    """execution.started: what the execution runs, who started it, where it begins.

    `restore` is the snapshot a restarted execution starts from (see restart.py); `routes`
    are the steps it starts with (none when it failed to start).
    """

    path: str
    version: int
    workload: dict[str, Any] = {}
    parent_execution_id: int | None = None
    parent_command_id: str | None = None
    depth: int | UnsetType = UNSET
    root_execution_id: int | UnsetType = UNSET
    return_step: str | UnsetType | None = UNSET
    restarted_from: int | UnsetType | None = UNSET
    restore: dict[str, Any] | UnsetType = UNSET
    routes: list[Route] | UnsetType = UNSET


class ExecutionEnded(msgspec.Struct, kw_only=True):
    """execution.completed (failed and cancelled carry no payload, only an error)."""

    result: Any = None


class Paginate(msgspec.Struct, kw_only=True):
    """How a pagination's pages are merged."""

    strategy: str


class StepStarted(msgspec.Struct, kw_only=True):
    """step.started: one activation, its merged edge args, and its loop items or
    pagination (when it iterates)."""

    activation: int
    args: dict[str, Any] = {}
    items: list[Any] | UnsetType = UNSET
    paginate: Paginate | UnsetType = UNSET


class RuleCall(msgspec.Struct, kw_only=True):
    """What a `case` rule's sink writes: which rule fired and the call's result, or the
    `error` of a loop item's call a `call.error` rule took (its sink sees it)."""

    rule: int
    result: Any = None
    error: dict[str, Any] | UnsetType = UNSET


class CommandIssuedPayload(msgspec.Struct, kw_only=True):
    """command.issued: one call of a step's tool (or sink), and where it belongs.

    `index` is the loop item or page; `child` the execution a `playbook` call starts;
    `overrides` what a page or a `case` retry changes in the tool block; `pool` the runner
    pool it was sent to, when not `default`.
    """

    activation: int
    attempt: int
    args: dict[str, Any] = {}
    kind: str | None = None
    pool: str | UnsetType = UNSET
    index: int | UnsetType = UNSET
    phase: Phase | UnsetType = UNSET
    overrides: dict[str, Any] | UnsetType = UNSET
    data: RuleCall | UnsetType = UNSET
    child: int | UnsetType = UNSET


class StepItem(msgspec.Struct, kw_only=True):
    """step.item: one loop item, page or `case` call ended (its error is the event's).

    A loop item has its `result`, `tolerated` when its failure does not stop the loop
    (`handled` when a `call.error` rule took it, so it does not fail the step either); a
    page its `part` to merge, `last`, and `capped` when `max_iterations` cut it short; a
    `case` call the `rule` that fired, the `vars` it set and, on a loop item, the `routes`
    it named (taken when the loop ends). `continued`: the item is not over, a rule's retry
    or sink follows. `rows` counts what per-item sinks wrote.
    """

    index: int
    result: Any | UnsetType = UNSET
    tolerated: bool | UnsetType = UNSET
    part: Any | UnsetType = UNSET
    capped: int | UnsetType = UNSET
    rows: int | UnsetType = UNSET
    last: bool | UnsetType = UNSET
    vars: dict[str, Any] | UnsetType = UNSET
    rule: int | UnsetType = UNSET
    routes: list[Route] | UnsetType = UNSET
    handled: bool | UnsetType = UNSET
    continued: bool | UnsetType = UNSET


class StepCompleted(msgspec.Struct, kw_only=True):
    """step.completed: the result, the vars set, the routes fired; `tool` is False for a
    step that only routes. `sink` has what a sink wrote, `pages` how many pages ran."""

    result: Any = None
    vars: dict[str, Any] = {}
    routes: list[Route] = []
    tool: bool = False
    pages: int | UnsetType = UNSET
    sink: dict[str, Any] | UnsetType = UNSET


class StepFailed(msgspec.Struct, kw_only=True):
    """step.failed: the routes that handle the failure (none fails the execution) and the
    vars a `case` rule set (the error is the event's)."""

    routes: list[Route] = []
    vars: dict[str, Any] | UnsetType = UNSET


class StepWarning(msgspec.Struct, kw_only=True):
    """Warnings met while deciding about a step (an undefined name in a condition)."""

    warnings: list[str]


class TimerFired(msgspec.Struct, kw_only=True):
    """timer.fired: which timer (timer.scheduled carries a `TimerState`)."""

    name: str


class CommandStarted(msgspec.Struct, kw_only=True):
    """command.started, recorded by the runner before it runs the tool; `runner` names
    it (`POOL/HOST/PID`); `started_at` is when the runner took the command (seconds since
    the epoch, its clock), true even when the event is committed later, with the outcome.
    Both are absent from events written before runners recorded them."""

    attempt: int
    kind: str
    runner: str | UnsetType = UNSET
    started_at: float | UnsetType = UNSET


class CommandDone(msgspec.Struct, kw_only=True):
    """command.completed and command.failed, recorded by the runner: what the plugin and
    the sink reported (`facts`, `sink`), on success the `result` (or its reference), and
    `seconds`, how long the command ran on the runner (render, tool, sink; a monotonic
    clock), absent when no tool ran (a delivery given up) and from older events."""

    sink: dict[str, Any] | UnsetType = UNSET
    facts: list[Any] = []
    result: Any | UnsetType = UNSET
    seconds: float | UnsetType = UNSET


def plain(payload: msgspec.Struct) -> dict[str, Any]:
    """The map a payload is stored and announced as."""
    out: dict[str, Any] = msgspec.to_builtins(payload)
    return out
