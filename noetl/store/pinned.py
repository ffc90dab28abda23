"""One pooled connection kept by a writer that runs one statement at a time.

A group commit (`noetl.store.group`) has at most one batch in flight, so it needs one
connection, and taking it from the pool and giving it back on every batch costs more
than the rest of a lone runner event's write on the runner's side (a queue hop on
acquire; a task, a timeout and a reset on release). `Pinned` keeps the connection between
writes instead. Invariants: it is used by one write at a time; a write that fails in any
way gives the connection back to the pool (which replaces a broken one) and the next write
takes another; `release` gives it back for good, before the pool closes. A pool of fewer
than PIN_FROM connections is never pinned: its few are everyone's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")

#: The smallest pool one of whose connections a writer keeps.
PIN_FROM: Final = 4


class Pinned:
    """A connection of `pool` held across the writes of one sequential writer."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._con: PoolConnectionProxy | None = None
        self._keeps = pool.get_max_size() >= PIN_FROM

    async def run(self, work: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
        """`work(connection)`, on the kept connection (taken from the pool if none is)."""
        if not self._keeps:
            async with self.pool.acquire() as con:
                return await work(con)
        kept = self._con
        if kept is None or not _usable(kept):
            await self.release()
            kept = self._con = await self.pool.acquire()
        try:
            return await work(kept)
        except BaseException:
            self._con = None
            with contextlib.suppress(Exception):  # a broken one is closed by the pool
                await self.pool.release(kept)
            raise

    async def release(self) -> None:
        """Give the kept connection back to the pool (the next write takes one again)."""
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(Exception):
                await self.pool.release(con)


def _usable(con: PoolConnectionProxy) -> bool:
    """Whether a kept connection is still open: one the server closed is taken back by the
    pool at once, and its proxy then refuses every call."""
    try:
        return not con.is_closed()
    except asyncpg.InterfaceError:
        return False
