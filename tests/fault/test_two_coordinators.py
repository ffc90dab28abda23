"""Two coordinator hosts share every partition: optimistic concurrency keeps each decision
single, whichever host handles a message."""

from __future__ import annotations

import asyncio
from collections import Counter

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import assert_db_clean
from tests.integration.conftest import fixture


async def test_two_hosts_run_loops_without_duplicating_decisions(settings: Settings) -> None:
    first = await Client.connect(settings, relaxed=True)
    second = await Client.connect(settings, relaxed=True)
    meshes = [
        Mesh(first.bus, first.store, first.settings),
        Mesh(second.bus, second.store, second.settings, ["coordinator", "runner"]),
    ]
    for mesh in meshes:
        await mesh.start()
    try:
        reply = await first.register(fixture("loop_async"))
        ids = [await first.start(reply.path, version=reply.version) for _ in range(6)]
        docs = await asyncio.gather(*(first.wait(eid, timeout=120) for eid in ids))
        for eid, doc in zip(ids, docs, strict=True):
            assert doc["status"] == "completed", doc
            assert doc["result"] == {"sum_of_squares": 385, "count": 10}
            rows = await first.store.list_events(eid)
            kinds = Counter(r["event_type"] for r in rows)
            assert kinds["step.item"] == 10 and kinds["step.completed"] == 2
            versions = [
                v
                for (v,) in await first.store.pool.fetch(
                    "SELECT version FROM noetl.event WHERE execution_id = $1 "
                    "AND version IS NOT NULL ORDER BY version",
                    eid,
                )
            ]
            assert versions == list(range(1, len(versions) + 1))
        await assert_db_clean(first.store)
    finally:
        for mesh in meshes:
            await mesh.stop()
        await first.close()
        await second.close()
