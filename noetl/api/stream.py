"""The live stream of an execution as server-sent events (`/api/executions/{id}/stream`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import msgspec
import nats.errors
from aiohttp import web
from nats.aio.msg import Msg

from noetl.api.common import Route, RouteGroup, execution_id
from noetl.api.schemas import ErrorBody
from noetl.bus import events_subject
from noetl.client import Client
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import ExecutionNotFound

__all__ = ["Streams", "sse"]

log = logging.getLogger("noetl.api")

# Stream timings, module attributes so that tests can shorten them.
POLL_SECONDS: float = 1.0  # how often a stream reads the execution's status from the store
KEEPALIVE_SECONDS: float = 15.0  # idle time before a stream sends a comment line
APPEAR_SECONDS: float = 10.0  # how long a stream waits for a just-started execution's row

# Announcement batches a stream buffers for a slow reader before dropping new ones: they are
# best effort anyway, and the final `end` event comes from the store.
_STREAM_BUFFER: Final = 1024
# Seconds a stream waits for the announcements of an end the store already shows.
_ANNOUNCE_GRACE: Final = 1.0


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; compact JSON never contains a newline, so one `data:` line."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + msgspec.json.encode(data) + b"\n\n"


class Streams(RouteGroup):
    """Open streams, each ended at shutdown so that none holds the server open."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        # One event per open stream, set at shutdown.
        self._streams: set[asyncio.Event] = set()

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/executions/{id}/stream",
                self.stream_execution,
                "The execution live, as server-sent events ending with `end`",
                "executions",
                {200: None, 400: ErrorBody, 404: ErrorBody},
                media="text/event-stream",
            )
        ]

    async def stream_execution(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: each announced event, then `end` with the final document."""
        eid = execution_id(request)
        batches: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(_STREAM_BUFFER)

        async def on_msg(msg: Msg) -> None:
            with contextlib.suppress(asyncio.QueueFull, msgspec.DecodeError):
                batches.put_nowait(msgspec.json.decode(msg.data))

        # Subscribed before the first read, so nothing committed in between is missed.
        sub = await self.client.bus.nc.subscribe(events_subject(eid), cb=on_msg)
        closing = asyncio.Event()
        self._streams.add(closing)
        try:
            status = await self._status_once_known(eid)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # proxies such as nginx must not buffer it
                }
            )
            await response.prepare(request)
            try:
                await self._pump(request, response, eid, status, batches, closing)
            except ConnectionResetError:
                pass  # the client went away
            except Exception as exc:
                # Headers are sent: the failure can only be reported inside the stream.
                log.exception("stream of execution %s failed", eid)
                with contextlib.suppress(ConnectionResetError):
                    await response.write(sse({"error": str(exc)}, "error"))
            return response
        finally:
            self._streams.discard(closing)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _status_once_known(self, eid: int) -> str:
        """The execution's status, waiting up to APPEAR_SECONDS for a just-started one
        (a start is accepted before its coordinator has recorded it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + APPEAR_SECONDS
        while True:
            try:
                return str((await self.client.store.get_execution(eid))["status"])
            except ExecutionNotFound:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.1)

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        eid: int,
        status: str,
        batches: asyncio.Queue[list[dict[str, Any]]],
        closing: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        stored_end = status in TERMINAL_STATUSES
        announced_end = False
        next_poll = loop.time() + POLL_SECONDS
        next_ping = loop.time() + KEEPALIVE_SECONDS
        while not (stored_end or announced_end):
            transport = request.transport
            if closing.is_set() or transport is None or transport.is_closing():
                return  # server shutting down, or the client disconnected
            try:
                wait = max(0.0, min(next_poll, next_ping) - loop.time())
                batch = await asyncio.wait_for(batches.get(), wait)
            except TimeoutError:
                batch = None
            if batch is not None:
                announced_end = await self._forward(response, batch)
                next_ping = loop.time() + KEEPALIVE_SECONDS
            now = loop.time()
            if not announced_end and now >= next_poll:
                # Announcements are best effort: the store says for sure when it ended.
                row = await self.client.store.get_execution(eid)
                stored_end = row["status"] in TERMINAL_STATUSES
                next_poll = now + POLL_SECONDS
            if not (stored_end or announced_end) and now >= next_ping:
                await response.write(b": keep-alive\n\n")
                next_ping = now + KEEPALIVE_SECONDS
        if stored_end and status not in TERMINAL_STATUSES:
            # Events are announced just after their commit, so the poll can see the end
            # first: give the last announcements a moment to arrive before `end`.
            deadline = loop.time() + _ANNOUNCE_GRACE
            while not announced_end and (left := deadline - loop.time()) > 0:
                try:
                    batch = await asyncio.wait_for(batches.get(), left)
                except TimeoutError:
                    break
                announced_end = await self._forward(response, batch)
        while not batches.empty():
            await self._forward(response, batches.get_nowait())
        await response.write(sse(await self.client.store.describe(eid), "end"))

    @staticmethod
    async def _forward(response: web.StreamResponse, batch: list[dict[str, Any]]) -> bool:
        """Send a batch of announced events; True when one of them ends the execution."""
        ended = False
        for event in batch:
            await response.write(sse(event))
            ended = ended or (
                str(event.get("type", "")).startswith("execution.")
                and event.get("status") in TERMINAL_STATUSES
            )
        return ended

    async def close_streams(self, app: web.Application) -> None:
        """`on_shutdown`: end every open stream (clients reconnect elsewhere)."""
        for closing in self._streams:
            closing.set()
