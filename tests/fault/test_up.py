"""`noetl-runtime up` serves the REST API next to the actors and stops cleanly; `--role`
splits the mesh over processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from noetl.client import Client
from noetl.config import Settings
from noetl.store import Store
from tests.fault.harness import (
    assert_db_clean,
    events_of,
    kill_hard,
    register_when_up,
    start_mesh,
    stop_gracefully,
    wait_until,
)
from tests.integration.conftest import fixture
from tests.support.services import free_port


async def test_up_serves_the_api_and_drains_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    proc = start_mesh(settings, log, NOETL_API_PORT=str(port), NOETL_API_TOKEN="t0ken-for-tests")
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/health") as health:
                            assert health.status == 200
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{port}/api/executions") as denied:
                assert denied.status == 401
            headers = {"Authorization": "Bearer t0ken-for-tests"}
            async with http.get(
                f"http://127.0.0.1:{port}/api/executions", headers=headers
            ) as listed:
                assert listed.status == 200 and await listed.json() == []
        assert f"REST API on 0.0.0.0:{port}" in log.read_text()  # a token: every address
        assert stop_gracefully(proc) == 0, log.read_text()
        store = await Store.connect(str(settings.pg_dsn))
        try:
            await assert_db_clean(store)
        finally:
            await store.close()
    finally:
        kill_hard(proc)


async def test_roles_in_separate_processes(settings: Settings, tmp_path: Path) -> None:
    """Catalog and coordinator in one process, the runner in another: nothing runs a command
    until a runner is up, then the execution completes."""
    client = await Client.connect(settings)
    metrics = {"deciders": free_port(), "runner": free_port()}
    deciders = start_mesh(
        settings,
        tmp_path / "deciders.log",
        "catalog",
        "coordinator",
        NOETL_METRICS_PORT=str(metrics["deciders"]),
    )
    runner = None
    try:
        reply = await register_when_up(client, fixture("hello_world"))
        eid = await client.start(reply.path, version=reply.version)

        async def issued() -> bool:
            return any(r["event_type"] == "command.issued" for r in await events_of(client, eid))

        await wait_until(issued)
        await asyncio.sleep(1.0)
        kinds = {r["event_type"] for r in await events_of(client, eid)}
        assert "command.started" not in kinds  # no runner role anywhere yet
        runner = start_mesh(
            settings, tmp_path / "runner.log", "runner", NOETL_METRICS_PORT=str(metrics["runner"])
        )
        doc = await client.wait(eid, timeout=90)
        assert doc["status"] == "completed", doc
        assert doc["result"] == {"final": "Hello World!", "length": 12}
        assert "mesh up (catalog, coordinator)" in (tmp_path / "deciders.log").read_text()
        assert "mesh up (runner)" in (tmp_path / "runner.log").read_text()
        assert "REST API" not in (tmp_path / "runner.log").read_text()
        # Without an API in the process, each serves its own series on NOETL_METRICS_PORT.
        async with aiohttp.ClientSession() as session:
            scraped = {}
            for role, port in metrics.items():
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    scraped[role] = await resp.text()
        assert 'noetl_executions_ended_total{status="completed"} 1.0' in scraped["deciders"]
        assert 'noetl_step_duration_seconds_count{kind="python"}' in scraped["runner"]
        assert stop_gracefully(runner) == 0 and stop_gracefully(deciders) == 0
        await assert_db_clean(client.store)
    finally:
        if runner is not None:
            kill_hard(runner)
        kill_hard(deciders)
        await client.close()
