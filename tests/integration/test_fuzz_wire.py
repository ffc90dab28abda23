"""Fuzzing the wire: random bytes on every subject the actors consume are dead-lettered
with the reason (JetStream subjects) or answered with an error (requests), never a crash;
the mesh then runs a playbook as before."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.mesh import Mesh
from noetl.bus import (
    CANCEL_PREFIX,
    CATALOG_GET,
    CATALOG_REGISTER,
    DEAD_STREAM,
    START_SUBJECT,
    cmd_subject,
    exec_subject,
)
from noetl.client import Client
from noetl.messages import CatalogReply
from tests.integration.conftest import fixture


def random_payloads(count: int) -> list[bytes]:
    """`count` byte strings drawn by hypothesis (empty, short, long, any byte)."""
    drawn: list[bytes] = []

    @settings(max_examples=count, database=None, deadline=None)
    @given(st.binary(max_size=2048))
    def draw(data: bytes) -> None:
        drawn.append(data)

    draw()
    return drawn


async def test_random_bytes_on_every_subject(client: Client, mesh: Mesh) -> None:
    payloads = random_payloads(15)
    durable = [
        START_SUBJECT,
        cmd_subject(client.settings.runner_pool),
        *(exec_subject(p) for p in range(client.settings.partitions)),
    ]
    for subject in durable:
        for data in payloads:
            await client.bus.js.publish(subject, data)
    for data in payloads:
        for subject in (CATALOG_REGISTER, CATALOG_GET):
            reply = msgspec.msgpack.decode(
                await client.bus.request(subject, data, timeout=10), type=CatalogReply
            )
            assert not reply.ok and reply.problems[0].startswith("bad request"), reply
        await client.bus.nc.publish(f"{CANCEL_PREFIX}.x{len(data)}", data)
    expected = len(durable) * len(payloads)
    async with asyncio.timeout(60):
        while (await client.bus.js.stream_info(DEAD_STREAM)).state.messages < expected:
            await asyncio.sleep(0.1)
    info = await client.bus.js.stream_info(DEAD_STREAM)
    assert info.state.messages == expected
    for seq in (1, expected // 2, expected):
        stored = await client.bus.js.get_msg(DEAD_STREAM, seq)
        assert stored.headers is not None and stored.headers["Noetl-Reason"]
        assert stored.headers["Noetl-Subject"] in durable
    assert await client.store.list_executions() == []
    reply = await client.register(fixture("hello_world"))
    eid = await client.start(reply.path)
    assert (await client.wait(eid, timeout=30))["status"] == "completed"
