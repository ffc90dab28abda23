"""The idle measure sets actors up as a coordinator holds them and counts what they hold
(its figure is judged by the bench, not here)."""

from __future__ import annotations

import asyncio

from noetl.bench.memory import idle


def test_idle_measures_memory_held_per_cached_execution() -> None:
    measured = asyncio.run(idle(50))
    assert measured.executions == 50
    # An actor holds at least its state, mailbox and task: never nothing.
    assert measured.kib_per_execution > 1
