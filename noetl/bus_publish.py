"""JetStream publishes whose acks come back through one reply subscription per connection.

What `js.publish` of nats-py does, without its costs per call (a `wait_for`, a token drawn
from the OS's random source, the ack parsed by `json` into a dataclass): a publish is the
message with its `Nats-Msg-Id` and a reply subject `<inbox>.<n>`, and its ack, received on
`<inbox>.*`, completes the future waiting under `n`. The inbox is unique to this process
(nats-py's NUID), `n` a counter, so a late ack of a publish that timed out meets nothing.
Errors are those of `js.publish`: NoStreamResponseError when no stream takes the subject,
APIError (and its subclasses) when the stream refuses, nats TimeoutError without an ack.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Final

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

#: Seconds a publish waits for its ack (nats-py's JetStream default).
ACK_TIMEOUT: Final = 5.0
_NO_RESPONDERS: Final = "503"


class _Ack(msgspec.Struct):
    """The part of a JetStream publish ack that says whether the stream took it."""

    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


class Publisher:
    """Publishes to JetStream over `nc` and waits for each ack."""

    def __init__(self, nc: Client, timeout: float = ACK_TIMEOUT) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = ""
        self._sub: Subscription | None = None
        self._opening = asyncio.Lock()
        self._count = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def publish(self, subject: str, data: bytes, msg_id: str) -> None:
        """Publish `data` with dedup id `msg_id`; return once the stream has stored it."""
        if self._sub is None:
            await self._open()
        token = str(next(self._count))
        ack: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = ack
        try:
            await self._nc.publish(
                subject, data, reply=self._prefix + token, headers={"Nats-Msg-Id": msg_id}
            )
            try:
                async with asyncio.timeout(self._timeout):
                    reply = await ack
            except TimeoutError:
                raise nats.errors.TimeoutError from None
        finally:
            del self._waiting[token]
        if reply.headers and reply.headers.get("Status") == _NO_RESPONDERS:
            raise nats.js.errors.NoStreamResponseError
        error = _decode_ack(reply.data).error
        if error is not None:
            nats.js.errors.APIError.from_error(error)  # raises the error's own class

    async def _open(self) -> None:
        async with self._opening:
            if self._sub is None:
                inbox = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(f"{inbox}.*", cb=self._on_ack)
                self._prefix = f"{inbox}."

    async def _on_ack(self, msg: Msg) -> None:
        ack = self._waiting.get(msg.subject[len(self._prefix) :])
        if ack is not None and not ack.done():
            ack.set_result(msg)
