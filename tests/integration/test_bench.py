"""`noetl-runtime bench --quick --json` runs every default workload and prints the document
whose keys are the contract (its figures are never judged here: speed belongs in the bench)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import asyncpg
import msgspec

from actors.mesh import missing_roles
from noetl.bench.model import Document
from noetl.client import Client
from noetl.config import Settings
from tests.support.cli import CLI

CONTRACT = {
    "floors": {"pg_commit_ms", "js_publish_ack_ms"},
    "chain": {"per_step_ms", "per_step_over_floor"},
    "fanout": {"wall_s"},
    "throughput": {"executions_per_s", "steps_per_s"},
    "replay": {"seconds"},
    "history": {"ratio"},
    "machine": {"cores", "python", "nats", "postgres"},
}


async def test_quick_json_document_has_the_contract_keys(
    settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env.update(NOETL_NATS_URL=str(settings.nats_url), NOETL_PG_DSN=str(settings.pg_dsn))
    proc = await asyncio.to_thread(
        subprocess.run,
        [CLI, "bench", "--quick", "--json"],
        env=env,
        cwd=tmp_path,  # no baseline here
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(proc.stdout)
    assert set(document) == {*CONTRACT, "quick"}
    assert document["quick"] is True
    for key, fields in CONTRACT.items():
        assert fields <= set(document[key]), (key, document[key])
    assert set(document["chain"]["per_step_ms"]) == {"p50", "min", "max"}
    typed = msgspec.json.decode(proc.stdout, type=Document)
    assert typed.chain is not None and typed.floors is not None
    spread = typed.chain.per_step_ms
    assert spread.min <= spread.p50 <= spread.max
    assert typed.replay is not None and typed.replay.events > 1000
    assert typed.history is not None and typed.history.events == 100_000
    assert typed.machine.cores >= 1 and typed.machine.postgres[0].isdigit()
    # The scratch database is gone, and so is the bench's mesh.
    conn = await asyncpg.connect(str(settings.pg_dsn))
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'noetl_bench_%'"
        )
    finally:
        await conn.close()
    assert left == 0


async def test_chosen_workloads_and_a_mesh_already_running_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env.update(NOETL_NATS_URL=str(settings.nats_url), NOETL_PG_DSN=str(settings.pg_dsn))
    proc = await asyncio.to_thread(
        subprocess.run,
        [CLI, "bench", "--quick", "--json", "--workload", "replay", "--workload", "scaling"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(proc.stdout)
    assert set(document) == {"machine", "quick", "replay", "scaling"}
    # Every point of the scaling grid measured: 1 and 2 coordinator hosts, 1 to 3 runners.
    rates = document["scaling"]["executions_per_s"]
    assert set(rates) == {f"coordinators_{c}_runners_{r}" for c in (1, 2) for r in (1, 2, 3)}
    assert all(rate > 0 for rate in rates.values())
    mesh = await asyncio.create_subprocess_exec(
        CLI, "up", "--role", "runner", env=env, cwd=tmp_path
    )
    client = await Client.connect(settings)
    try:
        async with asyncio.timeout(60):
            while await missing_roles(client.bus, ["runner"]):
                await asyncio.sleep(0.2)
        refused = await asyncio.to_thread(
            subprocess.run,
            [CLI, "bench", "--quick", "--workload", "floors"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2, refused.stderr
        assert "a mesh is already running on this NATS server" in refused.stderr
    finally:
        await client.close()
        mesh.terminate()
        await asyncio.wait_for(mesh.wait(), 60)
