"""Following one execution live, shared by `run`, `execute --wait`, `restart` and `watch`:
its steps as they start and end, loop progress, retries and child executions, from the
event table (woken by the coordinator's announcements, polled otherwise so nothing is
missed). Ctrl-C, when `interruptible`: the first cancels the execution, a second detaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from noetl import dsl
from noetl.bus import events_subject
from noetl.cli_core import err, say
from noetl.client import Client
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import NoetlError
from noetl.store import views
from noetl.timeline import Timeline

__all__ = ["Detached", "follow", "id_arg"]

_POLL_SECONDS = 0.5


class Detached(Exception):
    """The user pressed Ctrl-C twice: stop following, leave the execution as it is."""


def id_arg(value: str) -> int:
    """An execution id from the command line; exits 2 with one line when it is not one."""
    from noetl.cli_core import EXIT_USAGE, fail

    if not value.isdigit() or int(value) >= 2**63:
        fail(f"an execution id is a 63-bit integer (0 to 2^63-1), got {value!r}", EXIT_USAGE)
    return int(value)


async def _max_attempts(client: Client, execution_id: int) -> dict[str, int]:
    """Each step's retry bound, from the execution's playbook (empty when unknown yet)."""
    try:
        row = await client.store.get_execution(execution_id)
        _, content = await client.store.get_playbook(row["path"], row["version"])
        playbook = dsl.load_text(content)
    except NoetlError:
        return {}
    return {s.step: s.retry.max_attempts for s in playbook.workflow if s.retry is not None}


class _Interrupts:
    """Counts Ctrl-C presses while installed (SIGINT handled by the loop)."""

    def __init__(self) -> None:
        self.count = 0
        self.cancelled = False
        self.hit = asyncio.Event()

    def press(self) -> None:
        self.count += 1
        self.hit.set()


async def follow(
    client: Client,
    execution_id: int,
    *,
    show: bool,
    timeout: float | None = None,
    interruptible: bool = False,
    on_tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Follow the execution until it ends and return its document. `show` prints the live
    view on stderr; `on_tick` runs at every poll. Raises TimeoutError after `timeout`
    seconds, Detached on a second Ctrl-C (when `interruptible`)."""
    timeline = Timeline()
    wake = asyncio.Event()
    children: set[str] = set()
    interrupts = _Interrupts()
    loop = asyncio.get_running_loop()

    async def on_msg(_msg: Any) -> None:
        wake.set()

    sub = await client.bus.nc.subscribe(events_subject(execution_id), cb=on_msg)
    if interruptible:
        loop.add_signal_handler(signal.SIGINT, interrupts.press)
    try:
        async with asyncio.timeout(timeout):
            while True:
                if not timeline.max_attempts:
                    timeline.max_attempts = await _max_attempts(client, execution_id)
                rows = await views.events_after(
                    client.store.pool, execution_id, timeline.last_event_id
                )
                for line in timeline.feed(rows):
                    if show:
                        err.print(line)
                if show:
                    await _show_children(client, execution_id, children)
                if on_tick is not None:
                    on_tick()
                if timeline.status in TERMINAL_STATUSES:
                    break
                if interrupts.hit.is_set():
                    interrupts.hit.clear()
                    if not interrupts.cancelled:
                        interrupts.cancelled = True
                        await _cancel(client, execution_id)
                    if interrupts.count > 1:
                        _detach(execution_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_either(wake, interrupts.hit), _POLL_SECONDS)
                wake.clear()
    finally:
        if interruptible:
            loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return await client.store.describe(execution_id)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _cancel(client: Client, execution_id: int) -> None:
    await client.cancel(execution_id, "cancelled with Ctrl-C")
    say(
        f"noetl: Ctrl-C: cancelling execution {execution_id} (running tools are stopped); "
        "press Ctrl-C again to detach"
    )


def _detach(execution_id: int) -> None:
    say(
        f"noetl: detached from execution {execution_id}; its cancellation is recorded and "
        "finishes when a mesh runs (`noetl-runtime server start`). "
        f"`noetl-runtime status {execution_id}` shows it; "
        f"`noetl-runtime restart {execution_id}` runs it again from its failed step"
    )
    raise Detached


async def _show_children(client: Client, execution_id: int, seen: set[str]) -> None:
    for child in await views.children(client.store.pool, execution_id):
        key = f"{child['execution_id']}:{child['status']}"
        if key in seen:
            continue
        seen.add(key)
        colour = {"completed": "green", "failed": "red", "running": "cyan"}.get(
            child["status"], "yellow"
        )
        err.print(
            f"  [dim]↳[/] child execution {child['execution_id']} ({child['path']}) "
            f"[{colour}]{child['status']}[/]"
        )
