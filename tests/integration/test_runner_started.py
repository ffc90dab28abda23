"""`command.started` on a real mesh: a fast step's start rides in its outcome's transaction,
a slow step's start is recorded on its own while the tool runs."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from actors import runner
from actors.mesh import Mesh
from noetl.client import Client
from noetl.store import views
from noetl.timeline import Timeline, log_lines, short_duration
from tests.integration.conftest import one_step

_ROWS = """
SELECT event_type, xmin::text AS tx, payload FROM noetl.event
WHERE execution_id = $1 AND event_type LIKE 'command.%' AND event_type <> 'command.issued'
ORDER BY event_id
"""


async def test_a_fast_step_records_start_and_outcome_in_one_transaction(
    client: Client, mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bound no loaded machine can miss, so the test asserts the path, not a speed.
    monkeypatch.setattr(runner, "STARTED_WITH_OUTCOME_WITHIN", 30.0)
    reply = await client.register(one_step(tmp_path, "fast", "{kind: python, code: 'result = 1'}"))
    eid = await client.start(reply.path)
    doc = await client.wait(eid, timeout=60)
    assert doc["status"] == "completed", doc
    rows = await client.store.pool.fetch(_ROWS, eid)
    assert [r["event_type"] for r in rows] == ["command.started", "command.completed"]
    assert rows[0]["tx"] == rows[1]["tx"]
    assert rows[0]["payload"]["runner"].endswith(f"/{os.getpid()}")  # this process's runner


async def test_a_fast_step_reports_its_true_duration(
    client: Client, mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One transaction for start and outcome (forced, whatever the load): the rows share
    # their time, so the duration must come from what the runner measured.
    monkeypatch.setattr(runner, "STARTED_WITH_OUTCOME_WITHIN", 30.0)
    code = "import time\\ntime.sleep(0.005)\\nresult = 1"
    reply = await client.register(one_step(tmp_path, "timed", f'{{kind: python, code: "{code}"}}'))
    before = time.time()
    eid = await client.start(reply.path)
    doc = await client.wait(eid, timeout=60)
    wall = time.time() - before
    assert doc["status"] == "completed", doc
    rows = await client.store.pool.fetch(_ROWS, eid)
    assert rows[0]["tx"] == rows[1]["tx"]
    started, outcome = rows[0]["payload"], rows[1]["payload"]
    assert before <= started["started_at"] <= before + wall
    assert 0.005 <= outcome["seconds"] <= wall
    timeline = Timeline()
    events = await views.events_after(client.store.pool, eid, 0)
    timeline.feed(events)
    ran = timeline.steps["start"].ran
    assert ran is not None and 0.005 <= ran <= timeline.steps["start"].seconds() + 0.001
    done = f"done in {short_duration(outcome['seconds'])}"
    assert any(line.endswith(done) for line in log_lines(events))


async def test_a_slow_step_shows_its_start_while_it_runs(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    code = "import time\\ntime.sleep(3)\\nresult = 1"
    reply = await client.register(one_step(tmp_path, "slow", f'{{kind: python, code: "{code}"}}'))
    eid = await client.start(reply.path)
    async with asyncio.timeout(30):
        while not (rows := await client.store.pool.fetch(_ROWS, eid)):
            await asyncio.sleep(0.05)
    # Seen alone, before any outcome: what status, the console and the API show meanwhile.
    assert [r["event_type"] for r in rows] == ["command.started"]
    assert rows[0]["payload"]["attempt"] == 1
    doc = await client.wait(eid, timeout=60)
    assert doc["status"] == "completed", doc
    rows = await client.store.pool.fetch(_ROWS, eid)
    assert [r["event_type"] for r in rows] == ["command.started", "command.completed"]
    assert rows[0]["tx"] != rows[1]["tx"]
