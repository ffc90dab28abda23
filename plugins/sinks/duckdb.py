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
from plugins.sinks.tables import TableWrite, columns_of, on_conflict, table_write, value_batches
from plugins.sql import quote_ident, quote_name, value_of

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
        database = spec.get("database")
        if not isinstance(database, str) or not database or database == MEMORY:
            raise ToolError(
                f"{WHO}: `database` (the path of a DuckDB file) is required", error_type="duckdb"
            )
        # DuckDB matches names ignoring case, quoted or not: keep them as written.
        write = table_write(spec, rows, str, WHO)
        if write.nothing_to_do:
            return write.report(0)
        session = Session(confined(database, ctx.data_root, WHO))

        def work() -> int:
            with session:
                return write_rows(session.conn, write, rows)

        written = await in_thread(ctx, work, WHO, session.interrupt)
        return write.report(written, database=database)


def write_rows(
    conn: duckdb.DuckDBPyConnection, write: TableWrite, rows: list[dict[str, Any]]
) -> int:
    """Write `rows` in one transaction; the number of rows sent to the table."""
    qualified = quote_name(write.table)
    name = write.name
    conn.begin()
    try:
        description = conn.execute(f"SELECT * FROM {qualified} LIMIT 0").description or []
        types = {column[0]: str(column[1]) for column in description}
        matched = columns_of(write, types, WHO)
        columns = matched.names
        plan = [(keys_of, _converter(types[c])) for c, keys_of in matched.sources.items()]
        records = [
            tuple(_convert(value_of(row, keys_of), convert) for keys_of, convert in plan)
            for row in rows
        ]
        if write.mode == "replace":
            conn.execute(f"DELETE FROM {qualified}")
        suffix = ""
        if write.mode == "upsert":
            key_cols, records = matched.upsert(write.key, records)
            suffix = on_conflict(columns, key_cols)
        cols = ", ".join(quote_ident(c) for c in columns)
        for values, args in value_batches(records, len(columns), BATCH_VALUES):
            conn.execute(f"INSERT INTO {qualified} ({cols}) VALUES {values}{suffix}", args)
        conn.commit()
    except duckdb.Error as exc:
        rollback(conn)
        raise ToolError(f"{WHO}: writing {name}: {exc}", error_type="duckdb", table=name) from exc
    except BaseException:
        rollback(conn)
        raise
    return len(records)


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
