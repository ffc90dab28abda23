"""A client of the mesh: register playbooks, start executions, watch them, read results.

Used by the CLI and by programs that drive noetl-runtime from Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

from noetl import dsl, local
from noetl.bus import CATALOG_REGISTER, START_SUBJECT, Bus, events_subject
from noetl.config import Settings
from noetl.engine.events import TERMINAL_STATUSES
from noetl.engine.restart import default_restart_step, restart_snapshot
from noetl.errors import CatalogUnavailable, NoetlError, PlaybookError
from noetl.keys import cancel_id, new_execution_id, start_id
from noetl.messages import (
    CancelExecution,
    CatalogReply,
    RegisterPlaybook,
    StartExecution,
    encode,
)
from noetl.store import Store
from plugins.registry import known_kinds

EventCallback = Callable[[dict[str, Any]], None]

# Seconds a registration waits for the catalog actor.
REGISTER_TIMEOUT = 30.0


def read_playbook(path: Path) -> tuple[str, dict[str, str]]:
    """A playbook file's text and the script files it names relative to itself."""
    content = path.read_text(encoding="utf-8")
    try:
        playbook = dsl.load_text(content, filename=str(path), known_kinds=known_kinds())
    except PlaybookError:
        return content, {}  # the catalog reports the problems
    files = {}
    for uri in sorted(dsl.script_files(playbook)):
        script = path.parent / uri
        link = _symlink_in(path.parent, uri)
        if link is not None:
            # A link could carry any file of this machine into the catalog (/etc/passwd).
            raise PlaybookError(
                [f"{path}: script `{uri}` is not uploaded: {link} is a symbolic link"]
            )
        try:
            files[uri] = script.read_text(encoding="utf-8")
        except OSError as exc:
            raise PlaybookError(
                [f"{path}: script `{uri}` cannot be read: {exc.strerror or exc}"]
            ) from exc
    return content, files


def _symlink_in(base: Path, relative: str) -> Path | None:
    """The first symbolic link on the way from `base` to `base / relative`, if any."""
    current = base
    for part in Path(relative).parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


