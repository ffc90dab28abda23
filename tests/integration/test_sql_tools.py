"""The postgres, duckdb and snowflake tools against real servers.

postgres: the session's PostgreSQL (a fresh database per test), plus a private server with
password authentication for the wrong-password case (the shared one trusts loopback).
duckdb: in memory and in files. snowflake: the official connector talking HTTP to fakesnow's
server mode, so the connector's own login, binding, result and error paths run (fakesnow's
`patch()` would replace `snowflake.connector.connect` and skip all of them).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import duckdb
import pytest
import pytest_asyncio

# Bound at import: the first call of fakesnow.server() imports the submodule of that name,
# which then shadows the function on the package.
from fakesnow import server as fakesnow_server
from ruamel.yaml import YAML

from noetl import render
from noetl.errors import ToolError, ToolTimeout
from noetl.local import free_port
from plugins.base import ToolContext
from plugins.duckdb import DuckdbTool
from plugins.postgres import PostgresTool
from plugins.snowflake import SnowflakeTool
from tests.support.services import PgServer, start_test_postgres
from tests.support.tools import tool_context

# fakesnow's own warning about how it copies results: nothing to do with the code under test.
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "playbooks"
PASSWORD = "correct-horse-battery-staple"
WRONG_PASSWORD = "wrong-horse-battery-staple"
SNOW_PASSWORD = "fake-snow-secret-4711"


def make_ctx(
    credentials: Mapping[str, Mapping[str, Any]] | None = None, timeout: float | None = 30.0
) -> ToolContext:
    """A context whose credential store is `credentials`."""
    return tool_context(credentials, timeout=timeout)


def pg_fields(dsn: str, password: str | None = None) -> dict[str, Any]:
    """A field-style postgres credential for `dsn`."""
    parts = urlsplit(dsn)
    return {
        "host": parts.hostname,
        "port": parts.port,
        "user": parts.username,
        "password": parts.password if password is None else password,
        "database": parts.path.lstrip("/"),
    }


@pytest.fixture
async def pg_tool() -> AsyncIterator[PostgresTool]:
    tool = PostgresTool()
    try:
        yield tool
    finally:
        await tool.aclose()


async def pg(
    tool: PostgresTool,
    dsn: str,
    sql: str,
    params: list[Any] | None = None,
    ctx: ToolContext | None = None,
) -> Any:
    """Run `sql` with the postgres tool against `dsn`."""
    spec: dict[str, Any] = {"connection_string": dsn, "query": sql, "params": params, "args": {}}
    return await tool.run(ctx or make_ctx(), spec)


# -- postgres -------------------------------------------------------------------------------


async def test_postgres_params_types_and_json_safe_rows(pg_tool: PostgresTool, pg_dsn: str) -> None:
    await pg(
        pg_tool,
        pg_dsn,
        """
        CREATE TABLE items (
            id int PRIMARY KEY, price numeric(10, 2), qty numeric, born date,
            seen timestamptz, at time, span interval, ref uuid, blob bytea, doc jsonb,
            tags text[], ok boolean, ratio float8, note text)""",
    )
    inserted = await pg(
        pg_tool,
        pg_dsn,
        "INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        [
            "1",
            "9.50",
            3,
            "2024-02-29",
            "2024-02-29T10:00:00+00:00",
            "08:15:00",
            3600,
            "6c1f9f0e-1b7e-4c8e-9d7e-6a4b1c2d3e4f",
            base64.b64encode(b"\x00\xff").decode(),
            {"k": [1, "two"]},
            ["a", "b"],
            "true",
            0.25,
            42,
        ],
    )
    assert inserted == {
        "rowcount": 1,
        "status": "INSERT 0 1",
        "command_0": {"status": "success", "row_count": 1, "message": "INSERT 0 1"},
    }
    rows = await pg(pg_tool, pg_dsn, "SELECT * FROM items WHERE id = $1", [1])
    assert rows == [
        {
            "id": 1,
            "price": 9.5,
            "qty": 3,
            "born": "2024-02-29",
            "seen": "2024-02-29T10:00:00+00:00",
            "at": "08:15:00",
            "span": 3600.0,
            "ref": "6c1f9f0e-1b7e-4c8e-9d7e-6a4b1c2d3e4f",
            "blob": "AP8=",
            "doc": {"k": [1, "two"]},
            "tags": ["a", "b"],
            "ok": True,
            "ratio": 0.25,
            "note": "42",
        }
    ]


def command(tag: str) -> dict[str, Any]:
    """Today's `{rowcount, status}` with NoETL's `command_0` beside (one statement)."""
    count = int(tag.rsplit(" ", 1)[-1]) if tag[-1].isdigit() else 0
    return {
        "rowcount": count,
        "status": tag,
        "command_0": {"status": "success", "row_count": count, "message": tag},
    }


async def test_postgres_rowcount_and_status_of_commands(pg_tool: PostgresTool, pg_dsn: str) -> None:
    assert await pg(pg_tool, pg_dsn, "CREATE TABLE t (id int)") == command("CREATE TABLE")
    assert await pg(pg_tool, pg_dsn, "INSERT INTO t SELECT generate_series(1, 3)") == command(
        "INSERT 0 3"
    )
    assert await pg(pg_tool, pg_dsn, "UPDATE t SET id = id + 1 WHERE id > $1", [1]) == command(
        "UPDATE 2"
    )
    assert await pg(pg_tool, pg_dsn, "SELECT * FROM t WHERE id > 100") == []
    # Several statements with rows: NoETL's mapping, each statement's rows stored once.
    assert await pg(
        pg_tool, pg_dsn, "SELECT 1 AS a; SELECT count(*) AS n FROM t; DELETE FROM t"
    ) == {
        "command_0": {"status": "success", "rows": [{"a": 1}], "row_count": 1, "columns": ["a"]},
        "command_1": {"status": "success", "rows": [{"n": 3}], "row_count": 1, "columns": ["n"]},
        "command_2": {"status": "success", "row_count": 3, "message": "DELETE 3"},
    }
    assert await pg(pg_tool, pg_dsn, "SELECT count(*) AS n FROM t") == [{"n": 0}]


async def test_postgres_statements_share_one_transaction(
    pg_tool: PostgresTool, pg_dsn: str
) -> None:
    await pg(pg_tool, pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(ToolError) as err:
        await pg(
            pg_tool,
            pg_dsn,
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES ($1); INSERT INTO t VALUES (1)",
            [2],
        )
    assert "postgres tool" in str(err.value) and "statement 3 of 3" in str(err.value)
    assert "duplicate key" in str(err.value)
    assert err.value.details["sqlstate"] == "23505"
    assert await pg(pg_tool, pg_dsn, "SELECT count(*) AS n FROM t") == [{"n": 0}]
    # Semicolons in strings, dollar quotes and comments do not split.
    rows = await pg(
        pg_tool,
        pg_dsn,
        """
        INSERT INTO t VALUES (length('a;b')); -- a comment; with a semicolon
        CREATE FUNCTION two() RETURNS int AS $$ BEGIN RETURN 2; END; $$ LANGUAGE plpgsql;
        /* block; comment */ SELECT id, two() AS two FROM t""",
    )
    assert sorted(rows) == ["command_0", "command_1", "command_2"]
    assert rows["command_2"]["rows"] == [{"id": 3, "two": 2}]


async def test_postgres_script_managing_its_own_transaction(
    pg_tool: PostgresTool, pg_dsn: str
) -> None:
    await pg(pg_tool, pg_dsn, "CREATE TABLE t (id int)")
    result = await pg(
        pg_tool, pg_dsn, "BEGIN; INSERT INTO t VALUES (1); ROLLBACK; INSERT INTO t VALUES (2)"
    )
    assert {k: result[k] for k in ("rowcount", "status", "command_1", "command_2")} == {
        "rowcount": 1,
        "status": "INSERT 0 1",
        "command_1": {"status": "success", "row_count": 1, "message": "INSERT 0 1"},
        "command_2": {"status": "success", "row_count": 0, "message": "ROLLBACK"},
    }
    assert sorted(result) == [
        "command_0",
        "command_1",
        "command_2",
        "command_3",
        "rowcount",
        "status",
    ]
    assert await pg(pg_tool, pg_dsn, "SELECT id FROM t") == [{"id": 2}]


async def test_postgres_statement_timeout(pg_tool: PostgresTool, pg_dsn: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as err:
        await pg(pg_tool, pg_dsn, "SELECT pg_sleep(20)", ctx=make_ctx(timeout=0.5))
    assert time.monotonic() - started < 5
    assert err.value.error_type == "timeout"
    assert err.value.details["sqlstate"] == "57014"
    assert "postgres tool: statement timed out after 0.5s" in str(err.value)
    # The pooled connection is usable again, without the old timeout.
    assert await pg(
        pg_tool, pg_dsn, "SELECT 1 AS one FROM pg_sleep(0.7)", ctx=make_ctx(timeout=None)
    ) == [{"one": 1}]


async def test_postgres_cancelled_execution_stops_the_query(
    pg_tool: PostgresTool, pg_dsn: str
) -> None:
    ctx = make_ctx(timeout=None)
    asyncio.get_running_loop().call_later(0.3, ctx.cancelled.set)
    started = time.monotonic()
    with pytest.raises(ToolError, match="postgres tool: cancelled") as err:
        await pg(pg_tool, pg_dsn, "SELECT pg_sleep(20)", ctx=ctx)
    assert err.value.error_type == "cancelled"
    assert time.monotonic() - started < 5
    assert await _still_sleeping(pg_dsn, deadline=time.monotonic() + 5) == 0


async def _still_sleeping(dsn: str, deadline: float) -> int:
    """How many sessions still run the sleep, once none does or at `deadline`."""
    check = await asyncpg.connect(dsn)
    try:
        while True:
            running: int = await check.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)' "
                "AND state = 'active'"
            )
            if running == 0 or time.monotonic() > deadline:
                return running
            await asyncio.sleep(0.05)
    finally:
        await check.close()


async def test_postgres_missing_table_and_bad_sql(pg_tool: PostgresTool, pg_dsn: str) -> None:
    with pytest.raises(ToolError) as err:
        await pg(pg_tool, pg_dsn, "SELECT * FROM nowhere")
    assert str(err.value) == 'postgres tool: relation "nowhere" does not exist'
    assert (err.value.error_type, err.value.details["sqlstate"]) == ("postgres", "42P01")
    with pytest.raises(ToolError) as err:
        await pg(pg_tool, pg_dsn, "SELEKT 1")
    assert str(err.value) == 'postgres tool: syntax error at or near "SELEKT"'
    assert err.value.details["sqlstate"] == "42601"
    with pytest.raises(ToolError, match=r"postgres tool: the query uses \$2 but only 1"):
        await pg(pg_tool, pg_dsn, "SELECT $1::int + $2::int", [1])
    with pytest.raises(ToolError, match=r"param \$1 \(str\) is not a valid int4"):
        await pg(pg_tool, pg_dsn, "SELECT $1::int", ["one"])


async def test_postgres_unreachable_host_names_the_server_not_the_password(
    pg_tool: PostgresTool,
) -> None:
    port = free_port()  # nothing listens there
    ctx = make_ctx(
        {
            "pg": {
                "host": "127.0.0.1",
                "port": port,
                "user": "ada",
                "password": PASSWORD,
                "database": "app",
            }
        }
    )
    with pytest.raises(ToolError) as err:
        await pg_tool.run(ctx, {"auth": "pg", "query": "SELECT 1"})
    message = str(err.value)
    assert message.startswith(f"postgres tool: cannot connect to ada@127.0.0.1:{port}/app: ")
    assert PASSWORD not in message and PASSWORD not in repr(err.value.details)
    assert ctx.secrets["pg.password"] == PASSWORD


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def password_pg() -> AsyncIterator[str]:
    """A private server that asks role `ada` for a password: its DSN without the password."""
    server: PgServer = await asyncio.to_thread(start_test_postgres)
    try:
        assert server.base_dir is not None
        hba = server.base_dir / "pg" / "pg_hba.conf"
        hba.write_text("host all ada 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn = await asyncpg.connect(server.admin_dsn)
        try:
            await conn.execute(f"CREATE ROLE ada LOGIN PASSWORD '{PASSWORD}'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        parts = urlsplit(server.admin_dsn)
        yield f"postgresql://ada@{parts.hostname}:{parts.port}/postgres"
    finally:
        await asyncio.to_thread(server.stop)


async def test_postgres_wrong_password(pg_tool: PostgresTool, password_pg: str) -> None:
    good = pg_fields(password_pg, PASSWORD)
    bad = pg_fields(password_pg, WRONG_PASSWORD)
    ctx = make_ctx({"good": good, "bad": bad})
    assert await pg_tool.run(ctx, {"auth": "good", "query": "SELECT current_user AS u"}) == [
        {"u": "ada"}
    ]
    with pytest.raises(ToolError) as err:
        await pg_tool.run(
            ctx, {"auth": {"type": "postgres", "credential": "bad"}, "query": "SELECT 1"}
        )
    message = str(err.value)
    assert message.startswith(
        f"postgres tool: cannot connect to ada@{good['host']}:"
        f"{good['port']}/postgres: password authentication failed"
    )
    assert err.value.details["sqlstate"] == "28P01"
    assert WRONG_PASSWORD not in message and PASSWORD not in message
    # The same with a DSN holding the password.
    dsn = password_pg.replace("ada@", f"ada:{WRONG_PASSWORD}@")
    with pytest.raises(ToolError) as err:
        await pg(pg_tool, dsn, "SELECT 1")
    assert WRONG_PASSWORD not in str(err.value)
    assert "password authentication failed" in str(err.value)


async def test_postgres_credential_forms_and_secrets(pg_tool: PostgresTool, pg_dsn: str) -> None:
    ctx = make_ctx({"as_dsn": {"dsn": pg_dsn}, "as_fields": pg_fields(pg_dsn)})
    for auth in ("as_dsn", "as_fields", {"type": "postgres", "credential": "as_dsn"}):
        assert await pg_tool.run(ctx, {"auth": auth, "command": "SELECT 1 AS one"}) == [{"one": 1}]
    assert ctx.secrets["as_fields.password"] == urlsplit(pg_dsn).password
    assert ctx.secrets["as_dsn.dsn"] == pg_dsn
    encoded = base64.b64encode(b"SELECT 'b64' AS src").decode()
    assert await pg_tool.run(ctx, {"auth": "as_dsn", "query_b64": encoded}) == [{"src": "b64"}]


async def test_sql_from_a_script_file_wins_over_query(
    pg_tool: PostgresTool, pg_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "count.sql").write_text("SELECT $1::int * 2 AS doubled; -- done\n")
    ctx = make_ctx()
    ctx.script_root = tmp_path
    spec = {
        "connection_string": pg_dsn,
        "query": "SELECT 'inline'",
        "params": [21],
        "script": {"uri": "./sql/count.sql", "source": {"type": "file"}},
    }
    assert await pg_tool.run(ctx, spec) == [{"doubled": 42}]
    assert [fact["kind"] for fact in ctx.events] == ["script"]
    ctx.files = {"q.sql": "SELECT 42 AS answer"}
    assert await DuckdbTool().run(ctx, {"script": {"uri": "q.sql"}}) == [{"answer": 42}]


async def test_postgres_one_pool_per_credential_closed_when_idle(pg_dsn: str) -> None:
    tool = PostgresTool(idle=0.2)
    try:
        ctx = make_ctx({"a": {"dsn": pg_dsn}, "b": pg_fields(pg_dsn)})
        for _ in range(3):
            await tool.run(ctx, {"auth": "a", "query": "SELECT 1"})
        assert len(tool.pools) == 1
        await tool.run(ctx, {"auth": "b", "query": "SELECT 1"})
        assert len(tool.pools) == 2
        await asyncio.sleep(0.3)
        # Idle pools are closed lazily, on the next use of the tool.
        await tool.run(ctx, {"auth": "a", "query": "SELECT 1"})
        assert len(tool.pools) == 1
    finally:
        await tool.aclose()
    assert len(tool.pools) == 0


async def test_postgres_concurrent_calls_share_the_pool(pg_tool: PostgresTool, pg_dsn: str) -> None:
    results = await asyncio.gather(
        *(
            pg(pg_tool, pg_dsn, "SELECT $1::int AS i, pg_backend_pid() AS pid", [i])
            for i in range(20)
        )
    )
    assert sorted(r[0]["i"] for r in results) == list(range(20))
    assert len({r[0]["pid"] for r in results}) <= 10  # the pool's size bounds the sessions
    assert len(pg_tool.pools) == 1


# -- duckdb ---------------------------------------------------------------------------------


async def duck(sql: str, params: Any = None, ctx: ToolContext | None = None, **spec: Any) -> Any:
    """Run `sql` with the duckdb tool."""
    return await DuckdbTool().run(ctx or make_ctx(), {"query": sql, "params": params, **spec})


async def test_duckdb_memory_is_fresh_per_call_and_file_persists(tmp_path: Path) -> None:
    assert await duck("CREATE TABLE t (id INT); INSERT INTO t VALUES (1), (2)") == {
        "rowcount": 2,
        "status": "INSERT",
    }
    with pytest.raises(ToolError, match="Table with name t does not exist"):
        await duck("SELECT * FROM t")
    db = str(tmp_path / "data.duckdb")
    await duck("CREATE TABLE t (id INT, name VARCHAR)", database=db)
    await duck("INSERT INTO t VALUES (?, ?), (?, ?)", [1, "a", 2, "b"], database=db)
    assert await duck("SELECT * FROM t WHERE id > $1 ORDER BY id", [0], database=db) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]
    assert await duck("SELECT name FROM t WHERE id = $id", {"id": 2}, database=db) == [
        {"name": "b"}
    ]


async def test_duckdb_statements_share_one_transaction(tmp_path: Path) -> None:
    db = str(tmp_path / "tx.duckdb")
    await duck("CREATE TABLE t (id INT PRIMARY KEY)", database=db)
    with pytest.raises(ToolError) as err:
        await duck(
            "INSERT INTO t VALUES (?); INSERT INTO t VALUES (?); INSERT INTO t VALUES ('x;y')",
            [1, 2],
            database=db,
        )
    assert "duckdb tool: Conversion Error" in str(err.value)
    assert "(statement 3 of 3)" in str(err.value)
    assert await duck("SELECT count(*) AS n FROM t", database=db) == [{"n": 0}]


async def test_duckdb_types_are_json_safe() -> None:
    rows = await duck("""
        SELECT 1.50::DECIMAL(5, 2) AS d, 2.00::DECIMAL(5, 2) AS whole, DATE '2024-01-02' AS day,
               TIMESTAMPTZ '2024-01-02 03:04:05+00' AS ts, INTERVAL 90 SECOND AS span,
               '\\xAA'::BLOB AS blob, {'a': 1, 'b': [1, 2]} AS s, [1, 2] AS l,
               '{"k": [1]}'::JSON AS j, 10::HUGEINT AS h,
               '6c1f9f0e-1b7e-4c8e-9d7e-6a4b1c2d3e4f'::UUID AS u""")
    assert rows == [
        {
            "d": 1.5,
            "whole": 2,
            "day": "2024-01-02",
            "ts": "2024-01-02T03:04:05+00:00",
            "span": 90.0,
            "blob": "qg==",
            "s": {"a": 1, "b": [1, 2]},
            "l": [1, 2],
            "j": {"k": [1]},
            "h": 10,
            "u": "6c1f9f0e-1b7e-4c8e-9d7e-6a4b1c2d3e4f",
        }
    ]


async def test_duckdb_transform_example_playbook() -> None:
    """The shared duckdb_transform example's first step, rendered as the runner renders it."""
    doc = YAML(typ="safe").load(FIXTURES / "duckdb_transform" / "duckdb_transform.yaml")
    step = next(s for s in doc["workflow"] if s["step"] == "start")
    context = render.build_context(
        workload=doc["workload"], variables={}, steps={}, execution_id="1"
    )
    spec = {
        key: render.render(value, context, where=f"tool.{key}")
        for key, value in step["tool"].items()
    }
    result = await DuckdbTool().run(make_ctx(), {**spec, "args": {}})
    assert result == [{"region": "north", "total": 17}, {"region": "south", "total": 5}]


