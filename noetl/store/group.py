"""Group commit: the writes of concurrent callers coalesced into one transaction.

Leader/follower batching without a timer, as PostgreSQL's own group commit does for WAL
flushes: a caller finding no write in flight writes at once, in its own task, so a lone
write is never delayed; callers arriving while a write is in flight queue, and when it
returns everything queued (up to `max_batch`) goes in one round trip and one transaction,
written by a drain task that runs while the queue is not empty.

Invariants:
- a caller's await returns only after the batch holding its write has committed, and it
  then gets its own result (per-item results come from the batch's writer);
- a batch holds at most one item per key (a runner event's execution and dedup key; an item
  may hold several, as a command's start and outcome written together do): an item with a
  key already in the batch waits for the next one, in arrival order, so items of one key
  are written one after the other as they would be without batching; an item is written
  whole, in one batch, never split;
- a batch that failed as a whole because the connection or the server went (`LOST`) fails
  every caller in it with that error; one that failed otherwise (a value PostgreSQL refused,
  say) is written again item by item, so that one caller's bad value fails that caller only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Final, Generic, TypeVar

import asyncpg

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: Failures of the transaction itself, not of one item's values: no item was committed (or,
#: lost during the commit, none is known to be), and writing them again one by one on the
#: same broken link would only repeat the failure.
LOST: Final = (
    OSError,  # TimeoutError included
    asyncpg.InterfaceError,
    # The driver's protocol state broken, as when the server ended the connection while a
    # write went out on it (seen on a kept connection right after pg_terminate_backend).
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

#: Writes a batch and returns one outcome per item, in order: a result, or the exception
#: that item's caller alone must raise. Raises when the transaction failed.
BatchWriter = Callable[[Sequence[ItemT]], Awaitable[Sequence["ResultT | Exception"]]]

_Waiter = tuple[ItemT, "asyncio.Future[ResultT]"]


class GroupCommit(Generic[ItemT, ResultT]):
    """Coalesces concurrent writes of one kind into batches, one batch in flight at a time."""

    def __init__(
        self,
        write: BatchWriter[ItemT, ResultT],
        keys: Callable[[ItemT], Iterable[Hashable]],
        max_batch: int,
    ) -> None:
        self._write = write
        self._keys = keys
        self.max_batch = max_batch
        self._queue: list[_Waiter[ItemT, ResultT]] = []
        self._busy = False
        # Held so that the running drain task is not garbage-collected.
        self._drain: asyncio.Task[None] | None = None
        #: Batches written and items in them, since the start (what tests count).
        self.batches = 0
        self.items = 0

    async def submit(self, item: ItemT) -> ResultT:
        """Write `item`, alone at once when nothing is in flight, else in the next batch."""
        if self._busy:
            future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
            self._queue.append((item, future))
            return await future
        self._busy = True
        try:
            self.batches += 1
            self.items += 1
            (outcome,) = await self._write([item])
        finally:
            self._busy = False
            self._start_drain()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _start_drain(self) -> None:
        if self._queue and not self._busy:
            self._busy = True
            self._drain = asyncio.get_running_loop().create_task(self._drain_queue())

    async def _drain_queue(self) -> None:
        try:
            while batch := self._take():
                await self._flush(batch)
        finally:
            self._busy = False
            self._drain = None

    def _take(self) -> list[_Waiter[ItemT, ResultT]]:
        """The next batch: waiting items in arrival order, one per key, at most max_batch;
        items whose caller gave up (cancelled) are dropped unwritten."""
        batch: list[_Waiter[ItemT, ResultT]] = []
        rest: list[_Waiter[ItemT, ResultT]] = []
        keys: set[Hashable] = set()
        for waiter in self._queue:
            if waiter[1].done():
                continue
            mine = set(self._keys(waiter[0]))
            if len(batch) < self.max_batch and keys.isdisjoint(mine):
                batch.append(waiter)
            else:
                rest.append(waiter)
            # The keys of an item left waiting hold back later items sharing one of them
            # (arrival order per key), which single-key items got for free.
            keys |= mine
        self._queue = rest
        return batch

    async def _flush(self, batch: list[_Waiter[ItemT, ResultT]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            outcomes = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, LOST):
                for waiter in batch:
                    await self._flush([waiter])
                return
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
