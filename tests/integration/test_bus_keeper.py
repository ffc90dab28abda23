"""Keepers (`noetl.bus_keeper`) on a real nats-server: one per work-queue stream, never
delivered to a consumer, not counted as a command in flight, and with one in place the
stream's block file survives a message acked as soon as it is stored (without one,
nats-server deletes the emptied last block and creates another for each such message)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from noetl.bus import CMD_STREAM, WORK_QUEUES, Bus, cmd_subject
from noetl.bus_keeper import keeper_subject, refresh
from noetl.servers.nats import NatsProcess, start_nats
from tests.support.services import stop_process

POOL = "keepertest"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[NatsProcess, Path]]:
    """A nats-server of this test, and its store."""
    store = tmp_path / "store"
    proc = start_nats(store, log=tmp_path / "nats.log")
    try:
        yield proc, store
    finally:
        stop_process(proc)


def _blocks(store: Path, stream: str) -> set[str]:
    return {p.name for p in store.glob(f"jetstream/*/streams/{stream}/msgs/*.blk")}


async def test_one_keeper_per_queue_never_delivered(server: tuple[NatsProcess, Path]) -> None:
    proc, store = server
    bus = await Bus.connect(proc.url)
    try:
        bus.keep_warm()
        for _ in range(3):  # the periodic refresh, several hosts: one keeper is left
            await refresh(bus.js, WORK_QUEUES)
        for stream in WORK_QUEUES:
            info = await bus.js.stream_info(stream, subjects_filter=">")
            assert info.state.subjects == {keeper_subject(stream): 1}, stream
        assert await bus.commands_queued() == 0

        taken: list[str] = []
        sub = await bus.js.pull_subscribe(cmd_subject(POOL), durable=POOL, stream=CMD_STREAM)
        before = _blocks(store, CMD_STREAM)
        for i in range(20):
            await bus.publish(cmd_subject(POOL), b"command", f"c{i}")
            assert await bus.commands_queued() == 1
            for msg in await sub.fetch(1, timeout=5):
                taken.append(msg.subject)
                await msg.ack()
        await asyncio.sleep(0.2)  # the server removes acked messages on its own time
        assert taken == [cmd_subject(POOL)] * 20
        assert await bus.commands_queued() == 0
        assert before and _blocks(store, CMD_STREAM) == before
    finally:
        await bus.close()
    assert bus._keeper is None  # stopped with the bus
