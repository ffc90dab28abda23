"""Runner pools end to end, with the mesh as separate processes on real NATS and PostgreSQL:
each command runs on a runner of its pool, a step whose pool has no live runner waits (and
`status` says so) until one starts, and tool kinds are routed by configuration."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from actors.mesh import missing_roles
from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import stop_gracefully
from tests.support.api import http_fixture  # noqa: F401  (fixture `http`)
from tests.support.cli import CLI, cli_env

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: pools_e2e
  path: tests/pools_e2e
workflow:
  - step: start
    tool: {kind: python, code: "result = 'light'"}
    next: [{step: crunch}]
  - step: crunch
    runner_pool: heavy
    tool: {kind: python, code: "result = 'heavy'"}
    next: [{step: back}]
  - step: back
    desc: the tool's pool wins over the step's
    runner_pool: heavy
    tool: {kind: python, runner_pool: default, code: "result = 'back'"}
    next: [{step: query}]
  - step: query
    desc: routed by NOETL_RUNNER_POOLS (duckdb=heavy)
    tool: {kind: duckdb, query: "SELECT 42 AS answer"}
    next: [{step: end}]
  - step: end
"""
EXPECTED = {"start": "default", "crunch": "heavy", "back": "default", "query": "heavy"}


def _env(settings: Settings) -> dict[str, str]:
    return cli_env(
        settings, NOETL_ACK_WAIT="5", NOETL_RECONCILE_EVERY="1", NOETL_RUNNER_POOLS="duckdb=heavy"
    )


def _up(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CLI, "up", *args],
        env=_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _cli_status(settings: Settings, eid: int) -> dict[str, Any]:
    proc = await asyncio.to_thread(
        subprocess.run,
        [CLI, "status", str(eid), "--json"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


async def _pool_live(client: Client, pool: str) -> None:
    async with asyncio.timeout(60):
        while await missing_roles(client.bus, [f"runner.{pool}"]):
            await asyncio.sleep(0.2)


async def test_each_step_runs_on_its_pool_and_waits_for_an_empty_one(
    settings: Settings, client: Client, http: TestClient[Any, Any], tmp_path: Path
) -> None:
    log = tmp_path / "mesh.log"
    procs = {
        "control": _up(settings, log, "--role", "catalog", "--role", "coordinator"),
        "default": _up(settings, log, "--role", "runner", "--pool", "default"),
    }
    try:
        await _pool_live(client, "default")
        async with asyncio.timeout(60):
            while await missing_roles(client.bus, ["catalog", "coordinator"]):
                await asyncio.sleep(0.2)
        reply = await client.register_content(PLAYBOOK, filename="pools_e2e.yaml")
        eid = await client.start(reply.path)

        # No heavy runner: the first step runs, the heavy one waits, visibly, and is kept.
        async with asyncio.timeout(90):
            while True:
                doc = await _cli_status(settings, eid)
                if doc["waiting_for_pool"]:
                    break
                await asyncio.sleep(0.3)
        assert doc["status"] == "running"
        assert doc["waiting_for_pool"] == {"crunch": "heavy"}
        assert {"step": "crunch", "status": "waiting for pool heavy"}.items() <= next(
            s for s in doc["step_states"] if s["step"] == "crunch"
        ).items()
        assert doc["steps"]["start"] == "light"
        api = await (await http.get(f"/api/executions/{eid}")).json()
        assert api["waiting_for_pool"] == {"crunch": "heavy"}
        console = await (await http.get(f"/api/console/executions/{eid}")).json()
        assert console["execution"]["waiting_for_pool"] == {"crunch": "heavy"}

        # A heavy runner starts later: the waiting command runs and the execution ends.
        procs["heavy"] = _up(settings, log, "--role", "runner", "--pool", "heavy")
        final = await client.wait(eid, timeout=120)
        assert final["status"] == "completed", (final, log.read_text()[-2000:])
        assert final["steps"]["crunch"] == "heavy" and final["steps"]["back"] == "back"
        done = await _cli_status(settings, eid)
        assert done["waiting_for_pool"] == {}

        # Who ran what: each command by a runner of its pool, that very process.
        pids = {pool: str(procs[pool].pid) for pool in ("default", "heavy")}
        started = {
            e["step"]: e["payload"]["runner"]
            for e in await client.store.list_events(eid)
            if e["event_type"] == "command.started"
        }
        assert set(started) == set(EXPECTED)
        for step, pool in EXPECTED.items():
            runner_pool, _host, pid = started[step].split("/")
            assert (runner_pool, pid) == (pool, pids[pool]), (step, started[step])
    finally:
        for proc in procs.values():
            stop_gracefully(proc)
    assert all(proc.returncode == 0 for proc in procs.values()), log.read_text()[-3000:]


def test_a_bad_pool_name_is_refused_at_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env["NOETL_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [CLI, "up", "--role", "runner", "--pool", "noetl.>"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "1 to 64 letters, digits" in proc.stderr and "'noetl.>'" in proc.stderr
    assert not (tmp_path / "nats").exists()  # refused before any server was started


CONCURRENT = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: pools_concurrency
  path: tests/pools_concurrency
workflow:
  - step: start
    loop: {in: [0, 1, 2, 3, 4, 5, 6, 7], iterator: i, mode: async, max_concurrency: 8}
    tool:
      kind: python
      args: {n: "{{ i }}"}
      code: |
        import time
        def main(n):
            time.sleep(0.5)
            return n
    next: [{step: end}]
  - step: end
"""


def _most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def test_each_runner_holds_no_more_than_its_own_concurrency(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "mesh.log"
    procs = [
        _up(settings, log, "--role", "catalog", "--role", "coordinator"),
        _up(settings, log, "--role", "runner", "--concurrency", "2"),
        _up(settings, log, "--role", "runner", "--concurrency", "2"),
    ]
    try:
        async with asyncio.timeout(60):
            while await missing_roles(client.bus, ["catalog", "coordinator", "runner.default"]):
                await asyncio.sleep(0.2)
        reply = await client.register_content(CONCURRENT, filename="pools_concurrency.yaml")
        final = await client.wait(await client.start(reply.path), timeout=120)
        assert final["status"] == "completed", (final, log.read_text()[-2000:])
        assert sorted(final["steps"]["start"]) == list(range(8))
        events = await client.store.list_events(int(final["execution_id"]))
    finally:
        for proc in procs:
            stop_gracefully(proc)
    began = {
        e["command_id"]: (e["payload"]["runner"], int(e["event_id"]) >> 22)
        for e in events
        if e["event_type"] == "command.started"
    }
    spans: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        if e["event_type"] == "command.completed":
            runner, start = began[e["command_id"]]
            spans.setdefault(runner, []).append((start, int(e["event_id"]) >> 22))
    # Both runners took part, and neither ever held more than the two it may.
    assert len(spans) == 2 and sum(map(len, spans.values())) == 8
    assert all(_most_at_once(s) <= 2 for s in spans.values()), spans
