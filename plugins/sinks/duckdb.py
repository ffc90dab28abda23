"""The `duckdb` sink: rows into a table of a DuckDB database file, in one transaction.

`{kind: duckdb, database: path.duckdb, table, mode: insert|upsert|replace, key: [...]}`.
Rows go in as multi-row `INSERT ... VALUES` batches with bound values (DuckDB casts text to
the column types); upsert adds `ON CONFLICT (key) DO UPDATE` (the key needs a primary key or
unique constraint); replace deletes every row first. JSON columns take any value (encoded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import duckdb

from noetl.errors import ToolError
from plugins.base import ToolContext, in_thread
from plugins.duckdb import MEMORY, Session, rollback
from plugins.paths import confined
from plugins.sql import (
    column_sources,
    dedupe_last,
    key_columns,
    match_columns,
    parse_table_name,
    quote_ident,
    quote_name,
    row_keys,
    sink_mode,
    value_of,
)

WHO = "duckdb sink"
#: Bound values per INSERT statement (rows per batch = this / columns).
BATCH_VALUES = 5000


class DuckdbSink:
    """Sink kind `duckdb`."""

    kind = "duckdb"

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Write `rows` into `spec["table"]` of `spec["database"]`; `{"rows": n, ...}`."""
        mode = sink_mode(spec, WHO)
        database = spec.get("database")
        if not isinstance(database, str) or not database or database == MEMORY:
            raise ToolError(
                f"{WHO}: `database` (the path of a DuckDB file) is required", error_type="duckdb"
            )
        # DuckDB matches names ignoring case, quoted or not: keep them as written.
        table = parse_table_name(spec.get("table"), str, WHO)
        name = ".".join(table)
        keys = row_keys(rows)
        key = key_columns(spec, mode, keys, WHO)
        if not rows and mode != "replace":
            return {"rows": 0, "table": name, "mode": mode}
        session = Session(confined(database, ctx.data_root, WHO))

        def work() -> int:
            with session:
                return write_rows(session.conn, table, keys, key, rows, mode)

        written = await in_thread(ctx, work, WHO, session.interrupt)
        return {"rows": written, "table": name, "mode": mode, "database": database}


def write_rows(
    conn: duckdb.DuckDBPyConnection,
    table: tuple[str, ...],
    keys: list[str],
    key: list[str],
    rows: list[dict[str, Any]],
    mode: str,
) -> int:
    """Write `rows` in one transaction; the number of rows sent to the table."""
    qualified = quote_name(table)
    name = ".".join(table)
    conn.begin()
    try:
        description = conn.execute(f"SELECT * FROM {qualified} LIMIT 0").description or []
        types = {column[0]: str(column[1]) for column in description}
        mapping = match_columns(keys, list(types), name, WHO)
        sources = column_sources(keys, mapping)
        columns = list(sources)
        plan = [(keys_of, _converter(types[c])) for c, keys_of in sources.items()]
        records = [
            tuple(_convert(value_of(row, keys_of), convert) for keys_of, convert in plan)
            for row in rows
        ]
        if mode == "replace":
            conn.execute(f"DELETE FROM {qualified}")
        suffix = ""
        if mode == "upsert":
            key_cols = list(dict.fromkeys(mapping[k] for k in key))
            records = dedupe_last(records, [columns.index(c) for c in key_cols])
            suffix = _on_conflict(columns, key_cols)
        cols = ", ".join(quote_ident(c) for c in columns)
        placeholders = "(" + ", ".join("?" * len(columns)) + ")"
        size = max(1, BATCH_VALUES // len(columns)) if columns else 1
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            conn.execute(
                f"INSERT INTO {qualified} ({cols}) VALUES "
                + ", ".join([placeholders] * len(batch))
                + suffix,
                [value for record in batch for value in record],
            )
        conn.commit()
    except duckdb.Error as exc:
        rollback(conn)
        raise ToolError(f"{WHO}: writing {name}: {exc}", error_type="duckdb", table=name) from exc
    except BaseException:
        rollback(conn)
        raise
    return len(records)


def _on_conflict(columns: list[str], key: list[str]) -> str:
    updates = [c for c in columns if c not in key]
    conflict = ", ".join(quote_ident(k) for k in key)
    if not updates:
        return f" ON CONFLICT ({conflict}) DO NOTHING"
    return f" ON CONFLICT ({conflict}) DO UPDATE SET " + ", ".join(
        f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates
    )


def _converter(column_type: str) -> Callable[[Any], Any] | None:
    if column_type == "JSON":
        return json.dumps  # any value, a string too, is data to encode
    if column_type == "VARCHAR":
        return _text
    return None


def _text(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _convert(value: Any, convert: Callable[[Any], Any] | None) -> Any:
    return value if value is None or convert is None else convert(value)
