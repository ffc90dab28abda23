"""The plugin protocol: what a tool plugin implements, what the runner hands it, and the
helpers every plugin shares (bounding work by the step's timeout and cancellation, reading
its spec into a typed struct). Third-party plugins import all of it from `noetl.plugin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias, TypeVar, runtime_checkable

import msgspec

from noetl.egress import EgressPolicy
from noetl.errors import ToolError, ToolTimeout
from noetl.messages import CodeLines
from noetl.secrets import Masker, secret_values

#: A JSON value: what a tool returns, and what the runtime records and hands on.
JSON: TypeAlias = str | int | float | bool | Sequence["JSON"] | Mapping[str, "JSON"] | None
#: The step's rendered tool block, its `args` merged in (`kind` included). Free-form: a
#: plugin reads it into its own typed struct with `parse_spec`.
ToolSpec: TypeAlias = dict[str, Any]
#: What `ToolPlugin.run` returns: JSON-like data, the step's `result`.
ToolResult: TypeAlias = JSON

#: Extra seconds `in_thread` lets a call run past the step's timeout before abandoning it:
#: a server-side timeout fires first and gives the better error, and the runner's own bound
#: (1 s past the timeout) comes after.
TIMEOUT_GRACE: Final = 0.5
#: Seconds into a call before `until_done` watches `ctx.cancelled` (with a task).
WATCH_CANCEL_AFTER: Final = 0.05

_TOOL_LOG: Final = logging.getLogger("noetl.tool")

T = TypeVar("T")
S = TypeVar("S")


@dataclass(eq=False)
class ToolContext:
    """What a plugin may use while it runs one command.

    `in_progress` tells JetStream the command is still alive (the runner calls it on a
    timer too; `heartbeat` calls it now); `cancelled` is set when the execution is
    cancelled or the runner shuts down.
    Every secret the call handles goes into `secrets` (or comes from `credential`), so the
    runner masks it in everything it records, and `mask` masks it in a plugin's messages.
    """

    execution_id: int
    command_id: str
    step: str
    timeout: float | None = None
    logger: logging.Logger = field(default_factory=lambda: _TOOL_LOG)
    credentials: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None
    in_progress: Callable[[], Awaitable[None]] | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Script files that travel with the registered playbook, by path relative to it.
    files: dict[str, str] = field(default_factory=dict)
    # Where the step's inline python `code` sits in its playbook file, for its errors.
    code_lines: CodeLines | None = None
    # Where a relative `file` script is read from when it did not travel with the playbook.
    script_root: Path | None = None
    allow_absolute_scripts: bool = False
    # Step-level `credentials:` bindings: alias -> credential name.
    bindings: dict[str, str] = field(default_factory=dict)
    # What the execution knows, for tools that expose it (python's `context`): workload,
    # vars, execution_id, job and the step results the command carries, by name.
    execution_data: dict[str, Any] = field(default_factory=dict)
    # Secret values handed to this call; the runner masks them in everything it records.
    secrets: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    # With a data root (NOETL_DATA_ROOT), local files are read and written only under it.
    data_root: Path | None = None
    # Where http script sources may connect (the runner's NOETL_HTTP_DENY / _ALLOW).
    egress: EgressPolicy = field(default_factory=EgressPolicy.from_settings)
    _masker: Masker = field(default_factory=Masker, init=False, repr=False)

    def mask(self, text: str) -> str:
        """`text` with every secret of this call (`secrets`, and credentials read through
        `credential`) masked by the runtime's one `Masker`: use it on whatever a plugin puts
        in an error, since servers and drivers echo connection strings and tokens back."""
        self._masker.update(self.secrets.values())
        return self._masker.mask_text(text)

    async def credential(self, name: str) -> Mapping[str, Any]:
        """The decrypted data of the credential `name` (its secret values are masked from
        then on). Raises ToolError when there is no such credential or no store."""
        if self.credentials is None:
            raise ToolError(f"credential {name!r} requested but no credential store is configured")
        data = await self.credentials(name)
        self._masker.update(secret_values(data))
        return data

    async def heartbeat(self) -> None:
        """Report that the command is still running (keeps JetStream from redelivering it)."""
        if self.in_progress is not None:
            await self.in_progress()

    def record(self, kind: str, **data: Any) -> None:
        """Attach a fact (printed output, loaded script hash, ...) to the command's events."""
        self.events.append({"kind": kind, **data})


