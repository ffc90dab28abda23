"""A persistent, credit-based pull from a durable JetStream consumer into a fixed number of
slots: what nats.go's `Consume` does, bounded by the slots of this process.

The protocol (nats-server 2.9 and later): a pull request is a core publish to
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` whose reply subject is an inbox and whose
body asks for `batch` messages. It waits on the server until it has sent that many, until
it `expires` (then a `408` status says, in `Nats-Pending-Messages`, how many it never sent),
or until its reply subject has no subscriber any more (then the server drops it without a
word). While it waits the server sends a `100` heartbeat every `idle_heartbeat`.

Invariants:
- credits + in hand <= slots. Credits are the messages the live requests of this process
  may still bring; a request is only sent for slots that are free and not yet credited, so
  every message arrives into a free slot and nothing queues in memory. (Should the count
  ever be wrong, a message beyond the slots is handed back at once with a nak.)
- All requests of one generation share one inbox. Retiring a generation unsubscribes the
  inbox, which ends its requests on the server: nothing retired takes another message.
  A generation is retired on stop, on a reconnect (the server may or may not remember its
  requests), when no heartbeat came for two intervals (its requests are lost) and when a
  request ends in a way whose count is unknown (a refusal, a deleted consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("noetl.bus")

Handler = Callable[[Msg], Awaitable[None]]

# Seconds a pull request waits on the server. As short as nats-py's fetch waited: a process
# that freezes (SIGSTOP, a stalled VM) keeps its credits, and takes messages it cannot run
# until their ack_wait, only this long after it froze.
PULL_EXPIRES: Final = 1.0
# Seconds between the server's heartbeats for a waiting request (at most half `expires`).
PULL_HEARTBEAT: Final = 0.5
# Silence after which the requests of a generation are taken for lost: two heartbeats,
# and some slack for a loaded event loop.
_LOST_AFTER: Final = 2 * PULL_HEARTBEAT + 1.0
# How often the watchdog looks, and how long after a refused request it asks again.
_TICK: Final = 1.0
# Longest wait for the server to confirm an inbox is gone when stopping.
_CLOSE_WAIT: Final = 2.0
_NS: Final = 1_000_000_000
_MAX_BATCH_RE: Final = re.compile(r"Exceeded MaxRequestBatch of (\d+)")


class PullRequest(msgspec.Struct):
    """The body of a JetStream pull request (JSApiConsumerGetNextRequest)."""

    batch: int
    expires: int
    idle_heartbeat: int


class _Inbox:
    """One generation of pull requests: their shared reply subject and what was heard."""

    __slots__ = ("heard", "reconnects", "sub", "subject")

    def __init__(self, subject: str, reconnects: int) -> None:
        self.subject = subject
        self.reconnects = reconnects
        self.heard = time.monotonic()
        self.sub: Subscription | None = None


class Puller:
    """Feeds `handler` from the pull consumer `durable` of `stream`, at most `slots`
    messages at a time; a slot is free again when `handler` returns."""

    def __init__(
        self, nc: Client, stream: str, durable: str, handler: Handler, *, slots: int
    ) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._handler = handler
        self._slots = slots
        # Top up once this many slots are free and uncredited (at once when none is
        # credited): a lone message is never kept waiting, a burst is asked in batches.
        self._threshold = max(1, slots // 2)
        self._max_batch = slots
        self._in_hand = 0
        self._credits = 0
        self._inbox: _Inbox | None = None
        self._retry_at = 0.0
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def credits(self) -> int:
        """Messages the live pull requests of this process may still bring."""
        return self._credits

    async def start(self) -> None:
        """Open the first generation and watch over it."""
        await self._open()
        self._watchdog = asyncio.create_task(self._watch())

    def wake(self) -> None:
        """Look now rather than at the next tick (the connection came back)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop taking messages: no request of this process is left on the server.
        Messages in hand are left to their handlers."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        inbox = self._inbox
        self._retire()
        if inbox is not None:
            await self._close(inbox)
        closing = [t for t in self._tasks if t.get_name().startswith("retire")]
        await asyncio.gather(*closing, return_exceptions=True)

    async def _open(self) -> None:
        reconnects = int(self._nc.stats["reconnects"])
        inbox = _Inbox(self._nc.new_inbox(), reconnects)

        async def receive(msg: Msg) -> None:
            await self._receive(inbox, msg)

        try:
            inbox.sub = await self._nc.subscribe(inbox.subject, cb=receive)
        except nats.errors.Error as exc:
            log.debug("cannot open a pull inbox: %s", exc)
            self._retry_at = time.monotonic() + _TICK
            return
        self._inbox, self._credits = inbox, 0
        await self._top_up()

    def _retire(self) -> _Inbox | None:
        inbox, self._inbox, self._credits = self._inbox, None, 0
        return inbox

    def _retire_later(self, why: str) -> None:
        """Retire the current generation; the watchdog opens the next one."""
        inbox = self._retire()
        if inbox is not None:
            log.debug("pull from %s: new inbox (%s)", self._next, why)
            self._spawn(self._close(inbox), "retire")

    async def _close(self, inbox: _Inbox) -> None:
        """Unsubscribe `inbox`: its requests end; what is already on its way is handed
        back (nak) rather than left to `ack_wait`."""
        sub = inbox.sub
        if sub is None:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            if self._nc.is_connected:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await sub.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
                return
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def _receive(self, inbox: _Inbox, msg: Msg) -> None:
        headers = msg.headers
        if not msg.data and headers and "Status" in headers:
            if inbox is self._inbox:
                inbox.heard = time.monotonic()
                await self._on_status(inbox, headers)
            return
        if inbox is self._inbox:
            inbox.heard = time.monotonic()
            self._credits = max(0, self._credits - 1)
            if self._in_hand < self._slots:
                self._in_hand += 1
                self._spawn(self._handle(msg), "handle")
                return
            log.warning("pull from %s: a message beyond the free slots, handed back", self._next)
        with contextlib.suppress(Exception):  # the connection may be gone: ack_wait covers it
            await msg.nak()

    async def _on_status(self, inbox: _Inbox, headers: dict[str, str]) -> None:
        status = headers["Status"]
        if status == "100":  # idle heartbeat: the requests are alive
            return
        pending = headers.get("Nats-Pending-Messages")
        if status in ("408", "409") and pending is not None and pending.isdigit():
            # A request ended (expired, or cut short) with `pending` of its messages unsent.
            self._credits = max(0, self._credits - int(pending))
            await self._top_up()
            return
        # Refused, or ended with a count we cannot know: start over after a pause.
        description = headers.get("Description", "")
        capped = _MAX_BATCH_RE.search(description)
        if capped:
            self._max_batch = max(1, int(capped.group(1)))
        level = logging.DEBUG if status == "503" else logging.WARNING
        log.log(level, "pull from %s: %s %s", self._next, status, description)
        self._retry_at = time.monotonic() + _TICK
        self._retire_later(f"status {status}")

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("handling a message of %s failed", msg.subject)
        finally:
            self._in_hand -= 1
        await self._top_up()

    async def _top_up(self) -> None:
        """Ask for the free, uncredited slots, if enough of them are (see `_threshold`)."""
        inbox = self._inbox
        while inbox is not None and inbox is self._inbox and not self._stopping:
            want = self._slots - self._in_hand - self._credits
            if want <= 0 or (self._credits > 0 and want < self._threshold):
                return
            batch = min(want, self._max_batch)
            if self._credits == 0:
                inbox.heard = time.monotonic()  # silence is measured from the request
            self._credits += batch
            body = msgspec.json.encode(
                PullRequest(
                    batch=batch,
                    expires=int(PULL_EXPIRES * _NS),
                    idle_heartbeat=int(PULL_HEARTBEAT * _NS),
                )
            )
            try:
                await self._nc.publish(self._next, body, reply=inbox.subject)
            except nats.errors.Error as exc:  # not sent: the watchdog asks again
                if inbox is self._inbox:
                    self._credits -= batch
                log.debug("pull request to %s not sent: %s", self._next, exc)
                return

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK):
                    await self._wake.wait()
            self._wake.clear()
            await self._check()

    async def _check(self) -> None:
        if self._stopping or not self._nc.is_connected:
            return
        inbox = self._inbox
        now = time.monotonic()
        if inbox is None:
            if now >= self._retry_at:
                await self._open()
        elif int(self._nc.stats["reconnects"]) != inbox.reconnects:
            self._retire_later("reconnected")
            await self._open()
        elif self._credits > 0 and now - inbox.heard > _LOST_AFTER:
            self._retire_later("no heartbeat")
            await self._open()
        else:
            await self._top_up()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
