"""The pure parts of the SQL tools and sinks: splitting, JSON-safe values, credentials, names."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
import duckdb
import pytest
from asyncpg.types import Type
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext, in_thread, until_done
from plugins.postgres import coerce_params, coercer
from plugins.sinks import SINK_CLASSES, Sink, get_sink, rows_of
from plugins.sinks.file import encode_rows, format_of
from plugins.sql import (
    Statement,
    dedupe_last,
    json_safe,
    key_columns,
    match_columns,
    params_of,
    parse_table_name,
    quote_ident,
    quote_name,
    row_keys,
    sink_mode,
    split_statements,
    sql_text,
    statement_params,
    timeout_ms,
)
from plugins.sql_auth import describe_postgres, postgres_params, resolve_auth, snowflake_params
from tests.support.tools import tool_context


def make_ctx(
    credentials: Mapping[str, Mapping[str, Any]] | None = None,
    timeout: float | None = 10.0,
    **kwargs: Any,
) -> ToolContext:
    """A context whose credential store is `credentials`."""
    return tool_context(credentials, timeout=timeout, **kwargs)


def texts(sql: str, **kwargs: Any) -> list[str]:
    return [s.text for s in split_statements(sql, **kwargs)]


# -- statement splitting --------------------------------------------------------------------


def test_split_plain_statements_and_drops_empty_ones() -> None:
    assert texts("SELECT 1; SELECT 2;;  ;\n") == ["SELECT 1", "SELECT 2"]
    assert texts("") == []
    assert texts("  -- only a comment;\n /* and; another */ ") == []


def test_split_respects_quotes_and_doubled_quotes() -> None:
    sql = "INSERT INTO t VALUES ('a;b', 'it''s; fine'); SELECT \"odd;name\" FROM \"t\"\"x\""
    assert texts(sql) == [
        "INSERT INTO t VALUES ('a;b', 'it''s; fine')",
        'SELECT "odd;name" FROM "t""x"',
    ]


def test_split_backslash_escapes_only_in_e_strings_for_postgres() -> None:
    # In a standard string a backslash is literal: the quote after it ends the string.
    assert texts(r"SELECT 'a\'; SELECT 2") == [r"SELECT 'a\'", "SELECT 2"]
    assert texts(r"SELECT E'a\'; b'; SELECT 2") == [r"SELECT E'a\'; b'", "SELECT 2"]
    # `e` ending an identifier is not an E-string prefix.
    assert texts(r"SELECT name'a\'; SELECT 2") == [r"SELECT name'a\'", "SELECT 2"]


def test_split_backslash_escapes_everywhere_for_snowflake() -> None:
    sql = r"INSERT INTO t VALUES ('it\'s; ok'); SELECT 1"
    assert texts(sql, backslash_escapes=True) == [r"INSERT INTO t VALUES ('it\'s; ok')", "SELECT 1"]


def test_split_respects_dollar_quoting() -> None:
    body = "BEGIN RETURN 1; END;"
    sql = (
        f"CREATE FUNCTION f() RETURNS int AS $$ {body} $$ LANGUAGE plpgsql;"
        f"DO $body$ BEGIN PERFORM 'x;$$'; END $body$; SELECT $1, $2"
    )
    assert texts(sql) == [
        f"CREATE FUNCTION f() RETURNS int AS $$ {body} $$ LANGUAGE plpgsql",
        "DO $body$ BEGIN PERFORM 'x;$$'; END $body$",
        "SELECT $1, $2",
    ]


def test_split_dollar_inside_an_identifier_opens_no_quote() -> None:
    assert texts("SELECT a$b$c FROM t; SELECT 2") == ["SELECT a$b$c FROM t", "SELECT 2"]


def test_split_respects_comments_nested_and_line() -> None:
    sql = (
        "SELECT 1 -- not here; nor here\n; /* outer /* inner; */ still; */ SELECT 2;"
        "-- trailing; comment"
    )
    assert texts(sql) == [
        "SELECT 1 -- not here; nor here",
        "/* outer /* inner; */ still; */ SELECT 2",
    ]


def test_split_unterminated_quote_runs_to_the_end() -> None:
    assert texts("SELECT 'abc; SELECT 2") == ["SELECT 'abc; SELECT 2"]
    assert texts("SELECT $$abc; SELECT 2") == ["SELECT $$abc; SELECT 2"]
    assert texts("SELECT 1 /* open; comment") == ["SELECT 1 /* open; comment"]


def test_statement_keyword_and_placeholders() -> None:
    [a, b, c, d] = split_statements(
        "-- lead\n/* c */ insert into t values ($1, $3, '$2');"
        "(select ? , '?', ?);"
        'select $name, $other::int, "$x";'
        "with x as (select 1) select * from x"
    )
    assert (a.keyword, a.numbered, a.qmarks) == ("INSERT", 3, 0)
    assert (b.keyword, b.qmarks) == ("SELECT", 2)
    assert (c.keyword, c.named) == ("SELECT", frozenset({"name", "other"}))
    assert d.keyword == "WITH"


_FRAGMENTS = st.sampled_from(
    [
        "SELECT 1",
        "'a;b'",
        "'it''s'",
        '"x;y"',
        "$$p;q$$",
        "$t$ r; $$ s $t$",
        "-- c;\n",
        "/* d; */",
        "E'\\'; '",
        "x",
        "$1",
        "?",
        "(",
        ")",
        ",",
    ]
)


@given(st.lists(st.lists(_FRAGMENTS, min_size=1, max_size=6).map(" ".join), min_size=1, max_size=5))
def test_split_recovers_joined_statements(parts: list[str]) -> None:
    statements = [f"SELECT {part}" for part in parts]
    # A trailing line comment would swallow the `;` that follows it: end each with a newline.
    assert texts(";\n".join(s + "\n" for s in statements)) == [s.strip() for s in statements]


# -- params ---------------------------------------------------------------------------------


def test_statement_params_numbered_qmarks_and_named() -> None:
    numbered = Statement("select $2", "SELECT", numbered=2)
    assert statement_params(numbered, [1, 2, 3], 0, "duckdb tool") == ([1, 2], 0)
    qmarks = Statement("select ?, ?", "SELECT", qmarks=2)
    assert statement_params(qmarks, [1, 2, 3], 1, "duckdb tool") == ([2, 3], 3)
    named = Statement("select $a", "SELECT", named=frozenset({"a"}))
    assert statement_params(named, {"a": 1, "b": 2}, 0, "duckdb tool") == ({"a": 1}, 0)
    plain = Statement("select 1", "SELECT")
    assert statement_params(plain, [1], 0, "duckdb tool") == ([], 0)


@pytest.mark.parametrize(
    ("stmt", "params", "needle"),
    [
        (Statement("select $3", "SELECT", numbered=3), [1], "uses $3 but only 1"),
        (Statement("select ?, ?", "SELECT", qmarks=2), [1], "2 `?` placeholders but only 1"),
        (Statement("select $a", "SELECT", named=frozenset({"a"})), [1], "must be a mapping"),
        (Statement("select ?", "SELECT", qmarks=1), {"a": 1}, "must be a list"),
    ],
)
def test_statement_params_mismatch_is_a_tool_error(
    stmt: Statement, params: Any, needle: str
) -> None:
    with pytest.raises(ToolError, match="duckdb tool") as err:
        statement_params(stmt, params, 0, "duckdb tool")
    assert needle in str(err.value)
    assert err.value.error_type == "duckdb"


def test_params_of_accepts_lists_and_mappings_only() -> None:
    assert params_of({}, "postgres tool") == []
    assert params_of({"params": (1, 2)}, "postgres tool") == [1, 2]
    assert params_of({"params": {"a": 1}}, "postgres tool") == {"a": 1}
    with pytest.raises(ToolError, match="postgres tool: `params` must be a list"):
        params_of({"params": "1"}, "postgres tool")


async def test_sql_text_priority_and_aliases() -> None:
    ctx = make_ctx()
    encoded = base64.b64encode(b"SELECT 2").decode()
    assert await sql_text(ctx, {"query": "SELECT 1"}, "postgres tool") == "SELECT 1"
    assert await sql_text(ctx, {"command": "SELECT 3"}, "postgres tool") == "SELECT 3"
    assert (
        await sql_text(ctx, {"query": "SELECT 1", "query_b64": encoded}, "postgres tool")
        == "SELECT 2"
    )
    assert await sql_text(ctx, {"command_b64": encoded}, "postgres tool") == "SELECT 2"
    with pytest.raises(ToolError, match="postgres tool: `query`"):
        await sql_text(ctx, {"query": "  "}, "postgres tool")


# -- JSON-safe values -----------------------------------------------------------------------


def test_json_safe_converts_every_driver_type() -> None:
    ident = uuid.uuid4()
    value = {
        "int": decimal.Decimal("3.00"),
        "frac": decimal.Decimal("1.25"),
        "nan": decimal.Decimal("NaN"),
        "date": dt.date(2024, 1, 2),
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "time": dt.time(12, 30),
        "interval": dt.timedelta(days=1, seconds=1.5),
        "uuid": ident,
        "bytes": b"\xde\xad",
        "ip": ipaddress.ip_address("10.0.0.1"),
        "tuple": (1, decimal.Decimal("2")),
        "set": frozenset({1}),
        "nested": {1: [dt.date(2024, 1, 1)]},
        "range": asyncpg.Range(1, 5),
        "bits": asyncpg.BitString.from_int(5, 3),
        "none": None,
        "bool": True,
        "float": 1.5,
        "text": "x",
    }
    safe = json_safe(value)
    assert safe["int"] == 3 and isinstance(safe["int"], int)
    assert safe["frac"] == 1.25
    assert safe["nan"] != safe["nan"]  # NaN stays a float NaN
    assert safe["date"] == "2024-01-02"
    assert safe["ts"] == "2024-01-02T03:04:05+00:00"
    assert safe["time"] == "12:30:00"
    assert safe["interval"] == 86401.5
    assert safe["uuid"] == str(ident)
    assert safe["bytes"] == base64.b64encode(b"\xde\xad").decode()
    assert safe["ip"] == "10.0.0.1"
    assert safe["tuple"] == [1, 2]
    assert safe["set"] == [1]
    assert safe["nested"] == {"1": ["2024-01-01"]}
    assert safe["range"] == {
        "lower": 1,
        "upper": 5,
        "lower_inc": True,
        "upper_inc": False,
        "empty": False,
    }
    assert safe["bits"] == "101"
    assert (safe["none"], safe["bool"], safe["float"], safe["text"]) == (None, True, 1.5, "x")
    del safe["nan"]
    json.dumps(safe)  # everything left is plain JSON


# -- names ----------------------------------------------------------------------------------


def test_parse_table_name_folds_bare_parts_and_keeps_quoted_ones() -> None:
    assert parse_table_name("public.Users", str.lower, "postgres sink") == ("public", "users")
    assert parse_table_name('"My Schema"."My.Table"', str.lower, "postgres sink") == (
        "My Schema",
        "My.Table",
    )
    assert parse_table_name('db.s."q""uote"', str.upper, "snowflake sink") == ("DB", "S", 'q"uote')
    assert parse_table_name("t", str, "duckdb sink") == ("t",)


@pytest.mark.parametrize(
    "name", ["", "a b", "a.b.c.d", "x; drop table y", '"open', "a..b", '"x"y', None, 3]
)
def test_parse_table_name_rejects_anything_else(name: Any) -> None:
    with pytest.raises(ToolError, match="postgres sink: "):
        parse_table_name(name, str.lower, "postgres sink")


def test_quoting() -> None:
    assert quote_ident('a"b') == '"a""b"'
    assert quote_name(("s", "t")) == '"s"."t"'


def test_match_columns_exact_then_unique_case_insensitive() -> None:
    assert match_columns(["id", "EMAIL"], ["id", "email"], "t", "postgres sink") == {
        "id": "id",
        "EMAIL": "email",
    }
    with pytest.raises(ToolError, match="has no column 'nope'"):
        match_columns(["nope"], ["id"], "t", "postgres sink")
    # Two columns equal ignoring case: only the exact name picks one.
    assert match_columns(["ab"], ["ab", "AB"], "t", "postgres sink") == {"ab": "ab"}
    with pytest.raises(ToolError, match="has no column 'Ab'"):
        match_columns(["Ab"], ["ab", "AB"], "t", "postgres sink")


def test_row_keys_key_columns_mode_and_dedupe() -> None:
    rows = [{"a": 1, "b": 2}, {"c": 3, "a": 4}]
    assert row_keys(rows) == ["a", "b", "c"]
    assert key_columns({"key": "a"}, "upsert", ["a", "b"], "postgres sink") == ["a"]
    with pytest.raises(ToolError, match="mode upsert needs `key`"):
        key_columns({}, "upsert", ["a"], "postgres sink")
    with pytest.raises(ToolError, match="key column 'z' is in no row"):
        key_columns({"key": ["z"]}, "upsert", ["a"], "postgres sink")
    assert sink_mode({}, "postgres sink") == "insert"
    with pytest.raises(ToolError, match="`mode` must be one of"):
        sink_mode({"mode": "merge"}, "postgres sink")
    records = [(1, "a"), (2, "b"), (1, "c"), ({"k": [1]}, "d"), ({"k": [1]}, "e")]
    assert dedupe_last(records, [0]) == [(1, "c"), (2, "b"), ({"k": [1]}, "e")]


# -- credentials ----------------------------------------------------------------------------


async def test_resolve_auth_forms() -> None:
    pg = {"dsn": "postgresql://u:pw@h/db"}
    ctx = make_ctx({"pg_main": pg}, bindings={"src": "pg_main"})
    assert await resolve_auth(ctx, {"auth": "pg_main"}, "postgres tool") == ("pg_main", pg)
    assert await resolve_auth(
        ctx, {"auth": {"type": "postgres", "credential": "pg_main"}}, "postgres tool"
    ) == ("pg_main", pg)
    assert await resolve_auth(ctx, {"auth": "src"}, "postgres tool") == ("pg_main", pg)
    assert await resolve_auth(ctx, {"auth": {"host": "h"}}, "postgres tool") == (
        "auth",
        {"host": "h"},
    )
    assert await resolve_auth(ctx, {"connection_string": "postgresql://h/db"}, "postgres tool") == (
        "connection_string",
        {"dsn": "postgresql://h/db"},
    )
    with pytest.raises(ToolError, match="postgres tool: `auth`"):
        await resolve_auth(ctx, {}, "postgres tool")


def test_postgres_params_registers_secrets_and_never_names_them() -> None:
    ctx = make_ctx()
    params = postgres_params(
        ctx, "pg", {"dsn": "postgresql://ada:s%40cret@db.example:6543/app"}, "postgres tool"
    )
    assert params == {"dsn": "postgresql://ada:s%40cret@db.example:6543/app"}
    assert set(ctx.secrets.values()) >= {"s@cret", params["dsn"]}
    assert describe_postgres(params) == "ada@db.example:6543/app"
    fields = postgres_params(
        ctx,
        "pg2",
        {
            "host": "h",
            "port": "5433",
            "username": "u",
            "password": "pw2",
            "dbname": "d",
            "sslmode": "require",
        },
        "postgres tool",
    )
    assert fields == {
        "host": "h",
        "port": 5433,
        "user": "u",
        "password": "pw2",
        "database": "d",
        "ssl": "require",
    }
    assert ctx.secrets["pg2.password"] == "pw2"
    assert describe_postgres(fields) == "u@h:5433/d"
    with pytest.raises(ToolError, match="needs `dsn` or `host`"):
        postgres_params(ctx, "bad", {"user": "u"}, "postgres tool")
    with pytest.raises(ToolError, match="not a postgresql:// URI"):
        postgres_params(ctx, "bad", {"dsn": "mysql://x"}, "postgres tool")


def test_errors_are_masked_by_the_context() -> None:
    ctx = make_ctx()
    dsn = "postgresql://etl:pa%40ss-word@db:5432/w"
    postgres_params(ctx, "pg", {"dsn": dsn}, "postgres tool")
    # A driver naming the server by its DSN, or quoting the decoded password.
    message = ctx.mask(f"cannot reach {dsn}; password pa@ss-word rejected")
    assert message == "cannot reach ***; password *** rejected"
    ctx.secrets.update({"a": "hunter2", "b": "hunter22"})
    assert ctx.mask("pw hunter22 and hunter2") == "pw *** and ***"


def test_snowflake_params_with_password_and_private_key() -> None:
    ctx = make_ctx()
    params = snowflake_params(
        ctx,
        "sf",
        {
            "account": "acme",
            "user": "u",
            "password": "pw",
            "warehouse": "wh",
            "database": "db",
            "schema": "s",
            "role": "r",
            "ignored": 1,
        },
        "snowflake tool",
    )
    assert params == {
        "account": "acme",
        "user": "u",
        "password": "pw",
        "warehouse": "wh",
        "database": "db",
        "schema": "s",
        "role": "r",
    }
    assert ctx.secrets["sf.password"] == "pw"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"phrase"),
    ).decode()
    params = snowflake_params(
        ctx,
        "sk",
        {"account": "acme", "user": "u", "private_key": pem, "private_key_passphrase": "phrase"},
        "snowflake tool",
    )
    assert params["private_key"].private_numbers() == key.private_numbers()
    assert ctx.secrets["sk.private_key"] == pem
    with pytest.raises(ToolError, match="unusable `private_key`") as err:
        snowflake_params(
            ctx, "bad", {"account": "a", "user": "u", "private_key": "nope"}, "snowflake tool"
        )
    assert "nope" not in str(err.value)
    with pytest.raises(ToolError, match="needs `account` and `user`"):
        snowflake_params(ctx, "bad", {"password": "x"}, "snowflake tool")


# -- postgres param conversion --------------------------------------------------------------


def pg_type(name: str, kind: str = "scalar") -> Type:
    return Type(oid=0, name=name, kind=kind, schema="pg_catalog")


def test_coerce_params_converts_text_to_the_parameter_types() -> None:
    types = tuple(
        pg_type(n)
        for n in (
            "int4",
            "numeric",
            "bool",
            "date",
            "timestamptz",
            "time",
            "interval",
            "text",
            "bytea",
            "jsonb",
            "float8",
        )
    )
    args = coerce_params(
        (*types, pg_type("_int4", "array")),
        [
            "42",
            "1.5",
            "yes",
            "2024-01-02",
            "2024-01-02T03:04:05Z",
            "12:30",
            90,
            7,
            base64.b64encode(b"ab").decode(),
            '{"a": 1}',
            "2.5",
            "[1, 2]",
        ],
        0,
        1,
    )
    assert args == [
        42,
        decimal.Decimal("1.5"),
        True,
        dt.date(2024, 1, 2),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.time(12, 30),
        dt.timedelta(seconds=90),
        "7",
        b"ab",
        '{"a": 1}',
        2.5,
        [1, 2],
    ]


def test_coerce_params_errors_name_the_param() -> None:
    with pytest.raises(ToolError, match=r"param \$1 \(str\) is not a valid int4"):
        coerce_params((pg_type("int4"),), ["x"], 0, 1)
    with pytest.raises(ToolError, match=r"uses \$2 but only 1 params .*statement 2 of 3"):
        coerce_params((pg_type("int4"), pg_type("int4")), [1], 1, 3)


def test_row_values_for_json_columns_are_encoded_even_when_text() -> None:
    convert = coercer(pg_type("jsonb"), row_value=True)
    assert convert is not None and convert("hello") == b'"hello"'
    assert coercer(pg_type("jsonb")) is None  # a param: the codec decides


# -- time bounds ----------------------------------------------------------------------------


def test_timeout_ms() -> None:
    assert timeout_ms(make_ctx(timeout=None)) is None
    assert timeout_ms(make_ctx(timeout=1.5)) == 1500
    assert timeout_ms(make_ctx(timeout=0.0001)) == 1


async def test_until_done_times_out_and_cancels() -> None:
    ctx = make_ctx(timeout=0.01)
    with pytest.raises(ToolTimeout, match="postgres tool: no answer within"):
        await until_done(ctx, asyncio.sleep(10), "postgres tool", grace=0.01)
    ctx = make_ctx(timeout=None)
    asyncio.get_running_loop().call_later(0.05, ctx.cancelled.set)
    with pytest.raises(ToolError, match="postgres tool: cancelled") as err:
        await until_done(ctx, asyncio.sleep(10), "postgres tool")
    assert err.value.error_type == "cancelled"
    assert await until_done(make_ctx(), asyncio.sleep(0, "done"), "x") == "done"


async def test_in_thread_interrupts_on_timeout() -> None:
    stop = threading.Event()
    ctx = make_ctx(timeout=0.05)
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match="duckdb tool: still running"):
        await in_thread(ctx, lambda: stop.wait(10), "duckdb tool", stop.set)
    assert time.monotonic() - started < 2
    assert await in_thread(make_ctx(), lambda: 7, "duckdb tool") == 7


# -- sinks: registry, rows, encodings -------------------------------------------------------


def test_rows_of() -> None:
    assert rows_of({"a": 1}) == [{"a": 1}]
    assert rows_of([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    assert rows_of([]) == []
    with pytest.raises(ToolError, match="item 1 of the data is a int"):
        rows_of([{"a": 1}, 2])
    with pytest.raises(ToolError, match="the data is a str"):
        rows_of("x")


def test_get_sink_knows_every_kind() -> None:
    assert set(SINK_CLASSES) == {
        "postgres",
        "duckdb",
        "snowflake",
        "file",
        "s3",
        "gcs",
        "event_log",
    }
    for kind in SINK_CLASSES:
        sink = get_sink(kind)
        assert isinstance(sink, Sink) and sink.kind == kind
        assert get_sink(kind) is sink
    with pytest.raises(ToolError, match="unknown kind 'ftp'"):
        get_sink("ftp")


def test_format_of() -> None:
    assert format_of({}, "out/x.JSONL", "file sink") == "jsonl"
    assert format_of({"format": "csv"}, "x.txt", "file sink") == "csv"
    with pytest.raises(ToolError, match="no known suffix"):
        format_of({}, "x.txt", "file sink")
    with pytest.raises(ToolError, match="must be one of"):
        format_of({"format": "xml"}, "x.json", "file sink")


def test_encode_rows_in_every_format(tmp_path: Any) -> None:
    rows = [
        {"id": 1, "when": dt.date(2024, 1, 2), "tags": ["a"], "ok": True},
        {"id": 2, "note": "x,y"},
    ]
    assert json.loads(encode_rows(rows, "json")) == [
        {"id": 1, "when": "2024-01-02", "tags": ["a"], "ok": True},
        {"id": 2, "note": "x,y"},
    ]
    assert [json.loads(line) for line in encode_rows(rows, "jsonl").splitlines()][1] == {
        "id": 2,
        "note": "x,y",
    }
    assert encode_rows(rows, "csv").decode().splitlines() == [
        "id,when,tags,ok,note",
        '1,2024-01-02,"[""a""]",true,',
        '2,,,,"x,y"',
    ]
    path = tmp_path / "x.parquet"
    path.write_bytes(encode_rows(rows, "parquet"))
    conn = duckdb.connect()
    assert conn.execute(
        "SELECT id, tags, note FROM read_parquet(?) ORDER BY id", [str(path)]
    ).fetchall() == [(1, ["a"], None), (2, None, "x,y")]
    with pytest.raises(ToolError, match="at least one row"):
        encode_rows([], "parquet")