async def test_duckdb_errors_and_timeout() -> None:
    with pytest.raises(ToolError) as err:
        await duck("SELECT * FROM nowhere")
    assert str(err.value).startswith("duckdb tool: Catalog Error: Table with name nowhere")
    assert err.value.details["exception"] == "CatalogException"
    with pytest.raises(ToolError, match="duckdb tool: Parser Error"):
        await duck("SELEKT 1")
    with pytest.raises(ToolError, match="duckdb tool: cannot open database"):
        await duck("SELECT 1", database="/nonexistent/dir/x.duckdb")
    started = time.monotonic()
    with pytest.raises(
        ToolTimeout,
        match=r"duckdb tool: still running after the step's "
        r"timeout of 0\.5s; interrupted",
    ):
        await duck(
            "SELECT sum(hash(a.range * b.range)) FROM range(200000) a, range(200000) b",
            ctx=make_ctx(timeout=0.5),
        )
    assert time.monotonic() - started < 4


def postgres_extension_loads() -> bool:
    """Whether this machine's DuckDB can load its postgres extension (installed, or
    downloadable), probed apart from the tool so the test knows which outcome is right."""
    conn = duckdb.connect()
    try:
        conn.execute("LOAD postgres")
    except duckdb.Error:
        return False
    finally:
        conn.close()
    return True


