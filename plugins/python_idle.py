"""Idle python workers kept for their executions' next calls.

A worker serves one execution only (`owner`), so an idle one is of use to that execution
alone. Keeping it saves the execution's next step a fork cycle (several ms of CPU); holding it
costs its private memory (a few MiB). The set is bounded three ways: by count, by the memory
left to the runner, and by idleness. When it is full, the worker just used is stopped rather
than an older one: the runners take commands in stream order, so the execution idle longest
is the one whose next command comes first (evicting the oldest would make a workload of more
executions than the bound miss every time, instead of keeping as many as fit).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Generic, Protocol, TypeVar

MEMORY_CHECK_EVERY = 0.5  # seconds between two reads of the memory left


class Stoppable(Protocol):
    """What the set needs of a worker."""

    owner: object | None

    @property
    def alive(self) -> bool:
        """Whether it can still take a call."""
        ...

    def kill(self) -> None:
        """Stop it."""
        ...


W = TypeVar("W", bound=Stoppable)


class IdleWorkers(Generic[W]):
    """At most `limit` idle workers, each stopped after `idle_seconds` unused, and none kept
    while less than `free_bytes` of memory is available. Invariant: every worker held here is
    in `_order` exactly once and in `_by_owner[worker.owner]` exactly once."""

    def __init__(self, limit: int, idle_seconds: float, free_bytes: int) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.free_bytes = free_bytes
        self._by_owner: dict[object, list[W]] = {}
        # Oldest first: the time each went idle (monotonic).
        self._order: collections.OrderedDict[W, float] = collections.OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        self._memory = _MemoryLeft()
        self._memory_ok = True
        self._memory_checked = float("-inf")

    def __len__(self) -> int:
        return len(self._order)

    def take(self, owner: object) -> W | None:
        """The most recently used live idle worker of `owner` (its caches are warmest)."""
        workers = self._by_owner.get(owner)
        while workers:
            worker = workers.pop()
            del self._order[worker]
            if not workers:
                del self._by_owner[owner]
            if worker.alive:
                return worker
            worker.kill()
        return None

    def keep(self, worker: W) -> bool:
        """Hold `worker` for its owner's next call; False (not held) when the set is full or
        memory is short, and then the oldest idle worker is stopped too, to free some."""
        if len(self._order) >= self.limit:
            return False
        if not self._enough_memory():
            self._stop_oldest()
            return False
        self._by_owner.setdefault(worker.owner, []).append(worker)
        self._order[worker] = time.monotonic()
        if self._timer is None:
            self._schedule()
        return True

    def drop(self, owner: object) -> None:
        """Stop every idle worker of `owner` (its execution ended)."""
        for worker in self._by_owner.pop(owner, []):
            del self._order[worker]
            worker.kill()

    def clear(self) -> None:
        """Stop every idle worker and the idleness timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for worker in list(self._order):
            worker.kill()
        self._order.clear()
        self._by_owner.clear()

    def _stop_oldest(self) -> None:
        if self._order:
            worker, _ = self._order.popitem(last=False)
            self._forget(worker)
            worker.kill()

    def _forget(self, worker: W) -> None:
        workers = self._by_owner[worker.owner]
        workers.remove(worker)
        if not workers:
            del self._by_owner[worker.owner]

    def _schedule(self) -> None:
        self._timer = None
        if self._order:
            since = next(iter(self._order.values()))
            delay = max(0.0, since + self.idle_seconds - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        deadline = time.monotonic() - self.idle_seconds
        while self._order and next(iter(self._order.values())) <= deadline:
            self._stop_oldest()
        self._schedule()

    def _enough_memory(self) -> bool:
        if self.free_bytes <= 0:
            return True
        now = time.monotonic()
        if now - self._memory_checked >= MEMORY_CHECK_EVERY:
            self._memory_checked = now
            left = self._memory.left()
            self._memory_ok = left is None or left >= self.free_bytes
        return self._memory_ok


class _MemoryLeft:
    """Memory available to this process: the machine's `MemAvailable`, or less when its
    cgroup (v2) has a limit. None where neither can be read (not Linux)."""

    def __init__(self) -> None:
        self._cgroup: Path | None = None
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                    if (folder / "memory.max").exists():
                        self._cgroup = folder
        except OSError:
            pass

    def left(self) -> int | None:
        """Bytes that may still be allocated before the kernel reclaims or kills."""
        found: list[int] = []
        try:
            with open("/proc/meminfo", "rb") as info:
                for line in info:
                    if line.startswith(b"MemAvailable:"):
                        found.append(int(line.split()[1]) * 1024)
                        break
        except OSError:
            pass
        if self._cgroup is not None:
            try:
                limit = (self._cgroup / "memory.max").read_text().strip()
                if limit != "max":
                    used = int((self._cgroup / "memory.current").read_text())
                    found.append(int(limit) - used)
            except (OSError, ValueError):
                pass
        return min(found) if found else None
