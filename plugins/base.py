"""The plugin protocol: what a tool plugin implements and what the runner hands it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from noetl.secrets import Masker


@dataclass(eq=False)
class ToolContext:
    """What a plugin may use while it runs one command.

    `in_progress` tells JetStream the command is still alive (call it during long work);
    `cancelled` is set when the execution is cancelled or the runner shuts down.
    """

    execution_id: int
    command_id: str
    step: str
    timeout: float | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("noetl.tool"))
    credentials: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None
    in_progress: Callable[[], Awaitable[None]] | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Script files that travel with the registered playbook, by path relative to it.
    files: dict[str, str] = field(default_factory=dict)
    # Where a relative `file` script is read from when it did not travel with the playbook.
    script_root: Path | None = None
    allow_absolute_scripts: bool = False
    # Step-level `credentials:` bindings: alias -> credential name.
    bindings: dict[str, str] = field(default_factory=dict)
    # Secret values handed to this call; the runner masks them in everything it records.
    secrets: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    _masker: Masker = field(default_factory=Masker, init=False, repr=False)

    def mask(self, text: str) -> str:
        """`text` with every secret of this call (`secrets`) masked by the runtime's one
        `Masker`: use it on whatever a plugin puts in an error, since servers and drivers
        echo connection strings and tokens back."""
        self._masker.update(self.secrets.values())
        return self._masker.mask_text(text)

    async def credential(self, name: str) -> Mapping[str, Any]:
        """The decrypted data of the credential `name`."""
        from noetl.errors import ToolError

        if self.credentials is None:
            raise ToolError(f"credential {name!r} requested but no credential store is configured")
        return await self.credentials(name)

    async def heartbeat(self) -> None:
        """Report that the command is still running (keeps JetStream from redelivering it)."""
        if self.in_progress is not None:
            await self.in_progress()

    def record(self, kind: str, **data: Any) -> None:
        """Attach a fact (printed output, loaded script hash, ...) to the command's events."""
        self.events.append({"kind": kind, **data})


T = TypeVar("T")


async def until_done(
    ctx: ToolContext, work: Awaitable[T], who: str, *, grace: float | None = 0.5
) -> T:
    """`work`'s result; ToolError (type `cancelled`) as soon as the execution is cancelled,
    ToolTimeout past the step's timeout plus `grace` (so a server's or a worker's own
    timeout, which says more, answers first). `grace=None`: no time bound here."""
    from noetl.errors import ToolError, ToolTimeout

    task = asyncio.ensure_future(work)
    cancelled = asyncio.ensure_future(ctx.cancelled.wait())
    limit = None if ctx.timeout is None or grace is None else ctx.timeout + grace
    try:
        await asyncio.wait({task, cancelled}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        if not task.done():
            task.cancel()
            # Let the work release what it holds (a connection, a worker) before going on.
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        if ctx.cancelled.is_set():
            raise ToolError(f"{who}: cancelled", error_type="cancelled")
        raise ToolTimeout(f"{who}: no answer within the step's timeout of {ctx.timeout:g}s")
    return task.result()


@runtime_checkable
class ToolPlugin(Protocol):
    """A tool kind. `spec` is the step's rendered tool block, its `args` merged in.

    Optional: `raw_fields` (a frozenset of tool fields the runner must not render, like the
    python tool's `code`) and `async aclose()`, called when the runner shuts down to release
    pools, sessions or processes.
    """

    kind: str

    async def run(self, ctx: ToolContext, spec: dict[str, Any]) -> Any:
        """Run one call of the tool and return its result (JSON-like data)."""
        ...