async def test_duckdb_attach_postgres(pg_dsn: str) -> None:
    """Attaches where DuckDB's postgres extension loads; where it cannot (no copy, no
    internet: every machine of this project), the step fails saying so, without secrets."""
    ctx = make_ctx({"pg": pg_fields(pg_dsn, PASSWORD)})
    spec = {
        "query": "SELECT 42 AS answer FROM pgdb.information_schema.tables LIMIT 1",
        "attach": [{"name": "pgdb", "auth": "pg"}],
    }
    if await asyncio.to_thread(postgres_extension_loads):
        assert await DuckdbTool().run(ctx, spec) == [{"answer": 42}]
        return
    with pytest.raises(ToolError) as info:
        await DuckdbTool().run(ctx, spec)
    message = str(info.value)
    assert message.startswith("duckdb tool: `attach` needs DuckDB's postgres extension")
    assert f"installed for DuckDB {duckdb.__version__}" in message
    assert PASSWORD not in message and PASSWORD not in repr(info.value.details)


# -- snowflake (the real connector, over fakesnow's HTTP server) ------------------------------


@pytest.fixture(scope="module")
def snowflake_credential() -> Iterator[dict[str, Any]]:
    """A credential for a fakesnow server (database db1, schema s1) on a free port."""
    with fakesnow_server() as connection:
        yield {
            **connection,
            "password": SNOW_PASSWORD,
            "database": "db1",
            "schema": "s1",
            "login_timeout": 10,
        }