class Client:
    """A connection to the runtime's NATS and PostgreSQL."""

    def __init__(self, settings: Settings, bus: Bus, store: Store) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store

    @classmethod
    async def connect(
        cls,
        settings: Settings,
        *,
        announce: Callable[[str], None] | None = None,
        relaxed: bool = False,
    ) -> Client:
        """Connect (starting embedded servers in local mode) and bring the schema up to date."""
        services = await asyncio.to_thread(local.resolve, settings, announce=announce)
        settings = msgspec.structs.replace(
            settings, nats_url=services.nats_url, pg_dsn=services.pg_dsn
        )
        bus = await Bus.connect(
            services.nats_url,
            ack_wait=settings.ack_wait,
            dedup_window=settings.dedup_window,
            replicas=settings.js_replicas,
        )
        try:
            store = await Store.connect(
                services.pg_dsn, relaxed=relaxed, max_size=max(10, settings.runner_concurrency)
            )
        except BaseException:
            await bus.close()
            raise
        await store.init_schema()
        return cls(settings, bus, store)

    async def close(self) -> None:
        """Close the connections."""
        await self.bus.close()
        await self.store.close()

    async def register(self, path: Path) -> CatalogReply:
        """Register a playbook file (and the script files it names) through the catalog."""
        content, files = await asyncio.to_thread(read_playbook, path)
        return await self.register_content(content, filename=str(path), files=files)

    async def register_content(
        self, content: str, *, filename: str = "<playbook>", files: dict[str, str] | None = None
    ) -> CatalogReply:
        """Validate and register playbook text through the catalog actor: the one path every
        registration takes (CLI, API, programs). Raises PlaybookError with every problem,
        CatalogUnavailable when no catalog actor answers."""
        request = RegisterPlaybook(content=content, filename=filename, files=files or {})
        try:
            data = await self.bus.request(
                CATALOG_REGISTER, encode(request), timeout=REGISTER_TIMEOUT
            )
        except nats.errors.NoRespondersError:
            raise CatalogUnavailable(
                "no catalog actor is running (start one with `noetl-runtime up --role catalog`)"
            ) from None
        except nats.errors.TimeoutError:
            raise CatalogUnavailable(
                f"the catalog actor did not answer within {REGISTER_TIMEOUT:g} s", timed_out=True
            ) from None
        reply = msgspec.msgpack.decode(data, type=CatalogReply)
        if not reply.ok:
            raise PlaybookError(reply.problems)
        return reply

    async def start(
        self,
        path: str,
        *,
        version: int | None = None,
        workload: dict[str, Any] | None = None,
        execution_id: int | None = None,
        timeout: float | None = None,
        parent_execution_id: int | None = None,
    ) -> int:
        """Publish a start request; return the new execution's id. A given `execution_id`
        makes the start idempotent: a second start with it is dropped (JetStream dedup, then
        the event table's dedup key)."""
        if version is not None:
            await self.store.get_playbook(path, version)  # fail early and clearly
        else:
            version, _ = await self.store.get_playbook(path)
        eid = execution_id if execution_id is not None else new_execution_id()
        message = StartExecution(
            execution_id=eid,
            dedup_id=start_id(eid),
            at=time.time(),
            path=path,
            version=version,
            workload=workload or {},
            timeout=timeout,
            parent_execution_id=parent_execution_id,
        )
        await self.bus.publish(START_SUBJECT, encode(message), message.dedup_id)
        return eid

    async def restart(
        self,
        execution_id: int,
        *,
        from_step: str | None = None,
        workload: dict[str, Any] | None = None,
    ) -> int:
        """Start a new execution of the same pinned playbook version that keeps what the old
        one decided before `from_step` (default: the step that failed) and runs from there."""
        row = await self.store.get_execution(execution_id)
        events = await self.store.load_decisions(execution_id)
        step = from_step or default_restart_step(events)
        if step is None:
            raise NoetlError(f"execution {execution_id} has no failed step: name one with --from")
        snapshot = restart_snapshot(execution_id, events, step)
        eid = new_execution_id()
        message = StartExecution(
            execution_id=eid,
            dedup_id=start_id(eid),
            at=time.time(),
            path=row["path"],
            version=row["version"],
            workload={**(row["workload"] or {}), **(workload or {})},
            restarted_from=execution_id,
            restore=snapshot,
        )
        await self.bus.publish(START_SUBJECT, encode(message), message.dedup_id)
        return eid

    async def cancel(self, execution_id: int, reason: str = "cancelled by user") -> None:
        """Ask the execution's coordinator to cancel it (through `noetl.start`)."""
        await self.store.get_execution(execution_id)
        message = CancelExecution(
            execution_id=execution_id,
            dedup_id=cancel_id(execution_id),
            at=time.time(),
            reason=reason,
        )
        await self.bus.publish(START_SUBJECT, encode(message), message.dedup_id)

    async def wait(
        self,
        execution_id: int,
        *,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
        poll: float = 1.0,
    ) -> dict[str, Any]:
        """Wait until the execution ends; call `on_event` for each announced event.

        Announcements are best effort, so the store is polled too: nothing is ever missed.
        """
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            for event in msgspec.json.decode(msg.data):
                if on_event is not None:
                    on_event(event)
                if event["type"].startswith("execution.") and event["status"] in TERMINAL_STATUSES:
                    done.set()

        sub = await self.bus.nc.subscribe(events_subject(execution_id), cb=on_msg)
        try:
            async with asyncio.timeout(timeout):
                while not done.is_set():
                    if await self._ended(execution_id):
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), poll)
        finally:
            await sub.unsubscribe()
        return await self.store.describe(execution_id)

    async def _ended(self, execution_id: int) -> bool:
        try:
            row = await self.store.get_execution(execution_id)
        except Exception:
            return False
        return row["status"] in TERMINAL_STATUSES
