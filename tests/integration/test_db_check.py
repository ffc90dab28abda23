"""`db check` on a real event table: clean after real runs, and each invariant reported when
rows that break it are written into the table directly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner

from actors.mesh import Mesh
from noetl.cli import main
from noetl.client import Client
from noetl.keys import command_issued_key, new_execution_id
from noetl.store.check import Invariant, check_events
from tests.integration.conftest import fixture, run
from tests.support.cli import CLI

FAN_IN = textwrap.dedent("""
    apiVersion: noetl.io/v2
    kind: Playbook
    metadata: {name: fan_in}
    workflow:
      - step: start
        tool: {kind: python, code: "result = 1"}
        next: [a, b]
      - step: a
        tool: {kind: python, code: "result = 2"}
        next: [join]
      - step: b
        tool: {kind: python, code: "result = 3"}
        next: [join]
      - step: join
        tool: {kind: python, code: "result = 4"}
""")


async def _copy(pool: asyncpg.Pool, source: int) -> int:
    """A copy of an execution's events and row under a new id (command ids follow)."""
    target = new_execution_id()
    await pool.execute(
        """
        INSERT INTO noetl.event (execution_id, version, event_type, step, command_id,
                                 dedup_key, parent_execution_id, status, payload, error,
                                 created_at)
        SELECT $2, version, event_type, step, replace(command_id, $3, $4),
               replace(dedup_key, $3, $4), parent_execution_id, status, payload, error,
               created_at
        FROM noetl.event WHERE execution_id = $1
        """,
        source,
        target,
        str(source),
        str(target),
    )
    await pool.execute(
        """
        INSERT INTO noetl.execution (execution_id, path, version, status, workload, result,
                                     error, parent_execution_id, started_at, ended_at)
        SELECT $2, path, version, status, workload, result, error, parent_execution_id,
               started_at, ended_at
        FROM noetl.execution WHERE execution_id = $1
        """,
        source,
        target,
    )
    return target


