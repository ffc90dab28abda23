"""Contracts on the wire: external start requests, idempotent starts, dead letters."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.msg import Msg

from actors.mesh import Mesh
from actors.runner import Runner
from noetl.bus import CATALOG_GET, DEAD_STREAM, START_SUBJECT
from noetl.client import Client
from noetl.config import Settings
from noetl.engine import Engine
from noetl.messages import CatalogReply, CommandIssued, GetPlaybook, encode
from tests.integration.conftest import fixture
from tests.support.mesh import connected, running


async def wait_for_executions(client: Client, count: int, timeout: float = 30) -> list[dict]:
    async with asyncio.timeout(timeout):
        while True:
            rows = await client.store.list_executions()
            if len(rows) >= count and all(r["status"] != "running" for r in rows):
                return rows
            await asyncio.sleep(0.1)


async def test_json_start_request_runs_once_per_msg_id(client: Client, mesh: Mesh) -> None:
    await client.register(fixture("hello_world"))
    body = msgspec.json.encode({"path": "examples/hello_world", "workload": {"message": "Hi"}})
    for _ in range(3):
        await client.bus.js.publish(START_SUBJECT, body, headers={"Nats-Msg-Id": "order-17"})
    rows = await wait_for_executions(client, 1)
    await asyncio.sleep(0.5)
    rows = await client.store.list_executions()
    assert len(rows) == 1
    doc = await client.store.describe(int(rows[0]["execution_id"]))
    assert doc["result"] == {"final": "Hi!", "length": 3}


async def test_msgpack_start_request_without_msg_id(client: Client, mesh: Mesh) -> None:
    await client.register(fixture("hello_world"))
    await client.bus.js.publish(
        START_SUBJECT, msgspec.msgpack.encode({"path": "examples/hello_world"})
    )
    rows = await wait_for_executions(client, 1)
    assert rows[0]["status"] == "completed"


async def test_start_of_unknown_playbook_is_a_failed_execution(client: Client, mesh: Mesh) -> None:
    await client.bus.js.publish(START_SUBJECT, b'{"path": "no/such/playbook"}')
    rows = await wait_for_executions(client, 1)
    doc = await client.store.describe(int(rows[0]["execution_id"]))
    assert doc["status"] == "failed"
    assert "no/such/playbook" in doc["error"]["message"]


async def test_malformed_messages_are_dead_lettered(client: Client, mesh: Mesh) -> None:
    for subject in ("noetl.exec.0", "noetl.cmd.default", START_SUBJECT):
        await client.bus.js.publish(subject, b"\xc1 definitely not a message")
    async with asyncio.timeout(10):
        while (await client.bus.js.stream_info(DEAD_STREAM)).state.messages < 3:
            await asyncio.sleep(0.05)
    reasons = []
    for seq in range(1, 4):
        stored = await client.bus.js.get_msg(DEAD_STREAM, seq)
        assert stored.headers is not None
        reasons.append((stored.headers["Noetl-Subject"], stored.headers["Noetl-Reason"]))
    assert {s for s, _ in reasons} == {"noetl.exec.0", "noetl.cmd.default", START_SUBJECT}
    assert all(reason for _, reason in reasons)
    # The actors carried on.
    reply = await client.register(fixture("hello_world"))
    eid = await client.start(reply.path)
    assert (await client.wait(eid, timeout=30))["status"] == "completed"


async def test_catalog_answers_lookups_by_path_and_version(client: Client, mesh: Mesh) -> None:
    first = await client.register(fixture("hello_world"))
    data = await client.bus.request(CATALOG_GET, encode(GetPlaybook(path=first.path)))
    latest = msgspec.msgpack.decode(data, type=CatalogReply)
    assert latest.ok and latest.version == first.version
    assert latest.content == fixture("hello_world").read_text()
    data = await client.bus.request(CATALOG_GET, encode(GetPlaybook(path=first.path, version=9)))
    missing = msgspec.msgpack.decode(data, type=CatalogReply)
    assert not missing.ok and "version 9" in missing.problems[0]


async def test_a_message_that_keeps_failing_is_dead_lettered(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("engine bug")

    settings = msgspec.structs.replace(settings, max_deliveries=2)
    async with connected(settings) as client, running(client):
        await client.register(fixture("hello_world"))
        monkeypatch.setattr(Engine, "decide", broken)
        await client.start("examples/hello_world")
        async with asyncio.timeout(30):
            while (await client.bus.js.stream_info(DEAD_STREAM)).state.messages < 1:
                await asyncio.sleep(0.1)
        stored = await client.bus.js.get_msg(DEAD_STREAM, 1)
        assert stored.headers is not None
        assert "gave up after 2 deliveries" in stored.headers["Noetl-Reason"]
        assert "engine bug" in stored.headers["Noetl-Reason"]


async def test_a_command_that_keeps_failing_to_run_fails_its_step(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's side of the same policy: after `max_deliveries` it records the command
    as failed (instead of dead-lettering it), so the execution ends rather than hangs."""
    deliveries: list[int] = []

    async def broken(self: Runner, msg: Msg, command: CommandIssued) -> None:
        deliveries.append(msg.metadata.num_delivered)
        raise RuntimeError("store down")

    settings = msgspec.structs.replace(settings, max_deliveries=2)
    async with connected(settings) as client, running(client):
        await client.register(fixture("hello_world"))
        monkeypatch.setattr(Runner, "execute", broken)
        eid = await client.start("examples/hello_world")
        row = await client.wait(eid, timeout=60)
        assert row["status"] == "failed"
        assert deliveries == [1, 2]
        assert row["error"]["type"] == "delivery"
        assert "gave up after 2 deliveries: RuntimeError: store down" in row["error"]["message"]