async def snow(
    credential: Mapping[str, Any], sql: str, params: Any = None, ctx: ToolContext | None = None
) -> Any:
    """Run `sql` with the snowflake tool."""
    ctx = ctx or make_ctx({"sf": credential})
    return await SnowflakeTool().run(ctx, {"auth": "sf", "query": sql, "params": params})


async def test_snowflake_round_trip(snowflake_credential: dict[str, Any]) -> None:
    assert await snow(
        snowflake_credential,
        "CREATE OR REPLACE TABLE items "
        "(id INT, name VARCHAR, born DATE, price NUMBER(10, 2), doc VARIANT)",
    ) == {"rowcount": 0, "status": "CREATE"}
    inserted = await snow(
        snowflake_credential,
        "INSERT INTO items (id, name, born, price) VALUES (?, ?, ?, ?); "
        "INSERT INTO items (id, name, doc) SELECT 2, 'it\\'s; fine', "
        "PARSE_JSON('{\"k\": [1]}')",
        [1, "ada", "2024-02-29", "9.50"],
    )
    assert inserted == {"rowcount": 1, "status": "INSERT"}
    rows = await snow(snowflake_credential, "SELECT * FROM items WHERE id >= ? ORDER BY id", [1])
    assert rows == [
        {"ID": 1, "NAME": "ada", "BORN": "2024-02-29", "PRICE": 9.5, "DOC": None},
        {"ID": 2, "NAME": "it's; fine", "BORN": None, "PRICE": None, "DOC": {"k": [1]}},
    ]


