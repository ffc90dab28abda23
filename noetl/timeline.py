"""What an execution's events say, folded for people: per-step state (running, loop and page
progress, retries, durations) and readable log lines. Pure: the events come in as the rows of
`noetl.store.views.events_after` (`event_id`, `event_type`, `step`, `command_id`, `status`,
`payload`, `error`, `at`), oldest first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = [
    "StepView",
    "Timeline",
    "command_seconds",
    "error_lines",
    "log_lines",
    "short_duration",
    "started_at",
]

# Frames of a traceback shown by `logs`: the last ones say where it broke.
_TRACE_LINES = 6


class StepView(msgspec.Struct, kw_only=True):
    """One step's latest activation."""

    step: str
    status: str = "running"
    started: float = 0.0
    ended: float | None = None
    items_total: int | None = None  # a loop's item count (None: not a loop)
    items_done: int = 0
    items_failed: int = 0
    pages: int | None = None  # pages fetched so far (None: not paginated)
    attempt: int = 1
    retries: int = 0
    error: str | None = None
    ran: float | None = None  # seconds its commands ran on runners, all items and attempts

    def seconds(self, now: float | None = None) -> float:
        """Time spent so far (to its end once ended)."""
        end = self.ended if self.ended is not None else (now or time.time())
        return max(0.0, end - self.started)

    def progress(self) -> str:
        """`23/50` for a loop, `4 pages` when paginated, else empty."""
        if self.items_total is not None:
            failed = f" ({self.items_failed} failed)" if self.items_failed else ""
            return f"{self.items_done}/{self.items_total}{failed}"
        if self.pages is not None:
            return f"{self.pages} page{'' if self.pages == 1 else 's'}"
        return ""


