"""Keeping a message in progress while its command runs, from a timer rather than a task.

Most commands end long before the first beat is due: they cost one timer handle, where a
task sleeping in a loop cost its creation, two steps and a cancellation on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Heartbeat:
    """Calls `beat` every `interval` seconds until `stop`; a beat still in flight when the
    next is due is not doubled, and a failed beat is ignored (the next one tries again)."""

    def __init__(self, beat: Callable[[], Awaitable[None]], interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._beat = beat
        self._interval = interval
        self._sending: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(interval, self._due)

    def _due(self) -> None:
        if self._sending is None or self._sending.done():
            self._sending = self._loop.create_task(self._send())
        self._timer = self._loop.call_later(self._interval, self._due)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self._beat()

    def stop(self) -> None:
        """No more beats; one in flight is abandoned."""
        self._timer.cancel()
        if self._sending is not None:
            self._sending.cancel()
