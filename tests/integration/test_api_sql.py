"""`/api/postgres/execute` against real PostgreSQL: off by default, token required, one
statement with a timeout and a row cap, an audit line without parameters."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from noetl.api import make_app
from noetl.api.credentials import credential_store
from noetl.client import Client
from tests.support.api import AUTH, TOKEN
from tests.support.openapi_check import Recorder, violations

Http = TestClient[Any, Any]
URL = "/api/postgres/execute"


@pytest.fixture
async def sql(client: Client) -> AsyncIterator[Http]:
    """The API with the SQL endpoint on: 1 s statement timeout, 5 rows at most."""
    recorder = Recorder()
    app = recorder.install(make_app(client, token=TOKEN, sql=True, sql_timeout=1.0, sql_rows=5))
    async with TestClient(TestServer(app), headers=AUTH) as c:
        yield c
        spec = await (await c.get("/api/openapi.json")).json()
    found = violations(spec, recorder.seen)
    assert not found, "\n".join(found)


async def call(http: Http, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await http.post(URL, json=body)
    return resp.status, await resp.json()


async def test_refused_when_off_or_without_a_token(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOETL_API_SQL", raising=False)
    query = {"query": "SELECT 1"}
    async with TestClient(TestServer(make_app(client, token=TOKEN)), headers=AUTH) as off:
        resp = await off.post(URL, json=query)
        assert resp.status == 403
        assert "NOETL_API_SQL=on" in (await resp.json())["error"]
    monkeypatch.setenv("NOETL_API_SQL", "on")
    async with TestClient(TestServer(make_app(client))) as open_api:
        resp = await open_api.post(URL, json=query)
        assert resp.status == 403
        assert "NOETL_API_TOKEN" in (await resp.json())["error"]
    async with TestClient(TestServer(make_app(client, token=TOKEN))) as anonymous:
        assert (await anonymous.post(URL, json=query)).status == 401
        resp = await anonymous.post(URL, json=query, headers=AUTH)
        assert (resp.status, await resp.json()) == (
            200,
            {"status": "ok", "result": [{"?column?": 1}], "truncated": False},
        )


async def test_rows_parameters_and_json_safe_values(
    sql: Http, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noetl.api.audit")
    secret = "parameter-never-logged"
    status, body = await call(
        sql,
        {
            "query": "SELECT $1::text AS s, 1.5::numeric AS n, now() AS t, "
            "gen_random_uuid() AS u, '\\x0102'::bytea AS b, '{\"a\": [1]}'::jsonb AS j, "
            "interval '1 day' AS i",
            "parameters": [secret],
        },
    )
    assert status == 200, body
    row = body["result"][0]
    assert (row["s"], row["n"], row["j"]) == (secret, "1.5", {"a": [1]})
    assert row["t"][:2] == "20" and len(row["u"]) == 36 and row["b"] == "AQI="
    assert row["i"] == "P1D"  # ISO 8601 duration
    audit = [r.getMessage() for r in caplog.records if r.name == "noetl.api.audit"]
    assert len(audit) == 1
    assert "runtime database" in audit[0] and "SELECT $1::text AS s" in audit[0]
    assert secret not in caplog.text

    status, body = await call(
        sql,
        {
            "query": "SELECT %(a)s::int + %(b)s::int AS sum, %(a)s::int AS a",
            "parameters": {"a": 2, "b": 3},
        },
    )
    assert (status, body["result"]) == (200, [{"sum": 5, "a": 2}])
    text = base64.b64encode(b"SELECT generate_series(1, 9) AS n").decode()
    status, body = await call(sql, {"query_base64": text})
    assert status == 200
    assert [r["n"] for r in body["result"]] == [1, 2, 3, 4, 5]  # the row cap
    assert body["truncated"] is True

    long_statement = "SELECT 1 AS x -- " + "y" * 400
    assert (await call(sql, {"query": long_statement}))[0] == 200
    line = [r.getMessage() for r in caplog.records if r.name == "noetl.api.audit"][-1]
    assert line.endswith(long_statement[:200])


async def test_statements_procedures_and_schemas(sql: Http) -> None:
    for query in (
        "CREATE SCHEMA api_test",
        "CREATE TABLE api_test.t (id int PRIMARY KEY, name text)",
        "CREATE PROCEDURE api_test.put(i int, n text) LANGUAGE sql AS "
        "$$ INSERT INTO api_test.t VALUES (i, n) $$",
    ):
        assert await call(sql, {"query": query}) == (
            200,
            {"status": "ok", "result": [], "truncated": False},
        )
    status, _ = await call(sql, {"procedure": "api_test.put", "parameters": [1, "one"]})
    assert status == 200
    status, body = await call(sql, {"query": "SELECT * FROM t", "schema": "api_test"})
    assert (status, body["result"]) == (200, [{"id": 1, "name": "one"}])
    for sent, words in (
        ({}, "exactly one"),
        ({"query": "SELECT 1", "procedure": "p"}, "exactly one"),
        ({"query": " "}, "empty"),
        ({"query_base64": "%%%"}, "base64"),
        ({"procedure": "drop table x; --"}, "procedure name"),
        ({"procedure": "p", "parameters": {"a": 1}}, "list"),
        ({"query": "SELECT %(a)s", "parameters": {"b": 1}}, "lacks a"),
        ({"query": "SELECT * FROM nowhere"}, "nowhere"),
        ({"query": "SELECT 1; SELECT 2"}, "failed"),
        ({"query": "SELECT $1::int", "parameters": ["x"]}, "$1"),
        ({"query": "SELECT 1", "credential": "a", "connection_string": "b"}, "not both"),
        (
            {"query": "SELECT 1", "connection_string": "postgresql://u:pw-9@127.0.0.1:1/x"},
            "cannot connect",
        ),
    ):
        status, body = await call(sql, sent)
        assert status == 400, (sent, body)
        assert words in body["error"], (sent, body)
        assert "pw-9" not in body["error"]


async def test_a_statement_past_its_timeout_is_cancelled(sql: Http, client: Client) -> None:
    status, body = await call(sql, {"query": "SELECT pg_sleep(30)"})
    assert status == 504
    assert "timeout" in body["error"]
    running = await client.store.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'"
    )
    assert running == 0
    assert (await call(sql, {"query": "SELECT 2 AS x"}))[1]["result"] == [{"x": 2}]


async def test_session_settings_of_user_sql_never_reach_the_store(
    sql: Http, client: Client
) -> None:
    # The store's pool skips asyncpg's reset on release: the endpoint resets what it lent.
    status, _ = await call(sql, {"query": "SET work_mem TO '7MB'"})
    assert status == 200
    pool = client.store.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        settings = {await conn.fetchval("SHOW work_mem") for conn in held}
    finally:
        for conn in held:
            await pool.release(conn)
    assert "7MB" not in settings


async def test_another_database_by_connection_string_or_credential(
    sql: Http, client: Client, pg_dsn: str
) -> None:
    status, body = await call(
        sql, {"query": "SELECT current_database() AS db", "connection_string": pg_dsn}
    )
    assert status == 200
    here = body["result"][0]["db"]
    store = await credential_store(client)
    await store.set("pg_self", "postgres", {"dsn": pg_dsn})
    status, body = await call(
        sql, {"query": "SELECT current_database() AS db", "credential": "pg_self"}
    )
    assert (status, body["result"]) == (200, [{"db": here}])
    status, body = await call(sql, {"query": "SELECT 1", "credential": "nope"})
    assert status == 404
