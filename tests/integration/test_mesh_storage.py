"""Snowflake, the storage sinks and cloud script sources, each in a playbook on the mesh
against its local stand-in (fakesnow's server, DuckDB files, moto's S3, the GCS emulator)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioboto3
import duckdb
import pytest
from fakesnow import server as fakesnow_server

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import run
from tests.support.cloud import GcsEmulator, MotoServer, put_gcs_object, put_s3_object
from tests.support.mesh import credential_store
from tests.support.playbooks import write_playbook

ROWS = "[{id: 1, name: ada}, {id: 2, name: bob}, {id: 3, name: cy}]"


def playbook(tmp_path: Path, name: str, steps: str) -> Path:
    return write_playbook(tmp_path, name, steps, workload=f"{{rows: {ROWS}}}")


@pytest.fixture
def snowflake() -> Iterator[dict[str, Any]]:
    with fakesnow_server() as connection:
        yield {
            **connection,
            "password": "fake-snow-secret-4711",
            "database": "db1",
            "schema": "s1",
            "login_timeout": 10,
        }


async def test_snowflake_tool_and_sink(
    client: Client, mesh: Mesh, tmp_path: Path, snowflake: dict[str, Any]
) -> None:
    await credential_store(client).set("sf", "snowflake", snowflake)
    doc = await run(
        client,
        playbook(
            tmp_path,
            "snow",
            """
        - step: start
          tool:
            kind: snowflake
            auth: sf
            command: "CREATE OR REPLACE TABLE people (id INT, name VARCHAR)"
          next: [load]
        - step: load
          tool: {kind: python, args: {rows: "{{ workload.rows }}"}, code: "result = rows"}
          sink: {tool: {kind: snowflake, auth: sf, table: people, mode: insert}}
          next: [read]
        - step: read
          tool: {kind: snowflake, auth: sf, query: "SELECT id, name FROM people ORDER BY id"}
    """,
        ),
    )
    assert doc["status"] == "completed", doc["error"]["message"]
    assert [r["NAME"] if "NAME" in r else r["name"] for r in doc["result"]] == ["ada", "bob", "cy"]


async def test_file_and_duckdb_sinks(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    doc = await run(
        client,
        playbook(
            tmp_path,
            "files",
            f"""
        - step: start
          tool: {{kind: python, args: {{rows: "{{{{ workload.rows }}}}"}}, code: "result = rows"}}
          sink: {{tool: {{kind: file, path: "{out}/people.jsonl", format: jsonl}}}}
          next: [parquet]
        - step: parquet
          tool: {{kind: python, args: {{rows: "{{{{ workload.rows }}}}"}}, code: "result = rows"}}
          sink: {{tool: {{kind: file, path: "{out}/people.parquet", format: parquet}}}}
          next: [table]
        - step: table
          tool: {{kind: duckdb, database: "{out}/warehouse.duckdb",
                 command: "CREATE TABLE people (id INT, name VARCHAR)"}}
          next: [duck]
        - step: duck
          tool: {{kind: python, args: {{rows: "{{{{ workload.rows }}}}"}}, code: "result = rows"}}
          sink: {{tool: {{kind: duckdb, database: "{out}/warehouse.duckdb", table: people,
                         mode: replace}}}}
    """,
        ),
    )
    assert doc["status"] == "completed", doc["error"]["message"]
    lines = (out / "people.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["ada", "bob", "cy"]
    assert (out / "people.parquet").read_bytes().startswith(b"PAR1")
    with duckdb.connect(str(out / "warehouse.duckdb")) as db:
        assert db.execute("SELECT count(*) FROM people").fetchone() == (3,)


async def test_s3_sink_and_script(
    client: Client, mesh: Mesh, tmp_path: Path, aws_env: MotoServer
) -> None:
    await put_s3_object("scripts", "double.py", "def main(n):\n    return n * 2\n")
    await put_s3_object("exports", "placeholder", "")
    doc = await run(
        client,
        playbook(
            tmp_path,
            "s3",
            """
        - step: start
          tool: {kind: python, args: {n: 21}, script: {uri: "s3://scripts/double.py"}}
          next: [export]
        - step: export
          tool: {kind: python, args: {rows: "{{ workload.rows }}"}, code: "result = rows"}
          sink: {tool: {kind: s3, uri: "s3://exports/people.jsonl", format: jsonl}}
    """,
        ),
    )
    assert doc["status"] == "completed", doc["error"]["message"]
    assert doc["steps"]["start"] == 42
    async with aioboto3.Session().client("s3") as s3:
        body = await (await s3.get_object(Bucket="exports", Key="people.jsonl"))["Body"].read()
    assert len(body.decode().splitlines()) == 3
    missing = await run(
        client,
        playbook(
            tmp_path,
            "s3_missing",
            """
        - step: start
          tool: {kind: python, script: {uri: "s3://scripts/nope.py"}}
    """,
        ),
    )
    assert missing["status"] == "failed"
    assert "nope.py" in missing["error"]["message"]


async def test_gcs_sink_and_script(
    client: Client, mesh: Mesh, tmp_path: Path, gcs_env: GcsEmulator
) -> None:
    await put_gcs_object(gcs_env, "code", "hello.py", "result = {'from': 'gcs'}\n")
    await put_gcs_object(gcs_env, "exports", "keep.txt", "x")
    doc = await run(
        client,
        playbook(
            tmp_path,
            "gcs",
            """
        - step: start
          tool: {kind: python, script: {uri: "gs://code/hello.py"}}
          next: [export]
        - step: export
          tool: {kind: python, args: {rows: "{{ workload.rows }}"}, code: "result = rows"}
          sink: {tool: {kind: gcs, uri: "gs://exports/people.jsonl", format: jsonl}}
    """,
        ),
    )
    assert doc["status"] == "completed", doc["error"]["message"]
    assert doc["steps"]["start"] == {"from": "gcs"}
    rows = await client.store.list_events(int(doc["execution_id"]))
    export = next(r for r in rows if r["event_type"] == "step.completed" and r["step"] == "export")
    assert export["payload"]["sink"]["rows"] == 3
