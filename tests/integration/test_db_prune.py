"""`db prune` on a real mesh's store: old ended trees go (archived first), running ones,
parents of running ones and recent ones stay, blobs go only when nothing refers to them,
`db check` stays clean and a second run does nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import aioboto3
import asyncpg
from click.testing import CliRunner
from gcloud.aio.storage import Storage

from actors.mesh import Mesh
from noetl.cli import main
from noetl.client import Client
from noetl.store.check import check_events
from tests.integration.conftest import fixture, one_step, run
from tests.support.cloud import GcsEmulator, MotoServer, create_gcs_bucket


def _prune_now(client: Client, *args: str) -> dict[str, Any]:
    settings = client.settings
    assert settings.nats_url is not None and settings.pg_dsn is not None
    server = ["--nats-url", settings.nats_url, "--pg-dsn", settings.pg_dsn]
    result = CliRunner().invoke(main, [*server, "db", "prune", *args, "--json"])
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.output)
    return document


async def _prune(client: Client, *args: str) -> dict[str, Any]:
    """`noetl-runtime db prune ARGS --json` in this process (its own event loop, in a
    thread); its JSON document."""
    return await asyncio.to_thread(_prune_now, client, *args)


async def _age(pool: asyncpg.Pool, *ids: int, status: str | None = None) -> None:
    await pool.execute(
        "UPDATE noetl.execution SET ended_at = now() - interval '40 days', "
        "status = coalesce($2, status) WHERE execution_id = ANY($1)",
        list(ids),
        status,
    )


async def _ids(pool: asyncpg.Pool, table: str) -> set[int]:
    rows = await pool.fetch(f"SELECT DISTINCT execution_id FROM noetl.{table}")
    return {int(r["execution_id"]) for r in rows}


async def _ok(client: Client, path: Path) -> int:
    doc = await run(client, path)
    assert doc["status"] == "completed", doc
    return int(doc["execution_id"])


async def test_prune_keeps_what_is_live_and_archives_what_goes(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    pool = client.store.pool
    hello = fixture("hello_world")
    old, recent, running = [await _ok(client, hello) for _ in range(3)]
    await client.register(fixture("composition_child"))
    parent = await _ok(client, fixture("composition_parent"))
    children = sorted(
        int(r["execution_id"])
        for r in await pool.fetch(
            "SELECT execution_id FROM noetl.execution WHERE parent_execution_id = $1", parent
        )
    )
    shared = one_step(tmp_path, "shared", "{kind: python, code: \"result = 'x' * 300000\"}")
    solo = one_step(tmp_path, "solo", "{kind: python, code: \"result = 'y' * 300000\"}")
    big_old, big_recent, big_solo = [await _ok(client, p) for p in (shared, shared, solo)]
    assert await pool.fetchval("SELECT count(*) FROM noetl.blob") == 2
    await pool.execute("UPDATE noetl.blob SET created_at = now() - interval '40 days'")

    await _age(pool, old, parent, *children, big_old, big_solo)
    await _age(pool, running, status="running")
    await _age(pool, children[0], status="running")  # a live child keeps its whole tree
    before = {eid: await client.store.list_events(eid) for eid in (old, big_old, big_solo, parent)}
    everything = await _ids(pool, "event")

    # An archive that cannot be written: the prune fails and deletes nothing.
    (tmp_path / "not-a-dir").write_text("")
    server = ["--nats-url", str(client.settings.nats_url), "--pg-dsn", str(client.settings.pg_dsn)]
    args = ["db", "prune", "--older-than", "30d", "--archive", str(tmp_path / "not-a-dir")]
    failed = await asyncio.to_thread(CliRunner().invoke, main, [*server, *args])
    assert failed.exit_code == 1 and "cannot write the archive" in failed.output
    assert await _ids(pool, "event") == everything

    dry = await _prune(client, "--older-than", "30d", "--dry-run")
    assert (dry["executions"], dry["blobs"], dry["dry_run"]) == (3, 1, True)
    assert dry["events"] == sum(len(before[e]) for e in (old, big_old, big_solo))
    assert await _ids(pool, "event") == everything

    archive = tmp_path / "archive"
    done = await _prune(client, "--older-than", "30d", "--archive", str(archive), "--gzip")
    assert (done["executions"], done["archived"], done["blobs"]) == (3, 3, 1)
    assert done["events"] == dry["events"]
    assert sorted(p.name for p in archive.iterdir()) == sorted(
        f"{e}.jsonl.gz" for e in (old, big_old, big_solo)
    )
    for eid in (old, big_old, big_solo):
        lines = gzip.decompress((archive / f"{eid}.jsonl.gz").read_bytes()).splitlines()
        rows = [json.loads(line) for line in lines]
        assert [(r["event_id"], r["event_type"], r["payload"]) for r in rows] == [
            (str(e["event_id"]), e["event_type"], e["payload"]) for e in before[eid]
        ]
        assert {r["execution_id"] for r in rows} == {str(eid)}
    remaining = {recent, running, parent, *children, big_recent}
    assert await _ids(pool, "execution") == remaining
    assert await _ids(pool, "event") == remaining
    # The value `big_recent` still refers to stays and still resolves.
    assert (await client.store.describe(big_recent))["result"] == "x" * 300000
    assert await pool.fetchval("SELECT count(*) FROM noetl.blob") == 1

    await _age(pool, children[0], status="completed")
    tree = await _prune(client, "--older-than", "30d")
    assert (tree["executions"], tree["archived"]) == (1 + len(children), 0)
    assert await _ids(pool, "execution") == {recent, running, big_recent}

    again = await _prune(client, "--older-than", "30d")
    assert (again["executions"], again["events"], again["blobs"]) == (0, 0, 0)
    report = await check_events(pool, settle=0)
    assert report.clean, report.violations


async def _read_s3(bucket: str, key: str) -> bytes:
    async with aioboto3.Session().client("s3") as s3:
        reply = await s3.get_object(Bucket=bucket, Key=key)
        async with reply["Body"] as body:
            data: bytes = await body.read()
            return data


async def test_prune_archives_to_s3_and_gcs(
    client: Client, mesh: Mesh, aws_env: MotoServer, gcs_env: GcsEmulator
) -> None:
    pool = client.store.pool
    first, second = [await _ok(client, fixture("hello_world")) for _ in range(2)]
    events = len(await client.store.list_events(first))
    async with aioboto3.Session().client("s3") as s3:
        await s3.create_bucket(Bucket="keep")
    await create_gcs_bucket(gcs_env, "keep")

    await _age(pool, first)
    to_s3 = await _prune(client, "--older-than", "1h", "--archive", "s3://keep/noetl/events/")
    assert (to_s3["executions"], to_s3["archived"]) == (1, 1)
    lines = (await _read_s3("keep", f"noetl/events/{first}.jsonl")).splitlines()
    assert len(lines) == events and json.loads(lines[0])["event_type"] == "execution.started"

    await _age(pool, second)
    to_gcs = await _prune(client, "--older-than", "1h", "--archive", "gs://keep/events", "--gzip")
    assert (to_gcs["executions"], to_gcs["archived"]) == (1, 1)
    async with Storage(api_root=gcs_env.host) as storage:
        data = await storage.download("keep", f"events/{second}.jsonl.gz")
    rows = [json.loads(line) for line in gzip.decompress(data).splitlines()]
    assert len(rows) == events and {r["execution_id"] for r in rows} == {str(second)}
    assert await _ids(pool, "execution") == set()


async def test_prune_refuses_a_bad_duration(client: Client) -> None:
    settings = client.settings
    assert settings.nats_url is not None and settings.pg_dsn is not None
    result = CliRunner().invoke(
        main,
        ["--pg-dsn", settings.pg_dsn, "db", "prune", "--older-than", "30 days"],
    )
    assert result.exit_code == 2
    assert "expected a positive number and a unit" in result.output
