"""The runners' persistent pull (`Bus.pull`, `bus_pull.Puller`) on a real nats-server: each
process holds at most its slots through a burst, a lone message needs no request of its own,
a stopped process leaves no request behind to take a message, and lost requests (a server
restart, an inbox the server forgot) are noticed and asked again."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from noetl.bus import CMD_STREAM, Bus, cmd_subject
from noetl.bus_pull import PULL_EXPIRES
from noetl.servers.nats import start_nats
from tests.support.services import stop_process

POOL = "pulltest"
SUBJECT = cmd_subject(POOL)
DURABLE = f"runner-{POOL}"
# Far beyond every wait below: a message taken by a request nobody serves would only come
# back after it, and the test would time out.
ACK_WAIT = 120.0


class Slots:
    """A handler that holds each message `hold` seconds, noting how many it held at once."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.now = 0
        self.most = 0
        self.done: list[Msg] = []

    async def __call__(self, msg: Msg) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.hold)
            await msg.ack()
            self.done.append(msg)
        finally:
            self.now -= 1


@pytest.fixture
async def buses(nats_url: str) -> AsyncIterator[Callable[[], Awaitable[Bus]]]:
    """Connections as separate processes would have them, closed after the test."""
    opened: list[Bus] = []

    async def connect() -> Bus:
        bus = await Bus.connect(nats_url, ack_wait=ACK_WAIT)
        opened.append(bus)
        return bus

    yield connect
    for bus in opened:
        await bus.close()


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def _until_done(slots: Slots, count: int) -> None:
    await _until(lambda: len(slots.done) >= count)


async def _publish(bus: Bus, count: int, tag: str) -> None:
    for i in range(count):
        await bus.publish(SUBJECT, f"{tag}-{i}".encode(), msg_id=f"{tag}-{i}")


async def test_a_burst_never_exceeds_any_process_slots(
    buses: Callable[[], Awaitable[Bus]],
) -> None:
    a, b = await buses(), await buses()
    held = {"a": Slots(hold=0.02), "b": Slots(hold=0.02)}
    await a.pull(CMD_STREAM, SUBJECT, DURABLE, held["a"], max_in_flight=2)
    await b.pull(CMD_STREAM, SUBJECT, DURABLE, held["b"], max_in_flight=3)
    await _publish(a, 60, "burst")
    await _until(lambda: sum(len(s.done) for s in held.values()) == 60)
    assert held["a"].most <= 2 and held["b"].most <= 3, (held["a"].most, held["b"].most)
    assert held["a"].done and held["b"].done
    # Each message was delivered once: none came beyond a free slot to be handed back.
    taken = [m for s in held.values() for m in s.done]
    assert sorted(m.data for m in taken) == sorted(f"burst-{i}".encode() for i in range(60))
    assert {m.metadata.num_delivered for m in taken} == {1}


async def test_a_lone_message_needs_no_pull_request_of_its_own(
    buses: Callable[[], Awaitable[Bus]], nats_url: str
) -> None:
    bus = await buses()
    watcher = await nats.connect(nats_url)
    requests: list[bytes] = []

    async def seen(msg: Msg) -> None:
        requests.append(msg.data)

    try:
        await watcher.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{CMD_STREAM}.{DURABLE}", cb=seen)
        await watcher.flush()
        held = Slots()
        await bus.pull(CMD_STREAM, SUBJECT, DURABLE, held, max_in_flight=16)
        # One after another, as a chain's steps come: the 16 credits asked at the start
        # serve them, topped up 8 at a time (fetch asked at least once per message). Each
        # request also ends after PULL_EXPIRES and is asked again: allowed for.
        began = time.monotonic()
        for i in range(40):
            await _publish(bus, 1, f"lone{i}")
            await _until_done(held, i + 1)
        await watcher.flush()
        renewals = 2 * math.ceil((time.monotonic() - began) / PULL_EXPIRES)
        assert len(requests) <= 1 + 40 // 8 + 2 + renewals, requests
        assert all(b'"idle_heartbeat"' in r for r in requests)
    finally:
        await watcher.close()


async def test_a_stopped_process_leaves_nothing_to_take_a_message(
    buses: Callable[[], Awaitable[Bus]],
) -> None:
    first, other = await buses(), await buses()
    held_first = Slots()
    await first.pull(CMD_STREAM, SUBJECT, DURABLE, held_first, max_in_flight=8)
    await _publish(first, 1, "before")
    await _until(lambda: len(held_first.done) == 1)
    async with asyncio.timeout(30):  # bounded, whatever the load
        await first.stop_consuming()
    # Its eight credits were waiting on the server: had any survived the stop, it would take
    # one of these and hold it until ack_wait.
    held_other = Slots()
    await other.pull(CMD_STREAM, SUBJECT, DURABLE, held_other, max_in_flight=1)
    for i in range(6):
        await _publish(other, 1, f"after{i}")
        await _until_done(held_other, i + 1)
    assert len(held_first.done) == 1
    # Not even handed back by the stopped one: each was delivered once, to the other.
    assert {m.metadata.num_delivered for m in held_other.done} == {1}
    info = await other.js.consumer_info(CMD_STREAM, DURABLE)
    assert info.num_ack_pending == 0


async def test_pulling_resumes_when_the_server_restarts(tmp_path: Path) -> None:
    store, log = tmp_path / "nats" / "store", tmp_path / "nats.log"
    auth = ("noetl", secrets.token_urlsafe(24))
    server = start_nats(store, log=log, auth=auth)
    bus: Bus | None = None
    try:
        bus = await Bus.connect(server.url, ack_wait=ACK_WAIT)
        held = Slots()
        await bus.pull(CMD_STREAM, SUBJECT, DURABLE, held, max_in_flight=4)
        await _publish(bus, 1, "before")
        await _until(lambda: len(held.done) == 1)
        # The restarted server remembers the consumer, not the pull requests waiting on it.
        stop_process(server)
        server = start_nats(store, port=server.port, log=log, auth=auth)
        async with asyncio.timeout(60):
            while True:
                try:
                    await _publish(bus, 1, "after")
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.2)
        await _until(lambda: len(held.done) == 2)
        assert held.done[-1].data == b"after-0"
    finally:
        if bus is not None:
            await bus.close()
        stop_process(server)


async def test_requests_the_server_forgot_are_asked_again(
    buses: Callable[[], Awaitable[Bus]],
) -> None:
    bus = await buses()
    held = Slots()
    await bus.pull(CMD_STREAM, SUBJECT, DURABLE, held, max_in_flight=4)
    [puller] = bus._pullers
    assert puller.credits == 4
    # Fault injected: the inbox vanishes under the puller (as if the server had lost its
    # requests without a word: no 408 comes, no heartbeat either).
    inbox = puller._inbox
    assert inbox is not None and inbox.sub is not None
    await inbox.sub.unsubscribe()
    await _publish(bus, 3, "lost")
    await _until(lambda: len(held.done) == 3)
    assert puller._inbox is not inbox
    assert Counter(m.metadata.num_delivered for m in held.done) == {1: 3}