def parse_spec(spec: Mapping[str, Any], type_: type[S], who: str) -> S:
    """`spec` read into `type_` (a msgspec Struct, dataclass or TypedDict; fields it does
    not declare are ignored). Raises ToolError (type `validation`) naming the bad field."""
    try:
        return msgspec.convert(spec, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"{who}: {exc}", error_type="validation") from None


async def until_done(
    ctx: ToolContext, work: Awaitable[T], who: str, *, grace: float | None = 0.5
) -> T:
    """`work`'s result; ToolError (type `cancelled`) once the execution is cancelled,
    ToolTimeout past the step's timeout plus `grace` (so a server's or a worker's own
    timeout, which says more, answers first). `grace=None`: no time bound here.

    `work` runs in the calling task, stopped by cancelling it (its cleanup runs before this
    returns). `ctx.cancelled` is watched from WATCH_CANCEL_AFTER into the call on: most calls
    end sooner and cost a timer, not a task, and a cancellation is seen within that delay.
    """
    if ctx.cancelled.is_set():
        _abandon(work)
        raise ToolError(f"{who}: cancelled", error_type="cancelled")
    loop = asyncio.get_running_loop()
    limit = None if ctx.timeout is None or grace is None else ctx.timeout + grace
    bound = asyncio.timeout(limit)
    watcher: list[asyncio.Task[None]] = []
    first = loop.call_later(
        WATCH_CANCEL_AFTER,
        lambda: watcher.append(loop.create_task(_expire_once_set(ctx.cancelled, bound))),
    )
    try:
        async with bound:
            return await work
    except TimeoutError:
        if not bound.expired():
            raise  # the work's own
        if ctx.cancelled.is_set():
            raise ToolError(f"{who}: cancelled", error_type="cancelled") from None
        raise ToolTimeout(
            f"{who}: no answer within the step's timeout of {ctx.timeout:g}s"
        ) from None
    finally:
        first.cancel()
        for task in watcher:
            task.cancel()


async def _expire_once_set(cancelled: asyncio.Event, bound: asyncio.Timeout) -> None:
    await cancelled.wait()
    if not bound.expired():
        bound.reschedule(asyncio.get_running_loop().time())


def _abandon(work: Awaitable[Any]) -> None:
    """Drop `work` unstarted (a coroutine is closed, a future cancelled)."""
    if inspect.iscoroutine(work):
        work.close()
    elif isinstance(work, asyncio.Future):
        work.cancel()


async def in_thread(
    ctx: ToolContext, fn: Callable[[], T], who: str, interrupt: Callable[[], None] | None = None
) -> T:
    """`fn()` run in a worker thread, bounded by the step's timeout and cancellation.

    On either, `interrupt` (called from the event loop) is asked to stop the work, and the
    thread gets a short grace to unwind before the call fails.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    cancelled = asyncio.ensure_future(ctx.cancelled.wait())
    try:
        await asyncio.wait(
            {task, cancelled}, timeout=ctx.timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        cancelled.cancel()
    if task.done():
        return task.result()
    if interrupt is not None:
        with contextlib.suppress(Exception):
            interrupt()
    # The thread cannot be killed: wait a little for it to notice, then leave it be.
    await asyncio.wait({task}, timeout=TIMEOUT_GRACE)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the interrupted call's own error says nothing new
    if ctx.cancelled.is_set():
        raise ToolError(f"{who}: cancelled", error_type="cancelled")
    done = "interrupted" if interrupt is not None else "left to finish on its own"
    raise ToolTimeout(f"{who}: still running after the step's timeout of {ctx.timeout:g}s; {done}")


@runtime_checkable
class ToolPlugin(Protocol):
    """A tool kind: a class registered under the entry-point group `noetl.plugins` with its
    kind as the name, instantiated once per runner without arguments, or with the runtime's
    `settings=` when its constructor takes that keyword.

    Optional: `raw_fields` (a frozenset of tool fields the runner must not render, like the
    python tool's `code`) and `async aclose()`, called when the runner shuts down to release
    pools, sessions or processes.
    """

    kind: str

    async def run(self, ctx: ToolContext, spec: ToolSpec) -> ToolResult:
        """Run one call of the tool and return its result (JSON-like data). Fail with
        ToolError (its message through `ctx.mask`); any other exception is a plugin bug,
        reported as an internal error of the step."""
        ...
