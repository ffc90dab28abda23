"""Rendering off the event loop: a thread pool of one actor, so that a template that runs
until its deadline (`noetl.render_limits`) holds a worker thread, never the loop that
serves the actor's other executions, heartbeats and acks. Work that runs no template
(`noetl.render.has_template`, `Engine.renders`), or runs only plain lookups
(`noetl.render.may_run_long`), cannot reach that deadline and is done on
the loop: a hop costs a thread wake-up and a loop wake-up on a step's critical path."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class RenderThreads:
    """Up to `workers` threads rendering at once; created as needed, released by `close`."""

    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        #: Calls sent to a thread so far: each costs the loop a wake-up, so work that runs
        #: no template is done on the loop instead (its callers decide).
        self.hops = 0

    async def run(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`function(*args, **kwargs)` in a worker thread, with the caller's context
        variables."""
        self.hops += 1
        call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Release the threads once the renderings in hand end (they end by their deadline)."""
        self._pool.shutdown(wait=False)
