"""JetStream is a delivery mechanism, not a store: purge the command stream mid-run and the
reconciler re-derives the lost work from PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from actors.mesh import Mesh
from noetl.bus import CMD_STREAM, EXEC_STREAM
from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import assert_db_clean, events_of, wait_until
from tests.support.mesh import connected, running
from tests.support.playbooks import write_playbook


async def test_purged_command_is_republished_by_the_reconciler(
    settings: Settings, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(
        settings, dedup_window=1.0, ack_wait=1.0, reconcile_every=0.5
    )
    path = write_playbook(
        tmp_path,
        "two",
        """
        - step: start
          tool: {kind: python, code: "result = 1"}
          next: [second]
        - step: second
          tool: {kind: python, code: "result = 2"}
        """,
    )
    async with connected(settings) as client, running(client, ["catalog", "coordinator"]):
        reply = await client.register(path)
        eid = await client.start(reply.path)

        async def issued() -> bool:
            return any(r["event_type"] == "command.issued" for r in await events_of(client, eid))

        await wait_until(issued)
        await client.bus.js.purge_stream(CMD_STREAM)  # the command is gone from JetStream
        async with running(client, ["runner"]):
            doc = await asyncio.wait_for(client.wait(eid), timeout=60)
            assert doc["status"] == "completed", doc
            assert doc["result"] == 2
            await assert_db_clean(client.store)


async def test_purged_outcome_is_republished_by_the_reconciler(
    settings: Settings, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(
        settings, dedup_window=1.0, ack_wait=1.0, reconcile_every=0.5
    )
    client = await Client.connect(settings)
    runner_side = await Client.connect(settings, relaxed=True)
    coordinator = Mesh(client.bus, client.store, client.settings, ["catalog", "coordinator"])
    runner = Mesh(runner_side.bus, runner_side.store, runner_side.settings, ["runner"])
    await coordinator.start()
    await runner.start()
    try:
        path = write_playbook(
            tmp_path,
            "slow",
            """
            - step: start
              tool: {kind: python, code: "import time\\ntime.sleep(1.5)\\nresult = 1"}
              next: [second]
            - step: second
              tool: {kind: python, code: "result = 2"}
            """,
        )
        reply = await client.register(path)
        eid = await client.start(reply.path)

        async def started() -> bool:
            return any(r["event_type"] == "command.started" for r in await events_of(client, eid))

        await wait_until(started)
        await coordinator.stop()  # nobody consumes the outcome now

        async def recorded() -> bool:
            return any(r["event_type"] == "command.completed" for r in await events_of(client, eid))

        await wait_until(recorded)
        await asyncio.sleep(0.3)  # the outcome message is in the stream...
        await client.bus.js.purge_stream(EXEC_STREAM)  # ...and now it is lost
        await client.close()
        client = await Client.connect(settings)
        coordinator = Mesh(client.bus, client.store, client.settings, ["catalog", "coordinator"])
        await coordinator.start()
        doc = await asyncio.wait_for(client.wait(eid), timeout=60)
        assert doc["status"] == "completed", doc
        assert doc["steps"] == {"start": 1, "second": 2}
        await assert_db_clean(client.store)
    finally:
        await runner.stop()
        await coordinator.stop()
        await runner_side.close()
        await client.close()