class Timeline:
    """Steps folded from events, fed in order; `feed` returns one line per event worth
    showing live (rich markup). `max_attempts` by step names the retry policies' bounds."""

    def __init__(self, max_attempts: Mapping[str, int] | None = None) -> None:
        self.steps: dict[str, StepView] = {}
        self.last_event_id = 0
        self.status: str | None = None
        self.max_attempts = dict(max_attempts or {})
        self._shown: dict[str, float] = {}  # last progress line per step (throttle)
        self._began: dict[str, float] = {}  # when each command in hand started, by id

    def feed(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        lines: list[str] = []
        for row in rows:
            self.last_event_id = max(self.last_event_id, int(row["event_id"]))
            line = self._apply(row)
            if line:
                lines.append(line)
        return lines

    def running(self) -> list[StepView]:
        return [s for s in self.steps.values() if s.status == "running"]

    def _apply(self, row: Mapping[str, Any]) -> str | None:
        kind, name, at = row["event_type"], row["step"], float(row["at"])
        payload: dict[str, Any] = row["payload"] or {}
        if kind.startswith("execution.") and row["status"]:
            self.status = row["status"]
            return None
        if not name:
            return None
        if kind == "step.started":
            items = payload.get("items")
            view = StepView(
                step=name,
                started=at,
                items_total=len(items) if isinstance(items, list) else None,
                pages=0 if "paginate" in payload else None,
            )
            self.steps[name] = view
            counted = f" [dim]{len(items)} items[/]" if isinstance(items, list) else ""
            return f"  [cyan]▶[/] {name}{counted}"
        known = self.steps.get(name)
        if known is None:
            return None
        view = known
        if kind == "command.started" and row["command_id"]:
            self._began[row["command_id"]] = started_at(row)
            return None
        if kind in ("command.completed", "command.failed"):
            seconds = command_seconds(row, self._began.pop(row["command_id"], None))
            if seconds is not None:
                view.ran = (view.ran or 0.0) + seconds
            return None
        if kind == "step.item":
            return self._item(view, row, payload, at)
        if kind == "timer.scheduled" and payload.get("action") == "retry":
            retry = payload.get("retry") or {}
            view.retries += 1
            view.attempt = int(retry.get("attempt", view.attempt + 1))
            bound = self.max_attempts.get(name)
            of = f"/{bound}" if bound else ""
            delay = max(0.0, float(payload.get("due_at", at)) - at)
            reason = _message(retry.get("error"))
            return (
                f"  [yellow]↻[/] {name} retry {view.attempt}{of} in {delay:.1f} s [dim]{reason}[/]"
            )
        if kind in ("step.completed", "step.failed"):
            view.status = "completed" if kind == "step.completed" else "failed"
            view.ended = at
            ran = "" if view.ran is None else f", ran {short_duration(view.ran)}"
            took = f"[dim]{short_duration(view.seconds())}{ran}[/]"
            done = f" {view.progress()}" if view.progress() else ""
            if kind == "step.completed":
                return f"  [green]✓[/] {name}{done} {took}"
            view.error = _message(row["error"])
            return f"  [red]✗[/] {name}{done} {took} {view.error}"
        return None

    def _item(
        self, view: StepView, row: Mapping[str, Any], payload: dict[str, Any], at: float
    ) -> str | None:
        if view.pages is not None:
            view.pages += 1
        else:
            view.items_done += 1
            if row["error"] and not payload.get("tolerated"):
                view.items_failed += 1
        finished = view.items_total is not None and view.items_done >= view.items_total
        # One progress line a second per step at most: a loop of thousands stays readable.
        if finished or at - self._shown.get(view.step, 0.0) < 1.0:
            return None
        self._shown[view.step] = at
        return f"  [dim]…[/] {view.step} {view.progress()}"


def started_at(row: Mapping[str, Any]) -> float:
    """When a command.started's runner took the command: the time it recorded (true when
    the event was committed later, with the outcome), else the event's own time."""
    recorded = (row["payload"] or {}).get("started_at")
    return float(recorded) if isinstance(recorded, int | float) else float(row["at"])


def command_seconds(row: Mapping[str, Any], began: float | None) -> float | None:
    """How long a command ran, from its outcome `row`: the runner's own measure, else (older
    events) the time since `began`, its command.started's; None when neither is known."""
    measured = (row["payload"] or {}).get("seconds")
    if isinstance(measured, int | float):
        return float(measured)
    return None if began is None else max(0.0, float(row["at"]) - began)


def _message(error: Any) -> str:
    if isinstance(error, Mapping):
        return str(error.get("message", error))
    return "" if error is None else str(error)


def error_lines(error: Mapping[str, Any]) -> list[str]:
    """An error's message, then the last lines of its traceback when it has one."""
    lines = [f"error: {_message(error)}"]
    trace = str(error.get("traceback") or "").rstrip().splitlines()
    if trace:
        lines += ["  " + t for t in trace[-_TRACE_LINES:]]
    return lines


def log_lines(rows: Iterable[Mapping[str, Any]], step: str | None = None) -> list[str]:
    """What happened, one line each (no markup): command starts with their attempt, python
    output (`|` stdout, `!` stderr), tool facts, errors with their traceback's last frames,
    retries, step and execution ends. `step` keeps only that step's lines."""
    lines: list[str] = []
    for row in rows:
        name = row["step"]
        if step is not None and name != step:
            continue
        at = started_at(row) if row["event_type"] == "command.started" else float(row["at"])
        stamp = time.strftime("%H:%M:%S", time.localtime(at))
        stamp += f".{int(at * 1000) % 1000:03d}"
        head = f"{stamp} {name or '-'}"
        for text in _lines_of(row):
            lines.append(f"{head} {text}")
    return lines


def _lines_of(row: Mapping[str, Any]) -> list[str]:
    kind, payload = row["event_type"], row["payload"] or {}
    error = row["error"]
    if kind == "command.started":
        index = payload.get("index")
        item = f" item {index}" if index is not None else ""
        return [f"started {payload.get('kind', '')}{item} (attempt {payload.get('attempt', 1)})"]
    if kind in ("command.completed", "command.failed"):
        lines: list[str] = []
        for fact in payload.get("facts") or []:
            lines += _fact_lines(fact)
        if kind == "command.failed" and error:
            lines += error_lines(error)
        elif kind == "command.completed":
            seconds = command_seconds(row, None)
            lines.append("done" if seconds is None else f"done in {short_duration(seconds)}")
        return lines
    if kind == "timer.scheduled" and payload.get("action") == "retry":
        retry = payload.get("retry") or {}
        delay = max(0.0, float(payload.get("due_at", row["at"])) - float(row["at"]))
        return [f"retry: attempt {retry.get('attempt')} in {delay:.1f} s"]
    if kind == "step.item" and error and not payload.get("tolerated"):
        return [f"item {payload.get('index')} failed: {_message(error)}"]
    if kind in ("step.completed", "step.failed", "step.started"):
        return [kind.split(".")[1] + (f": {_message(error)}" if error else "")]
    if kind.startswith("execution.") and row["status"] in ("completed", "failed", "cancelled"):
        return [f"execution {row['status']}" + (f": {_message(error)}" if error else "")]
    return []


def short_duration(seconds: float) -> str:
    """`0.4 ms`, `12 ms`, `2.35 s`: a command's run time, readable at every scale."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def _fact_lines(fact: Mapping[str, Any]) -> list[str]:
    if fact.get("kind") == "output":
        out = [f"| {line}" for line in str(fact.get("stdout") or "").splitlines()]
        return out + [f"! {line}" for line in str(fact.get("stderr") or "").splitlines()]
    detail = ", ".join(f"{k}={v}" for k, v in fact.items() if k != "kind")
    return [f"{fact.get('kind', 'fact')}: {detail}"]
