"""Data tools on the mesh against real services: PostgreSQL, DuckDB, and their failures."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import (
    fixture,
    one_step,
    run,
)
from tests.integration.shared_mesh import shared_client, shared_mesh  # noqa: F401
from tests.support.mesh import credential_store
from tests.support.services import free_port


async def test_postgres_roundtrip_fixture(client: Client, mesh: Mesh, pg_dsn: str) -> None:
    await credential_store(client).set("pg_local", "postgres", {"dsn": pg_dsn})
    doc = await run(client, fixture("postgres_roundtrip"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"best": "ada@example.com"}
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT id, email, score FROM public.example_users ORDER BY id")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        (1, "ada@example.com", 90),
        (2, "bob@example.com", 40),
        (3, "cy@example.com", 75),
    ]
    load = await client.store.list_events(int(doc["execution_id"]))
    sunk = next(e for e in load if e["event_type"] == "step.completed" and e["step"] == "load")
    assert sunk["payload"]["sink"]["rows"] == 3
    # Upsert: running it again changes nothing and fails nothing.
    again = await client.wait(await client.start("examples/postgres_roundtrip"), timeout=90)
    assert again["status"] == "completed"


async def test_duckdb_transform_fixture(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("duckdb_transform"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"north": 17, "south": 5}


async def test_data_tool_failures_name_step_tool_and_cause(
    client: Client, mesh: Mesh, tmp_path: Path, pg_dsn: str
) -> None:
    creds = credential_store(client)
    await creds.set("pg_ok", "postgres", {"dsn": pg_dsn})
    await creds.set(
        "pg_wrong_host",
        "postgres",
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "user": "x",
            "password": "hunter22-secret",
            "database": "x",
        },
    )
    cases = {
        "missing_credential": ("{kind: postgres, auth: nope, query: 'select 1'}", "nope"),
        "unreachable": ("{kind: postgres, auth: pg_wrong_host, query: 'select 1'}", "127.0.0.1"),
        "missing_table": (
            "{kind: postgres, auth: pg_ok, query: 'select * from no_such'}",
            "no_such",
        ),
        "bad_sql": ("{kind: postgres, auth: pg_ok, query: 'selec 1'}", "selec"),
        "duck_bad_sql": ("{kind: duckdb, query: 'select * from nowhere'}", "nowhere"),
    }
    for name, (tool, cause) in cases.items():
        doc = await run(client, one_step(tmp_path, name, tool))
        assert doc["status"] == "failed", (name, doc)
        error = doc["error"]
        assert error["step"] == "start", (name, error)
        assert cause in error["message"], (name, error)
        assert "hunter22-secret" not in str(doc)
    # The runner carried on.
    ok = await run(
        client,
        one_step(tmp_path, "fine", "{kind: postgres, auth: pg_ok, query: 'select 1 as one'}"),
    )
    assert ok["result"] == [{"one": 1}]


async def test_sql_rows_keep_their_column_order(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    query = "SELECT 2 AS zeta, 'ada' AS name, 1 AS id, 3 AS alpha_value"
    doc = await run(client, one_step(tmp_path, "ordered", f'{{kind: duckdb, query: "{query}"}}'))
    assert doc["status"] == "completed", doc
    rows = doc["steps"]["start"]
    rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
    assert list(rows[0]) == ["zeta", "name", "id", "alpha_value"], doc["steps"]["start"]
