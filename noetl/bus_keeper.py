"""Keepers: one message in each work-queue stream that no consumer ever takes, so that
nats-server does not delete and create a file on nearly every ack.

Why: nats-server (2.15.1 measured; earlier versions have the same code) deletes the last
block file of a file-backed stream when the block's last message goes, and at once creates
a new, empty one to write the next message to. A work queue that keeps up is empty after
almost every ack, so each acknowledged message cost a file deletion and a file creation
(ext4's inode allocation: the larger part of nats-server's CPU per step). With a keeper in
the last block, the block is never empty and an ack only marks its message deleted.

A block is closed once full (4 MiB for a work queue), after which the keeper sits in an
older block and the new last block empties again: a fresh keeper every `KEEPER_EVERY`
seconds, and the older ones purged, keeps one in the last block. Nothing reads a keeper
and nothing depends on one being there: a lost keeper (a purge, a lost stream) costs only
the file churn until the next one. Keepers are published without a `Nats-Msg-Id`, so
several hosts doing it at once only leave the newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

import nats
from nats.js import JetStreamContext

log = logging.getLogger("noetl.bus")

KEEPER_PREFIX: Final = "noetl.keeper"
# Seconds between fresh keepers: a block of a busy stream fills in tens of seconds.
KEEPER_EVERY: Final = 5.0


def keeper_subject(stream: str) -> str:
    """The subject of `stream`'s keeper, part of the stream's subjects; no consumer
    filters on it."""
    return f"{KEEPER_PREFIX}.{stream}"


async def refresh(js: JetStreamContext, streams: Sequence[str]) -> None:
    """Put a fresh keeper in each stream, then drop its older ones."""
    for stream in streams:
        subject = keeper_subject(stream)
        await js.publish(subject, b"", stream=stream)
        await js.purge_stream(stream, subject=subject, keep=1)


class Keeper:
    """Refreshes the keepers of `streams` every `KEEPER_EVERY` seconds until stopped."""

    def __init__(self, js: JetStreamContext, streams: Sequence[str]) -> None:
        self._js = js
        self._streams = tuple(streams)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Refresh now and then periodically, in a task of its own."""
        self._task = asyncio.create_task(self._run(), name="keeper")

    async def stop(self) -> None:
        """Stop refreshing (the keepers stay in their streams)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await refresh(self._js, self._streams)
            except (nats.errors.Error, TimeoutError) as exc:
                # NATS away or busy: a missing keeper costs only speed; try again later.
                log.debug("keepers not refreshed: %r", exc)
            await asyncio.sleep(KEEPER_EVERY)
