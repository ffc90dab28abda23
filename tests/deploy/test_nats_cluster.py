"""Everything works unchanged on a three-node JetStream cluster, through the loss of a node.

Three nats-server processes with cluster routes on loopback; streams with three replicas
(NOETL_JS_REPLICAS=3); the mesh split over three processes, each given every server in
NOETL_NATS_URL. One node is SIGKILLed while 200 executions run and restarted later: every
execution completes, once, and no step or command completion is recorded twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import asyncpg
import pytest

from noetl.bus import CMD_STREAM, EXEC_STREAM, START_STREAM
from noetl.client import Client
from noetl.config import Settings
from noetl.errors import ConfigError
from tests.deploy.nats_cluster import start_cluster
from tests.support.cli import CLI
from tests.support.services import stop_process

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks"
# (playbook, executions, expected result)
MIX = [
    ("hello_world", 100, {"final": "Hello World!", "length": 12}),
    ("control_flow_workbook", 50, {"ran": ["A", "B"]}),
    ("loop_async", 50, {"sum_of_squares": 385, "count": 10}),
]


def test_stream_replicas_are_bounded_by_jetstream() -> None:
    assert Settings.from_env({"NOETL_JS_REPLICAS": "3"}).js_replicas == 3
    assert Settings.from_env({}).js_replicas == 1
    with pytest.raises(ConfigError, match="NOETL_JS_REPLICAS"):
        Settings.from_env({"NOETL_JS_REPLICAS": "6"})


@pytest.mark.slow
async def test_a_cluster_loses_and_regains_a_node_mid_run(pg_dsn: str, tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "nats")
    procs: list[subprocess.Popen[bytes]] = []
    client: Client | None = None
    try:
        await cluster.wait_ready(replicas=3)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
        env.update(
            NOETL_NATS_URL=cluster.url,
            NOETL_PG_DSN=pg_dsn,
            NOETL_JS_REPLICAS="3",
            NOETL_ACK_WAIT="5",
            NOETL_RECONCILE_EVERY="2",
            NOETL_PARTITIONS="4",
        )
        procs += [
            _start_mesh(env, tmp_path, i, roles)
            for i, roles in enumerate(
                (["catalog", "coordinator"], ["coordinator", "runner"], ["runner"])
            )
        ]
        settings = Settings(
            nats_url=cluster.url, pg_dsn=pg_dsn, js_replicas=3, home=tmp_path / "client"
        )
        client = await Client.connect(settings)
        # Every process up before the work starts: a busy cluster answers the mesh's
        # declarations slowly, and the node must die under a whole mesh, not a starting one.
        await _until_up(procs, tmp_path)
        for stream in (EXEC_STREAM, CMD_STREAM, START_STREAM):
            info = await client.bus.js.stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2

        expected: dict[int, dict[str, object]] = {}
        async with asyncio.timeout(60):
            replies = {name: await _register(client, name) for name, _, _ in MIX}
        for name, count, result in MIX:
            path, version = replies[name]
            for _ in range(count):
                expected[await client.start(path, version=version)] = result

        # A node dies with work in flight: its clients (this one at least) move to the
        # others; its stream and consumer replicas (R3: one of each) are gone until it
        # comes back.
        connected = client.bus.nc.connected_url
        assert connected is not None
        (victim,) = [node for node in cluster.nodes if node.port == connected.port]
        await _until_completed(pg_dsn, at_least=20)
        cluster.kill(victim)
        await _until_completed(pg_dsn, at_least=120)
        cluster.start(victim)

        async with asyncio.timeout(600):
            docs = await asyncio.gather(*(client.wait(eid) for eid in expected))
        for doc in docs:
            assert doc["status"] == "completed", doc
            assert doc["result"] == expected[int(doc["execution_id"])], doc
        assert await _duplicates(pg_dsn) == []
        assert await _count(pg_dsn, "execution.completed") == len(expected)
        assert all(proc.poll() is None for proc in procs), f"a mesh process died:{_logs(tmp_path)}"
    finally:
        if client is not None:
            await client.close()
        for proc in procs:
            stop_process(proc, signal.SIGKILL)
        cluster.stop()


def _start_mesh(
    env: dict[str, str], base: Path, i: int, roles: list[str]
) -> subprocess.Popen[bytes]:
    """`noetl-runtime up` with `roles`, its own NOETL_HOME and log under `base`."""
    home = base / f"home{i}"
    home.mkdir()
    return subprocess.Popen(
        [CLI, "up", *(a for role in roles for a in ("--role", role))],
        env={**env, "NOETL_HOME": str(home)},
        stdout=(base / f"mesh{i}.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _until_up(procs: list[subprocess.Popen[bytes]], base: Path) -> None:
    """Until each mesh process says its actors are up; fails with the logs if one exits."""
    async with asyncio.timeout(180):
        while True:
            dead = [i for i, proc in enumerate(procs) if proc.poll() is not None]
            assert not dead, f"mesh process {dead} exited while starting:{_logs(base)}"
            logs = [(base / f"mesh{i}.log").read_text(errors="replace") for i in range(len(procs))]
            if all("noetl: mesh up" in log for log in logs):
                return
            await asyncio.sleep(0.5)


def _logs(base: Path) -> str:
    """The tail of every mesh process's log, for a failure's message."""
    return "".join(
        f"\n--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
        for log in sorted(base.glob("mesh*.log"))
    )


async def _register(client: Client, name: str) -> tuple[str, int]:
    while True:
        try:
            reply = await client.register(FIXTURES / name / f"{name}.yaml")
            return reply.path, reply.version
        except Exception:  # no catalog actor answers yet
            await asyncio.sleep(0.5)


async def _count(dsn: str, event_type: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM noetl.event WHERE event_type = $1", event_type
        )
        return count
    finally:
        await conn.close()


async def _until_completed(dsn: str, at_least: int) -> None:
    async with asyncio.timeout(300):
        while await _count(dsn, "execution.completed") < at_least:
            await asyncio.sleep(0.5)


async def _duplicates(dsn: str) -> list[tuple[object, ...]]:
    """Completions recorded twice: a step of an execution, or a command."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT execution_id, step, count(*) FROM noetl.event "
            "WHERE event_type = 'step.completed' GROUP BY 1, 2 HAVING count(*) > 1 "
            "UNION ALL "
            "SELECT execution_id, command_id, count(*) FROM noetl.event "
            "WHERE event_type IN ('command.completed', 'command.failed') "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        )
        return [tuple(row) for row in rows]
    finally:
        await conn.close()
