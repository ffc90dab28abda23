"""Drill: PostgreSQL stopped for 5 s and restarted, a connection terminated
(`pg_terminate_backend`) exactly inside a decision's commit, and every mesh connection
terminated again and again while decisions commit, under a mix of playbooks on a mesh of
one process per role."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg

from noetl.client import Client
from noetl.config import Settings
from noetl.servers.postgres import start_postgres
from tests.fault.commit_hold import CommitHold
from tests.fault.drills import Drill, Mix, drill_mesh, timed
from tests.fault.harness import assert_db_clean, count_events, wait_until
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


async def terminate_inside_a_commit(client: Client, dsn: str, mix: Mix, drill: Drill) -> None:
    """Terminate the backend committing the decision that starts step `s4` of a chain,
    while it sleeps inside the commit (its events inserted, not committed): the coordinator
    decides again, the same decision is held again with none of its events committed, and
    once let go it is committed once, whole."""
    hold = await CommitHold.install(dsn)
    try:
        eid = await client.start("slow_chain")
        mix.expected[eid] = {"done": True}
        await hold.hold(eid, "s4")
        first = await hold.held()
        assert first.execution_id == eid and first.events >= 2, first
        await hold.terminate(first)
        began = time.monotonic()
        again = await hold.held(other_than=first.pid)
        drill.faults.append(
            f"terminated inside a commit of {first.events} events (decided again after "
            f"{time.monotonic() - began:.1f} s)"
        )
        assert (again.execution_id, again.version, again.events) == (
            first.execution_id,
            first.version,
            first.events,
        )
        assert await hold.committed(first) == 0
        await hold.release()

        async def committed_whole() -> bool:
            return await hold.committed(first) == first.events

        await wait_until(committed_whole)
        assert (await count_events(client, eid, "step.started"))["s4"] == 1
    finally:
        await hold.uninstall()


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
    mesh_log = tmp_path / "mesh.log"
    drill = Drill(name="postgres restart + terminated sessions")
    try:
        async with drill_mesh(settings, mesh_log) as (client, procs):
            mix = Mix(client, api, tmp_path, shared_path)
            with timed(drill):
                await mix.register()
                await mix.wave()
                await terminate_inside_a_commit(client, server.dsn("drill"), mix, drill)
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
        server.stop()
