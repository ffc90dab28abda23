"""`noetl-runtime up` serves the REST API next to the actors and stops cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from noetl.config import Settings
from noetl.store import Store
from tests.fault.harness import assert_db_clean, kill_hard, start_mesh, stop_gracefully
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
