"""The `snowflake` sink: rows into a Snowflake table through the official connector.

`{kind: snowflake, auth, table: [db.]schema.table, mode: insert|upsert|replace, key: [...]}`.
Rows go in batches as `INSERT INTO t SELECT ... FROM VALUES (?, ...), ...` with values bound
by the server; VARIANT / OBJECT / ARRAY columns get PARSE_JSON of the encoded value (Snowflake
allows no such expression in a plain VALUES list). insert and replace (DELETE, then insert)
run in one transaction; upsert stages the rows in a temporary table and applies them with
one MERGE ... ON key (the temporary table lives in the session's schema, so the credential
needs a `database` and `schema`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plugins.base import ToolContext, in_thread
from plugins.sinks.tables import TableWrite, columns_of, table_write, value_batches
from plugins.snowflake import SnowflakeSession, execute, query_timeout, rollback
from plugins.sql import quote_ident, quote_name, value_of
from plugins.sql_auth import resolve_auth, snowflake_params

if TYPE_CHECKING:
    from snowflake.connector import SnowflakeConnection

WHO = "snowflake sink"
#: Bound values per statement (rows per batch = this / columns; VALUES holds 16,384 rows).
BATCH_VALUES = 10000
_JSON_TYPES = frozenset({"VARIANT", "OBJECT", "ARRAY", "MAP"})


class SnowflakeSink:
    """Sink kind `snowflake`: one connection per write."""

    kind = "snowflake"

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Write `rows` into `spec["table"]`; `{"rows": n, "table", "mode"}`."""
        write = table_write(spec, rows, str.upper, WHO)
        if write.nothing_to_do:
            return write.report(0)
        label, data = await resolve_auth(ctx, spec, WHO)
        connect = snowflake_params(ctx, label, data, WHO)

        def work() -> int:
            with SnowflakeSession(ctx, connect, WHO) as conn:
                return write_rows(ctx, conn, write, rows)

        return write.report(await in_thread(ctx, work, WHO))


def write_rows(
    ctx: ToolContext,
    conn: SnowflakeConnection,
    write: TableWrite,
    rows: list[dict[str, Any]],
) -> int:
    """Write `rows` all or nothing; the number of rows sent to the table."""
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    table, name = write.table, write.name
    qualified = quote_name(table)
    timeout = query_timeout(ctx)
    cursor = conn.cursor()

    def run(sql: str, args: list[Any] | None = None, where: str = "") -> None:
        execute(ctx, cursor, sql, args, timeout, where, who=WHO)

    try:
        run(f"SELECT * FROM {qualified} LIMIT 0", where=f" (table {name})")
        types = {
            column.name: FIELD_ID_TO_NAME[column.type_code] for column in cursor.description or []
        }
        matched = columns_of(write, types, WHO)
        columns = matched.names
        semi = [types[c] in _JSON_TYPES for c in columns]
        plan = list(zip(matched.sources.values(), semi, strict=True))
        records = [
            tuple(_value(value_of(row, keys_of), is_json) for keys_of, is_json in plan)
            for row in rows
        ]
        if write.mode == "upsert":
            merge_key, records = matched.upsert(write.key, records)
            _upsert(run, table, columns, semi, merge_key, records)
            return len(records)
        run("BEGIN")
        try:
            if write.mode == "replace":
                run(f"DELETE FROM {qualified}")  # DELETE, unlike TRUNCATE, can roll back
            _insert(run, qualified, columns, semi, records)
            run("COMMIT")
        except BaseException:
            rollback(cursor)
            raise
    finally:
        cursor.close()
    return len(records)


def _insert(
    run: Callable[..., None],
    qualified: str,
    columns: list[str],
    semi: list[bool],
    records: list[tuple[Any, ...]],
) -> None:
    """INSERT the records in batches of bound VALUES."""
    for values, args in value_batches(records, len(columns), BATCH_VALUES):
        run(f"INSERT INTO {qualified} ({_list(columns)}) {_source(columns, semi, values)}", args)


def _upsert(
    run: Callable[..., None],
    table: tuple[str, ...],
    columns: list[str],
    semi: list[bool],
    key: list[str],
    records: list[tuple[Any, ...]],
) -> None:
    # Stage every row, then one MERGE: a single statement, so all or nothing without an
    # explicit transaction (the CREATE of the stage would commit one anyway). The stage is
    # a temporary table of the session's own schema (the credential's `schema`).
    stage = quote_ident(f"NOETL_SINK_{uuid.uuid4().hex.upper()}")
    run(
        f"CREATE TEMPORARY TABLE {stage} AS SELECT {_list(columns)} FROM "
        f"{quote_name(table)} LIMIT 0"
    )
    try:
        _insert(run, stage, columns, semi, records)
        run(_merge(quote_name(table), columns, key, stage))
    finally:
        run(f"DROP TABLE IF EXISTS {stage}")


def _list(columns: list[str]) -> str:
    return ", ".join(quote_ident(c) for c in columns)


def _source(columns: list[str], semi: list[bool], values: str) -> str:
    """The SELECT over a batch's VALUES list."""
    exprs = [
        f"PARSE_JSON(column{i})" if is_json else f"column{i}"
        for i, is_json in enumerate(semi, start=1)
    ]
    named = ", ".join(f"{expr} AS {quote_ident(c)}" for expr, c in zip(exprs, columns, strict=True))
    return f"SELECT {named} FROM VALUES {values}"


def _merge(qualified: str, columns: list[str], key: list[str], stage: str) -> str:
    on = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in key)
    updates = [c for c in columns if c not in key]
    matched = (
        (
            " WHEN MATCHED THEN UPDATE SET "
            + ", ".join(f"{quote_ident(c)} = s.{quote_ident(c)}" for c in updates)
        )
        if updates
        else ""
    )
    inserted = ", ".join(f"s.{quote_ident(c)}" for c in columns)
    return (
        f"MERGE INTO {qualified} t USING {stage} s ON {on}{matched} "
        f"WHEN NOT MATCHED THEN INSERT ({_list(columns)}) VALUES ({inserted})"
    )


def _value(value: Any, is_json: bool) -> Any:
    if value is None:
        return None
    if is_json:
        return json.dumps(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value