async def test_snowflake_statements_share_one_transaction(
    snowflake_credential: dict[str, Any],
) -> None:
    await snow(snowflake_credential, "CREATE OR REPLACE TABLE tx (id INT)")
    with pytest.raises(ToolError) as err:
        await snow(
            snowflake_credential,
            "INSERT INTO tx VALUES (1); INSERT INTO tx VALUES (2); SELECT * FROM nowhere",
        )
    assert "snowflake tool" in str(err.value) and "(statement 3 of 3)" in str(err.value)
    assert "NOWHERE does not exist" in str(err.value)
    assert err.value.details["sqlstate"] == "42S02"
    assert await snow(snowflake_credential, "SELECT count(*) AS n FROM tx") == [{"N": 0}]


async def test_snowflake_errors_never_name_the_password(
    snowflake_credential: dict[str, Any],
) -> None:
    ctx = make_ctx({"sf": snowflake_credential})
    with pytest.raises(ToolError) as err:
        await snow(snowflake_credential, "SELEKT 1", ctx=ctx)
    assert str(err.value).startswith("snowflake tool: ")
    assert err.value.error_type == "snowflake"
    assert ctx.secrets["sf.password"] == SNOW_PASSWORD
    port = free_port()
    unreachable = {**snowflake_credential, "port": port, "login_timeout": 2, "network_timeout": 1}
    with pytest.raises(ToolError) as err:
        await snow(unreachable, "SELECT 1")
    assert str(err.value).startswith("snowflake tool: cannot connect to account 'fakesnow'")
    assert SNOW_PASSWORD not in str(err.value)
