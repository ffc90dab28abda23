"""The coordinator host's durable timers: retry backoff and execution timeouts, fired on
time as Timer messages to their executions."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from typing import TYPE_CHECKING

from noetl import keys
from noetl.bus import partition_of
from noetl.messages import Timer, encode

if TYPE_CHECKING:
    from actors.coordinator import CoordinatorHost


class TimerWheel:
    """Fires durable timers: each due timer becomes a Timer message to its execution.

    Timers live in the event table (`timer.scheduled` without `timer.fired`); this wheel is
    only a cache of them, reloaded at start and on every reconciler sweep, so a restart
    neither loses a timer nor fires one twice (the engine ignores a second Timer).
    """

    def __init__(self, host: CoordinatorHost) -> None:
        self.host = host
        self._heap: list[tuple[float, int, str]] = []
        self._known: set[tuple[int, str]] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def schedule(self, execution_id: int, name: str, due_at: float) -> None:
        """Fire `name` for `execution_id` at `due_at` (epoch seconds), once."""
        if (execution_id, name) in self._known:
            return
        self._known.add((execution_id, name))
        heapq.heappush(self._heap, (due_at, execution_id, name))
        self._changed.set()

    async def load(self) -> None:
        """Pick up the pending timers of this host's partitions from the store."""
        mine = set(self.host.partitions)
        for execution_id, name, due_at in await self.host.store.pending_timers():
            if partition_of(execution_id, self.host.settings.partitions) in mine:
                self.schedule(execution_id, name, due_at)

    def start(self) -> None:
        """Begin firing."""
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        """Stop firing (pending timers stay in the store)."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            if not self._heap:
                await self._changed.wait()
                continue
            due_at, execution_id, name = self._heap[0]
            delay = due_at - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
                continue
            heapq.heappop(self._heap)
            self._known.discard((execution_id, name))
            timer = Timer(
                execution_id=execution_id,
                dedup_id=keys.timer_id(execution_id, name),
                at=time.time(),
                name=name,
            )
            try:
                await self.host.bus.publish(
                    self.host.mailbox_of(execution_id), encode(timer), timer.dedup_id
                )
            except Exception:
                self.host.log.exception("could not fire timer %s of %s", name, execution_id)
                self.schedule(execution_id, name, time.time() + 1.0)
