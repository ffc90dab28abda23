"""`NOETL_RESULT_MAX_MB` on a real mesh: a step whose result's JSON is over the cap fails
with the size and the limit in its error, checked where the result is encoded (the python
worker, the runner for every other tool), and the runner goes on serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import Settings
from tests.integration.conftest import one_step, run

MIB = 1024 * 1024


@pytest.fixture
def settings(nats_url: str, pg_dsn: str, noetl_home: Path) -> Settings:
    """The suite's settings with a cap of 1 MiB."""
    return Settings(
        nats_url=nats_url,
        pg_dsn=pg_dsn,
        home=noetl_home,
        ack_wait=2.0,
        reconcile_every=1.0,
        result_max_mb=1,
    )


async def test_a_result_over_the_cap_fails_its_step(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    # 300,000 numbers are 1,988,891 bytes of JSON: over 1 MiB (and over the 256 KiB above
    # which a result is stored as a blob).
    huge = one_step(tmp_path, "huge", "{kind: python, code: 'result = list(range(300000))'}")
    doc = await run(client, huge)
    assert doc["status"] == "failed", doc
    error = doc["steps"]["start"]["error"]
    assert error["type"] == "result_too_large"
    assert (error["size"], error["limit"]) == (1_988_891, MIB)
    assert (
        "1,988,891 bytes (1.9 MiB) as JSON, over the limit of 1,048,576 bytes" in error["message"]
    )
    assert "NOETL_RESULT_MAX_MB" in error["message"]
    assert await client.store.pool.fetchval("SELECT count(*) FROM noetl.blob") == 0

    # Every other tool's result is measured by the runner, before its sink writes it and
    # before it is masked or stored.
    out = tmp_path / "rows.json"
    query = "select range as n, 'row ' || range as label from range(100000)"
    rows = tmp_path / "rows.yaml"
    rows.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: rows}\nworkflow:\n"
        f'  - step: start\n    tool: {{kind: duckdb, query: "{query}"}}\n'
        f'    sink: {{tool: {{kind: file, path: "{out}"}}}}\n'
    )
    doc = await run(client, rows)
    assert doc["status"] == "failed", doc
    error = doc["steps"]["start"]["error"]
    assert error["type"] == "result_too_large" and error["size"] > MIB, error
    assert not out.exists()
    assert await client.store.pool.fetchval("SELECT count(*) FROM noetl.blob") == 0
    rows.write_text(rows.read_text().replace("range(100000)", "range(1000)"))
    assert (await run(client, rows))["status"] == "completed"
    assert out.exists()  # the same step under the cap writes its sink

    # Under the cap, a large result is stored as a blob as ever: the runner serves on.
    fits = one_step(tmp_path, "fits", "{kind: python, code: 'result = list(range(100000))'}")
    doc = await run(client, fits)
    assert doc["status"] == "completed", doc
    assert doc["result"] == list(range(100_000))
    assert await client.store.pool.fetchval("SELECT count(*) FROM noetl.blob") == 1