async def _make_room(pool: asyncpg.Pool, eid: int, version: int) -> None:
    """Shift versions >= `version` up by one (through negatives: the constraint is immediate)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE noetl.event SET version = -version WHERE execution_id = $1 AND version >= $2",
            eid,
            version,
        )
        await conn.execute(
            "UPDATE noetl.event SET version = -version + 1 WHERE execution_id = $1 AND version < 0",
            eid,
        )


async def _insert(pool: asyncpg.Pool, eid: int, **columns: Any) -> None:
    names = ["execution_id", *columns]
    marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    await pool.execute(
        f"INSERT INTO noetl.event ({', '.join(names)}) VALUES ({marks})", eid, *columns.values()
    )


async def _version_of(pool: asyncpg.Pool, eid: int, event_type: str, step: str | None) -> int:
    version = await pool.fetchval(
        "SELECT version FROM noetl.event WHERE execution_id = $1 AND event_type = $2 "
        "AND step IS NOT DISTINCT FROM $3 AND version IS NOT NULL ORDER BY version LIMIT 1",
        eid,
        event_type,
        step,
    )
    assert version is not None, (event_type, step)
    return int(version)


def _cli(client: Client, *args: str) -> tuple[int, str]:
    """`noetl-runtime --nats-url … --pg-dsn … db check ARGS` in this process."""
    settings = client.settings
    assert settings.nats_url is not None and settings.pg_dsn is not None
    result = CliRunner().invoke(
        main,
        ["--nats-url", settings.nats_url, "--pg-dsn", settings.pg_dsn, "db", "check", *args],
    )
    return result.exit_code, result.output


@pytest.fixture
async def base(client: Client, mesh: Mesh, tmp_path: Path) -> int:
    """A real, clean run of a fan-out and join."""
    path = tmp_path / "fan_in.yaml"
    path.write_text(FAN_IN)
    doc = await run(client, path)
    assert doc["status"] == "completed", doc
    return int(doc["execution_id"])


async def test_real_runs_are_clean(client: Client, mesh: Mesh, base: int) -> None:
    for name in ("hello_world", "loop_async", "control_flow_workbook", "error_routing"):
        doc = await run(client, fixture(name))
        assert doc["status"] in ("completed", "failed"), doc
    copy = await _copy(client.store.pool, base)
    report = await check_events(client.store.pool, settle=0)
    assert report.violations == [] and report.executions == 6
    assert (await check_events(client.store.pool, copy, settle=0)).clean
    code, output = await asyncio.to_thread(_cli, client, "--json", "--settle", "0")
    assert code == 0, output
    assert json.loads(output) == {"clean": True, "executions": 6, "violations": []}
    # The installed entry point too, as an operator runs it.
    settings = client.settings
    server = ["--nats-url", str(settings.nats_url), "--pg-dsn", str(settings.pg_dsn)]
    proc = await asyncio.to_thread(
        subprocess.run,
        [CLI, *server, "db", "check", "--execution", str(base)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "clean: no violation in 1 execution(s)" in proc.stdout


async def _step_ended_twice(pool: asyncpg.Pool, eid: int) -> None:
    ended = await _version_of(pool, eid, "step.completed", "a")
    await _make_room(pool, eid, ended + 1)
    await _insert(
        pool,
        eid,
        version=ended + 1,
        event_type="step.failed",
        step="a",
        dedup_key="step.failed:a:1",
        status="failed",
        payload={"routes": []},
        error={"message": "injected"},
    )


async def _command_two_outcomes(pool: asyncpg.Pool, eid: int) -> None:
    command = await pool.fetchval(
        "SELECT command_id FROM noetl.event WHERE execution_id = $1 "
        "AND event_type = 'command.completed' AND step = 'b'",
        eid,
    )
    await _insert(
        pool,
        eid,
        event_type="command.failed",
        step="b",
        command_id=command,
        dedup_key=f"injected:{command}",
        status="failed",
        error={"message": "injected"},
    )


async def _command_without_outcome(pool: asyncpg.Pool, eid: int) -> None:
    # A second attempt of `join` issued just before the end, never answered.
    end = await pool.fetchval(
        "SELECT version FROM noetl.event WHERE execution_id = $1 "
        "AND event_type = 'execution.completed'",
        eid,
    )
    await _make_room(pool, eid, end)
    command = f"{eid}:join:1:2"
    await _insert(
        pool,
        eid,
        version=end,
        event_type="command.issued",
        step="join",
        command_id=command,
        dedup_key=command_issued_key(command),
        payload={"activation": 1, "attempt": 2, "args": {}, "kind": "python"},
    )


async def _event_after_end(pool: asyncpg.Pool, eid: int) -> None:
    last = await pool.fetchval("SELECT max(version) FROM noetl.event WHERE execution_id = $1", eid)
    await _insert(
        pool,
        eid,
        version=last + 1,
        event_type="step.started",
        step="a",
        dedup_key="step.started:a:2",
        status="running",
        payload={"activation": 2, "args": {}},
    )


async def _version_gap(pool: asyncpg.Pool, eid: int) -> None:
    await _make_room(pool, eid, 3)


async def _version_duplicate(pool: asyncpg.Pool, eid: int) -> None:
    # Only a table that lost its constraint (a careless restore) can hold this.
    await pool.execute("ALTER TABLE noetl.event DROP CONSTRAINT event_version")
    await _insert(
        pool,
        eid,
        version=2,
        event_type="timer.fired",
        dedup_key="timer.fired:injected",
        payload={"name": "injected"},
    )


async def _join_fired_twice(pool: asyncpg.Pool, eid: int) -> None:
    # The branch that ended first lets `join` start at once (the bug), before the other ends.
    first = await pool.fetchval(
        "SELECT step FROM noetl.event WHERE execution_id = $1 AND event_type = 'step.completed' "
        "AND step IN ('a', 'b') ORDER BY version LIMIT 1",
        eid,
    )
    ended = await _version_of(pool, eid, "step.completed", first)
    await pool.execute(
        "UPDATE noetl.event SET dedup_key = 'step.started:join:2', "
        "payload = jsonb_set(payload, '{activation}', '2') "
        "WHERE execution_id = $1 AND event_type = 'step.started' AND step = 'join'",
        eid,
    )
    await _make_room(pool, eid, ended + 1)
    await _insert(
        pool,
        eid,
        version=ended + 1,
        event_type="step.started",
        step="join",
        dedup_key="step.started:join:1",
        status="running",
        payload={"activation": 1, "args": {}},
    )


async def _stuck(pool: asyncpg.Pool, eid: int) -> None:
    # Still running (its end removed), silent for two hours, with no timeout of its own.
    await pool.execute(
        "DELETE FROM noetl.event WHERE execution_id = $1 AND version >= "
        "(SELECT version FROM noetl.event WHERE execution_id = $1 "
        " AND event_type = 'step.completed' AND step = 'start')",
        eid,
    )
    await pool.execute(
        "DELETE FROM noetl.event WHERE execution_id = $1 AND version IS NULL AND step <> 'start'",
        eid,
    )
    await pool.execute(
        "UPDATE noetl.event SET created_at = created_at - interval '2 hours' "
        "WHERE execution_id = $1",
        eid,
    )


Injection = Callable[[asyncpg.Pool, int], Awaitable[None]]

CASES: list[tuple[Invariant, Injection]] = [
    ("step_ended_twice", _step_ended_twice),
    ("command_two_outcomes", _command_two_outcomes),
    ("command_without_outcome", _command_without_outcome),
    ("event_after_end", _event_after_end),
    ("version_gap", _version_gap),
    ("version_duplicate", _version_duplicate),
    ("join_fired_twice", _join_fired_twice),
    ("stuck", _stuck),
]


@pytest.mark.parametrize(("invariant", "inject"), CASES, ids=[c[0] for c in CASES])
async def test_each_injected_violation_is_reported(
    client: Client, base: int, invariant: Invariant, inject: Injection
) -> None:
    pool = client.store.pool
    eid = await _copy(pool, base)
    assert (await check_events(pool, eid, settle=0)).clean
    await inject(pool, eid)
    report = await check_events(pool, eid, settle=0)
    assert {v.invariant for v in report.violations} == {invariant}, report
    assert all(v.execution_id == eid for v in report.violations)
    # The untouched original stays clean.
    assert (await check_events(pool, base, settle=0)).clean
    code, output = await asyncio.to_thread(
        _cli, client, "--execution", str(eid), "--settle", "0", "--json"
    )
    assert code == 1, output
    document = json.loads(output)
    assert document["clean"] is False
    assert {v["invariant"] for v in document["violations"]} == {invariant}
    assert {v["execution_id"] for v in document["violations"]} == {str(eid)}
    if invariant == "stuck":
        (found,) = report.violations
        assert "last event: command.completed of step `start`" in found.message, found
