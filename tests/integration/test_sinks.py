"""Every sink kind and mode against real services.

postgres: the session's PostgreSQL; duckdb: database files; snowflake: the official connector
over fakesnow's server; file: the local disk; s3: moto's server; gcs: gcp-storage-emulator.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aioboto3
import asyncpg
import duckdb
import pytest

# Bound at import: the first call of fakesnow.server() imports the submodule of that name,
# which then shadows the function on the package.
from fakesnow import server as fakesnow_server
from gcloud.aio.storage import Storage

from noetl.errors import ToolError
from noetl.local import free_port
from plugins.base import ToolContext
from plugins.sinks import get_sink, rows_of
from plugins.sinks.duckdb import DuckdbSink
from plugins.sinks.event_log import EventLogSink
from plugins.sinks.file import FileSink
from plugins.sinks.objects import GcsSink, S3Sink
from plugins.sinks.postgres import PostgresSink
from plugins.sinks.snowflake import SnowflakeSink
from plugins.snowflake import SnowflakeTool
from tests.support.cloud import GcsEmulator, MotoServer, put_gcs_object
from tests.support.tools import tool_context

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

PASSWORD = "sink-secret-pw-0815"


def make_ctx(
    credentials: Mapping[str, Mapping[str, Any]] | None = None, timeout: float | None = 60.0
) -> ToolContext:
    """A context whose credential store is `credentials`."""
    return tool_context(credentials, timeout=timeout)


# -- postgres -------------------------------------------------------------------------------


@pytest.fixture
async def pg_sink() -> AsyncIterator[PostgresSink]:
    sink = PostgresSink()
    try:
        yield sink
    finally:
        await sink.aclose()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def pg_write(sink: PostgresSink, dsn: str, rows: Any, **spec: Any) -> dict[str, Any]:
    """Write `rows` (a result, as the runner hands it) with the postgres sink."""
    return await sink.write(
        make_ctx({"pg": {"dsn": dsn}}), {"kind": "postgres", "auth": "pg", **spec}, rows_of(rows)
    )


async def test_postgres_insert_converts_values_to_the_column_types(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("""CREATE TABLE public.users (
        id int PRIMARY KEY, email text, born date, seen timestamptz, score numeric(5, 1),
        profile jsonb, avatar bytea, active bool, tags text[],
        created timestamptz DEFAULT now())""")
    rows = [
        {
            "id": "1",
            "EMAIL": "ada@example.com",
            "born": "1815-12-10",
            "seen": "2024-01-02T03:04:05+00:00",
            "score": "99.5",
            "profile": {"langs": ["en"]},
            "avatar": "AP8=",
            "active": "true",
            "tags": ["a", "b"],
        },
        {"id": 2, "email": 42, "profile": "just text", "active": False},
    ]
    result = await pg_write(pg_sink, pg_dsn, rows, table="public.users")
    assert result == {"rows": 2, "table": "public.users", "mode": "insert"}
    got = await db.fetch("SELECT * FROM users ORDER BY id")
    assert dict(got[0]) | {"created": None} == {
        "id": 1,
        "email": "ada@example.com",
        "born": dt.date(1815, 12, 10),
        "seen": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "score": pytest.approx(99.5),
        "profile": '{"langs": ["en"]}',
        "avatar": b"\x00\xff",
        "active": True,
        "tags": ["a", "b"],
        "created": None,
    }
    assert got[0]["created"] is not None  # a column no row names keeps its default
    assert (got[1]["email"], got[1]["profile"], got[1]["born"]) == ("42", '"just text"', None)


async def test_postgres_upsert_updates_inserts_and_keeps_the_last_duplicate(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE t (id int PRIMARY KEY, name text, n int DEFAULT 7)")
    await db.execute("INSERT INTO t VALUES (1, 'old', 1), (2, 'keep', 2)")
    rows = [{"id": 1, "name": "first"}, {"id": 3, "name": "new"}, {"id": 1, "name": "last"}]
    result = await pg_write(pg_sink, pg_dsn, rows, table="t", mode="upsert", key=["id"])
    assert result == {"rows": 2, "table": "t", "mode": "upsert"}
    assert [tuple(r) for r in await db.fetch("SELECT * FROM t ORDER BY id")] == [
        (1, "last", 1),
        (2, "keep", 2),
        (3, "new", 7),
    ]
    # Only key columns: existing rows stay as they are (DO NOTHING).
    await pg_write(pg_sink, pg_dsn, [{"id": 2}, {"id": 4}], table="t", mode="upsert", key="id")
    assert await db.fetchval("SELECT array_agg(id ORDER BY id) FROM t") == [1, 2, 3, 4]


async def test_postgres_upsert_with_a_composite_key(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE m (day date, region text, total int, PRIMARY KEY (day, region))")
    await pg_write(
        pg_sink,
        pg_dsn,
        [{"day": "2024-01-01", "region": "n", "total": 1}],
        table="m",
        mode="upsert",
        key=["day", "region"],
    )
    await pg_write(
        pg_sink,
        pg_dsn,
        [
            {"day": "2024-01-01", "region": "n", "total": 5},
            {"day": "2024-01-01", "region": "s", "total": 2},
        ],
        table="m",
        mode="upsert",
        key=["day", "region"],
    )
    assert [tuple(r) for r in await db.fetch("SELECT region, total FROM m ORDER BY 1")] == [
        ("n", 5),
        ("s", 2),
    ]


async def test_postgres_replace_truncates_in_the_same_transaction(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)")
    await db.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    assert (await pg_write(pg_sink, pg_dsn, {"id": 9, "name": "z"}, table="t", mode="replace"))[
        "rows"
    ] == 1
    assert [tuple(r) for r in await db.fetch("SELECT * FROM t")] == [(9, "z")]
    with pytest.raises(ToolError) as err:  # a NOT NULL violation after the TRUNCATE
        await pg_write(
            pg_sink, pg_dsn, [{"id": 1, "name": "ok"}, {"id": 2}], table="t", mode="replace"
        )
    assert 'postgres sink: writing t: null value in column "name"' in str(err.value)
    assert err.value.details["sqlstate"] == "23502"
    assert [tuple(r) for r in await db.fetch("SELECT * FROM t")] == [(9, "z")]
    assert (await pg_write(pg_sink, pg_dsn, [], table="t", mode="replace"))["rows"] == 0
    assert await db.fetchval("SELECT count(*) FROM t") == 0


async def test_postgres_quoted_schema_and_table_names(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        'CREATE SCHEMA "My Schema"; CREATE TABLE "My Schema"."Odd ""T"" able" '
        '("Full Name" text, "order" int)'
    )
    result = await pg_write(
        pg_sink, pg_dsn, [{"Full Name": "Ada", "order": 1}], table='"My Schema"."Odd ""T"" able"'
    )
    assert result["table"] == 'My Schema.Odd "T" able'
    assert await db.fetchval('SELECT "Full Name" FROM "My Schema"."Odd ""T"" able"') == "Ada"
    # Upsert through the same names (a unique index on the quoted column).
    await db.execute('CREATE UNIQUE INDEX ON "My Schema"."Odd ""T"" able" ("order")')
    await pg_write(
        pg_sink,
        pg_dsn,
        [{"Full Name": "Bob", "order": 1}],
        table='"My Schema"."Odd ""T"" able"',
        mode="upsert",
        key=["order"],
    )
    assert await db.fetchval('SELECT "Full Name" FROM "My Schema"."Odd ""T"" able"') == "Bob"


async def test_postgres_sink_errors(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE t (id int, name text)")
    with pytest.raises(
        ToolError, match='postgres sink: writing nope: relation "nope" does not exist'
    ):
        await pg_write(pg_sink, pg_dsn, {"id": 1}, table="nope")
    with pytest.raises(
        ToolError,
        match=r"postgres sink: table t has no column 'mail' \(its "
        r"columns: id, name\)",
    ):
        await pg_write(pg_sink, pg_dsn, {"id": 1, "mail": "x"}, table="t")
    with pytest.raises(ToolError, match="mode upsert needs `key`"):
        await pg_write(pg_sink, pg_dsn, {"id": 1}, table="t", mode="upsert")
    with pytest.raises(ToolError, match="no unique or exclusion constraint"):
        await pg_write(pg_sink, pg_dsn, {"id": 1}, table="t", mode="upsert", key=["id"])
    with pytest.raises(ToolError, match="row 1: str value does not fit column id of t"):
        await pg_write(pg_sink, pg_dsn, [{"id": 1}, {"id": "one"}], table="t")
    assert await db.fetchval("SELECT count(*) FROM t") == 0
    assert await pg_write(pg_sink, pg_dsn, [], table="t") == {
        "rows": 0,
        "table": "t",
        "mode": "insert",
    }


async def test_postgres_unreachable_server_never_names_the_password(pg_sink: PostgresSink) -> None:
    port = free_port()
    ctx = make_ctx({"pg": {"dsn": f"postgresql://ada:{PASSWORD}@127.0.0.1:{port}/app"}})
    with pytest.raises(ToolError) as err:
        await pg_sink.write(ctx, {"auth": "pg", "table": "t"}, [{"id": 1}])
    assert str(err.value).startswith(f"postgres sink: cannot connect to ada@127.0.0.1:{port}/app")
    assert PASSWORD not in str(err.value)


async def test_postgres_many_rows_in_batches(
    pg_sink: PostgresSink, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE big (id int PRIMARY KEY, v text, at date)")
    rows = [{"id": i, "v": f"v{i}", "at": "2024-01-01"} for i in range(20_000)]
    assert (await pg_write(pg_sink, pg_dsn, rows, table="big"))["rows"] == 20_000
    changed = [{"id": i, "v": "w"} for i in range(10_000, 30_000)]
    assert (await pg_write(pg_sink, pg_dsn, changed, table="big", mode="upsert", key=["id"]))[
        "rows"
    ] == 20_000
    assert await db.fetchval("SELECT count(*) FROM big") == 30_000
    assert await db.fetchval("SELECT count(*) FROM big WHERE v = 'w'") == 20_000


# -- duckdb ---------------------------------------------------------------------------------


def duck_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = duckdb.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_duckdb_sink_every_mode(tmp_path: Path) -> None:
    path = tmp_path / "sink.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute(
        "CREATE SCHEMA s; CREATE TABLE s.t (id INTEGER PRIMARY KEY, name VARCHAR, "
        "born DATE, doc JSON, extra VARCHAR)"
    )
    conn.close()
    sink = DuckdbSink()
    spec = {"kind": "duckdb", "database": str(path), "table": "s.t"}
    rows: list[dict[str, Any]] = [
        {"id": 1, "name": "a", "born": "2024-01-02", "doc": {"k": [1]}},
        {"ID": "2", "name": "b", "extra": {"x": 1}},
    ]
    assert await sink.write(make_ctx(), spec, rows) == {
        "rows": 2,
        "table": "s.t",
        "mode": "insert",
        "database": str(path),
    }
    assert duck_rows(path, "SELECT id, name, born, doc, extra FROM s.t ORDER BY id") == [
        (1, "a", dt.date(2024, 1, 2), '{"k": [1]}', None),
        (2, "b", None, None, '{"x": 1}'),
    ]
    upsert = [{"id": 2, "name": "B"}, {"id": 3, "name": "c"}, {"id": 3, "name": "C"}]
    assert (await sink.write(make_ctx(), {**spec, "mode": "upsert", "key": ["id"]}, upsert))[
        "rows"
    ] == 2
    assert duck_rows(path, "SELECT id, name FROM s.t ORDER BY id") == [(1, "a"), (2, "B"), (3, "C")]
    await sink.write(make_ctx(), {**spec, "mode": "replace"}, [{"id": 9, "name": "z"}])
    assert duck_rows(path, "SELECT id, name FROM s.t") == [(9, "z")]


async def test_duckdb_sink_failure_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "rb.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
    conn.close()
    sink = DuckdbSink()
    with pytest.raises(ToolError, match="duckdb sink: writing t: Conversion Error"):
        await sink.write(
            make_ctx(),
            {"database": str(path), "table": "t", "mode": "replace"},
            [{"id": 5}, {"id": "x"}],
        )
    assert duck_rows(path, "SELECT id FROM t") == [(1,)]
    with pytest.raises(ToolError, match="duckdb sink: table t has no column 'nope'"):
        await sink.write(make_ctx(), {"database": str(path), "table": "t"}, [{"nope": 1}])
    with pytest.raises(ToolError, match="duckdb sink: `database`"):
        await sink.write(make_ctx(), {"table": "t"}, [{"id": 1}])
    with pytest.raises(ToolError, match="duckdb sink: writing missing: Catalog Error"):
        await sink.write(make_ctx(), {"database": str(path), "table": "missing"}, [{"id": 1}])


# -- snowflake ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snowflake_credential() -> Iterator[dict[str, Any]]:
    """A credential for a fakesnow server (database db1, schema s1) on a free port."""
    with fakesnow_server() as connection:
        yield {**connection, "password": PASSWORD, "database": "db1", "schema": "s1"}


async def test_snowflake_sink_every_mode(snowflake_credential: dict[str, Any]) -> None:
    ctx = make_ctx({"sf": snowflake_credential})
    tool, sink = SnowflakeTool(), SnowflakeSink()

    async def query(sql: str) -> Any:
        return await tool.run(ctx, {"auth": "sf", "query": sql})

    await query(
        "CREATE OR REPLACE TABLE people (id INT PRIMARY KEY, name VARCHAR, born DATE, doc VARIANT)"
    )
    spec = {"kind": "snowflake", "auth": "sf", "table": "db1.s1.people"}
    rows = [
        {"id": 1, "name": "ada", "born": "1815-12-10", "doc": {"langs": ["en"]}},
        {"ID": 2, "name": "bob"},
    ]
    assert await sink.write(ctx, spec, rows) == {
        "rows": 2,
        "table": "DB1.S1.PEOPLE",
        "mode": "insert",
    }
    assert await query("SELECT * FROM people ORDER BY id") == [
        {"ID": 1, "NAME": "ada", "BORN": "1815-12-10", "DOC": {"langs": ["en"]}},
        {"ID": 2, "NAME": "bob", "BORN": None, "DOC": None},
    ]
    upsert = [
        {"id": 2, "name": "BOB", "doc": [1]},
        {"id": 3, "name": "cy"},
        {"id": 3, "name": "CY"},
    ]
    assert (await sink.write(ctx, {**spec, "mode": "upsert", "key": ["id"]}, upsert))["rows"] == 2
    assert await query("SELECT id, name, doc FROM people ORDER BY id") == [
        {"ID": 1, "NAME": "ada", "DOC": {"langs": ["en"]}},
        {"ID": 2, "NAME": "BOB", "DOC": [1]},
        {"ID": 3, "NAME": "CY", "DOC": None},
    ]
    await sink.write(ctx, {**spec, "mode": "replace"}, [{"id": 9, "name": "z"}])
    assert await query("SELECT id, name FROM people") == [{"ID": 9, "NAME": "z"}]
    with pytest.raises(ToolError) as err:
        await sink.write(ctx, {**spec, "table": "nowhere"}, rows)
    assert str(err.value).startswith("snowflake sink: ")
    assert "NOWHERE does not exist" in str(err.value) and PASSWORD not in str(err.value)


# -- file -----------------------------------------------------------------------------------

ROWS = [
    {"id": 1, "name": "ada", "born": dt.date(1815, 12, 10), "tags": ["x"]},
    {"id": 2, "name": "bob, jr", "ok": True},
]


async def test_file_sink_every_format(tmp_path: Path) -> None:
    sink = FileSink()
    out = tmp_path / "deep" / "dir"
    result = await sink.write(make_ctx(), {"path": str(out / "r.json")}, ROWS)
    assert result["rows"] == 2 and result["format"] == "json"
    assert json.loads((out / "r.json").read_text()) == [
        {"id": 1, "name": "ada", "born": "1815-12-10", "tags": ["x"]},
        {"id": 2, "name": "bob, jr", "ok": True},
    ]
    await sink.write(make_ctx(), {"path": str(out / "r.jsonl")}, ROWS)
    assert [json.loads(line) for line in (out / "r.jsonl").read_text().splitlines()][1] == {
        "id": 2,
        "name": "bob, jr",
        "ok": True,
    }
    await sink.write(make_ctx(), {"path": str(out / "r.txt"), "format": "csv"}, ROWS)
    assert list(csv.DictReader(io.StringIO((out / "r.txt").read_text()))) == [
        {"id": "1", "name": "ada", "born": "1815-12-10", "tags": '["x"]', "ok": ""},
        {"id": "2", "name": "bob, jr", "born": "", "tags": "", "ok": "true"},
    ]
    await sink.write(make_ctx(), {"path": str(out / "r.parquet")}, ROWS)
    assert duckdb.connect().execute(
        "SELECT id, name, born, tags FROM read_parquet(?) ORDER BY id", [str(out / "r.parquet")]
    ).fetchall() == [(1, "ada", dt.date(1815, 12, 10), ["x"]), (2, "bob, jr", None, None)]


async def test_file_sink_replace_and_append(tmp_path: Path) -> None:
    sink = FileSink()
    path = tmp_path / "log.jsonl"
    await sink.write(make_ctx(), {"path": str(path)}, [{"n": 1}])
    await sink.write(make_ctx(), {"path": str(path)}, [{"n": 2}])
    assert path.read_text() == '{"n": 2}\n'  # replaced
    for n in (3, 4):
        await sink.write(make_ctx(), {"path": str(path), "mode": "insert"}, [{"n": n}])
    assert path.read_text() == '{"n": 2}\n{"n": 3}\n{"n": 4}\n'
    table = tmp_path / "t.csv"
    await sink.write(make_ctx(), {"path": str(table), "mode": "append"}, [{"a": 1, "b": 2}])
    await sink.write(make_ctx(), {"path": str(table), "mode": "append"}, [{"b": 3}])
    assert table.read_text() == "a,b\n1,2\n,3\n"
    with pytest.raises(ToolError, match="the rows have columns the file's header lacks: c"):
        await sink.write(make_ctx(), {"path": str(table), "mode": "append"}, [{"c": 1}])
    with pytest.raises(ToolError, match="cannot append to a json file"):
        await sink.write(
            make_ctx(), {"path": str(tmp_path / "x.json"), "mode": "insert"}, [{"a": 1}]
        )
    names = sorted(p.name for p in await asyncio.to_thread(lambda: list(tmp_path.iterdir())))
    assert names == ["log.jsonl", "t.csv"]  # no temp files left behind


# -- object stores --------------------------------------------------------------------------


async def test_s3_sink(aws_env: MotoServer) -> None:
    async with aioboto3.Session().client("s3") as client:
        await client.create_bucket(Bucket="out")
    sink = S3Sink()
    result = await sink.write(make_ctx(), {"uri": "s3://out/day/rows.jsonl"}, ROWS)
    ctx = make_ctx(
        {
            "aws": {
                "aws_access_key_id": "testing",
                "aws_secret_access_key": "testing-secret-key",
                "region": "us-east-1",
            }
        }
    )
    await sink.write(ctx, {"uri": "s3://out/rows.csv", "auth": "aws"}, ROWS)
    assert ctx.secrets["aws.aws_secret_access_key"] == "testing-secret-key"
    async with aioboto3.Session().client("s3") as client:
        obj = await client.get_object(Bucket="out", Key="day/rows.jsonl")
        body = await obj["Body"].read()
        assert obj["ContentType"] == "application/x-ndjson"
        assert obj["ContentLength"] == len(body) > 0
        csv_obj = await client.get_object(Bucket="out", Key="rows.csv")
        assert (await csv_obj["Body"].read()).decode().startswith("id,name,born,tags,ok\n")
    assert json.loads(body.splitlines()[0])["born"] == "1815-12-10"
    assert result == {
        "rows": 2,
        "uri": "s3://out/day/rows.jsonl",
        "format": "jsonl",
        "bytes": len(body),  # what was stored, measured on the store's side
    }
    with pytest.raises(ToolError, match=r"s3 sink: s3://nope/x\.json: no bucket 'nope'"):
        await sink.write(make_ctx(), {"uri": "s3://nope/x.json"}, ROWS)
    with pytest.raises(ToolError, match="s3 sink: `uri` must look like s3://BUCKET/KEY"):
        await sink.write(make_ctx(), {"uri": "gs://out/x.json"}, ROWS)


async def test_gcs_sink(gcs_env: GcsEmulator) -> None:
    await put_gcs_object(gcs_env, "out", "placeholder", b"x")  # creates the bucket
    sink = GcsSink()
    result = await sink.write(make_ctx(), {"uri": "gs://out/rows.parquet"}, ROWS)
    assert result["rows"] == 2 and result["format"] == "parquet"
    # jsonl, not json: the emulator itself decodes a body sent as application/json.
    await sink.write(make_ctx(), {"uri": "gs://out/rows.jsonl"}, ROWS)
    async with Storage(api_root=gcs_env.host) as storage:
        data = await storage.download("out", "rows.jsonl")
        parquet = await storage.download("out", "rows.parquet")
    assert json.loads(data.splitlines()[1]) == {"id": 2, "name": "bob, jr", "ok": True}
    assert parquet.startswith(b"PAR1") and len(parquet) == result["bytes"]
    with pytest.raises(ToolError, match=r"gcs sink: gs://missing/x\.jsonl: "):
        await sink.write(make_ctx(), {"uri": "gs://missing/x.jsonl"}, ROWS)
    with pytest.raises(ToolError, match="gcs sink: credential 'gcp' is not a service-account"):
        await sink.write(
            make_ctx({"gcp": {"token": "x"}}), {"uri": "gs://out/x.jsonl", "auth": "gcp"}, ROWS
        )


# -- event log and the registry -------------------------------------------------------------


async def test_event_log_sink_returns_the_rows() -> None:
    assert await EventLogSink().write(make_ctx(), {"kind": "event_log"}, ROWS) == {
        "rows": 2,
        "data": [
            {"id": 1, "name": "ada", "born": "1815-12-10", "tags": ["x"]},
            {"id": 2, "name": "bob, jr", "ok": True},
        ],
    }


async def test_get_sink_returns_working_instances(tmp_path: Path) -> None:
    result = await get_sink("file").write(
        make_ctx(), {"path": str(tmp_path / "x.json")}, rows_of({"a": 1})
    )
    assert result["rows"] == 1
    assert json.loads((tmp_path / "x.json").read_text()) == [{"a": 1}]
