"""Drill: PostgreSQL stopped for 5 s and restarted, and every mesh connection terminated
(`pg_terminate_backend`) again and again while decisions commit, under a mix of playbooks
on a mesh of one process per role."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg

from noetl.client import Client
from noetl.config import Settings
from noetl.servers.postgres import start_postgres
from tests.fault.drills import Drill, Mix, start_roles, timed, until_up
from tests.fault.harness import assert_db_clean, kill_hard
from tests.support.http_api import HttpApi
from tests.support.services import (
    TEST_PG_SETTINGS,
    create_database,
    start_test_postgres,
    stop_process,
)

OUTAGE = 5.0
TERMINATIONS = 10
_TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = 'drill' AND pid <> pg_backend_pid()
"""


async def terminate_backends(admin_dsn: str) -> int:
    """Terminate every session on the drill's database; how many there were."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        return int(await conn.fetchval(_TERMINATE))
    finally:
        await conn.close()


async def test_postgres_restarted_and_connections_terminated(
    nats_url: str, noetl_home: Path, api: HttpApi, tmp_path: Path, shared_path: Path
) -> None:
    server = start_test_postgres(tmp_path / "pg-base")
    process = server.process
    assert process is not None
    await create_database(server.admin_dsn, "drill")
    settings = Settings(
        nats_url=nats_url,
        pg_dsn=server.dsn("drill"),
        home=noetl_home,
        ack_wait=2.0,
        reconcile_every=1.0,
    )
    client = await Client.connect(settings)
    mesh_log = tmp_path / "mesh.log"
    procs = start_roles(settings, mesh_log)
    drill = Drill(name="postgres restart + terminated sessions")
    mix = Mix(client, api, tmp_path, shared_path)
    try:
        await until_up(procs, mesh_log)
        with timed(drill):
            await mix.register()
            await mix.wave()
            for _ in range(TERMINATIONS):
                await asyncio.sleep(0.4)
                killed = await terminate_backends(server.admin_dsn)
                drill.faults.append(f"terminated {killed} sessions")
            # The test's own client is not under test: it reconnects before going on.
            await client.store.pool.expire_connections()
            await mix.wave()
            await asyncio.sleep(1.5)
            stop_process(process, signal.SIGINT, grace=30.0)
            drill.faults.append(f"postgres down {OUTAGE:g} s")
            await asyncio.sleep(OUTAGE)
            process = start_postgres(
                process.data_dir,
                password=process.password,
                port=process.port,
                log=process.log_path,
                settings=TEST_PG_SETTINGS,
            )
            server.process = process
            await client.store.pool.expire_connections()
            await mix.wave()
            await mix.assert_all_ended_as_expected()
            drill.executions = len(mix.expected)
            await assert_db_clean(client.store)
            assert all(p.poll() is None for p in procs.values()), mesh_log.read_text()[-3000:]
    finally:
        for proc in procs.values():
            kill_hard(proc)
        await client.close()
        server.stop()
