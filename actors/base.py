"""What every actor shares: the bus, the store, the settings, and task bookkeeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from noetl.bus import PING_PREFIX, Bus
from noetl.config import Settings
from noetl.render_limits import set_time_limit
from noetl.store import Store

T = TypeVar("T")


class Actor:
    """Base of the long-lived actors: `start` subscribes, `stop` drains."""

    role: str = "actor"

    def __init__(self, bus: Bus, store: Store, settings: Settings) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self.log = logging.getLogger(f"noetl.{self.role}")
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Begin receiving messages; answer liveness pings for this role."""
        set_time_limit(self.settings.render_timeout)
        await self.bus.serve(f"{PING_PREFIX}.{self.role}", self._pong, queue=self.role)

    async def stop(self) -> None:
        """Wait for the work in hand to finish (the mesh has stopped consuming first)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a tracked task whose failure is logged, never lost."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def tracked(self, work: Awaitable[T]) -> T:
        """`work` awaited in the calling task, which `stop` waits for meanwhile: what
        `spawn` then await gives, without a second task."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await work
        finally:
            self._tasks.discard(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task failed", exc_info=task.exception())

    async def _pong(self, msg: Any) -> None:
        await msg.respond(self.role.encode())
