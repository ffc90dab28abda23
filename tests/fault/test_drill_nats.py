"""Drill: the NATS server (JetStream on disk) stopped for 5 s and restarted, twice, while a
mix of playbooks runs on a mesh of one process per role."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from noetl.config import Settings
from noetl.servers.nats import start_nats
from tests.fault.drills import Drill, Mix, drill_mesh, timed
from tests.fault.harness import assert_db_clean
from tests.support.http_api import HttpApi
from tests.support.services import stop_process

OUTAGE = 5.0


async def test_nats_stopped_and_restarted_twice(
    pg_dsn: str, noetl_home: Path, api: HttpApi, tmp_path: Path, shared_path: Path
) -> None:
    store, log = tmp_path / "nats" / "store", tmp_path / "nats.log"
    auth = ("noetl", secrets.token_urlsafe(24))
    server = start_nats(store, log=log, auth=auth)
    settings = Settings(
        nats_url=server.url, pg_dsn=pg_dsn, home=noetl_home, ack_wait=2.0, reconcile_every=1.0
    )
    mesh_log = tmp_path / "mesh.log"
    drill = Drill(name="nats restart x2")
    try:
        async with drill_mesh(settings, mesh_log) as (client, procs):
            mix = Mix(client, api, tmp_path, shared_path)
            with timed(drill):
                await mix.register()
                for _ in range(2):
                    await mix.wave()
                    await asyncio.sleep(1.5)
                    stop_process(server)
                    drill.faults.append(f"nats down {OUTAGE:g} s")
                    await asyncio.sleep(OUTAGE)
                    server = start_nats(store, port=server.port, log=log, auth=auth)
                await mix.wave()
                await mix.assert_all_ended_as_expected()
                drill.executions = len(mix.expected)
                await assert_db_clean(client.store)
                assert all(p.poll() is None for p in procs.values()), mesh_log.read_text()[-3000:]
    finally:
        stop_process(server)
