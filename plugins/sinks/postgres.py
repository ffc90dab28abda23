"""The `postgres` sink: rows into a table with COPY, in one transaction.

`{kind: postgres, auth, table: schema.table, mode: insert|upsert|replace, key: [...]}`.
The columns are the union of the rows' keys (a row without a key writes NULL there), each
matched to the table's column of that name (ignoring case when only one fits). Values are
converted to the column types first (ISO text to dates, base64 text to bytea, ...).
insert: binary COPY into the table. replace: TRUNCATE, then COPY. upsert: COPY into a
temporary table, then INSERT ... ON CONFLICT (key) DO UPDATE; rows repeating a key count
once, the last one winning.
"""

from __future__ import annotations

import binascii
import decimal
import uuid
from typing import Any

import asyncpg
import msgspec

from noetl.errors import ToolError
from plugins.base import ToolContext, until_done
from plugins.postgres import (
    DEFAULT_POOL_SIZE,
    IDLE_SECONDS,
    PgConnection,
    PgPools,
    coercer,
    connection_error,
    native_types,
)
from plugins.sinks.tables import TableWrite, columns_of, on_conflict, table_write
from plugins.sql import quote_ident, quote_name, timeout_ms, value_of
from plugins.sql_auth import describe_postgres, postgres_params, resolve_auth

WHO = "postgres sink"
DEFAULT_CONNECT_TIMEOUT = 10.0


class PostgresSink:
    """Sink kind `postgres`; holds one asyncpg pool per credential / DSN."""

    kind = "postgres"

    def __init__(self, *, pool_size: int = DEFAULT_POOL_SIZE, idle: float = IDLE_SECONDS) -> None:
        self.pools = PgPools(max_size=pool_size, idle=idle)

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Write `rows` into `spec["table"]`; `{"rows": n, "table", "mode"}`."""
        write = table_write(spec, rows, str.lower, WHO, no_database="postgres")
        if write.nothing_to_do:
            return write.report(0)
        label, data = await resolve_auth(ctx, spec, WHO)
        connect = postgres_params(ctx, label, data, WHO)
        target = describe_postgres(connect)
        connect_timeout = min(ctx.timeout or DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)

        async def work() -> int:
            acquired = False
            try:
                async with self.pools.connection(connect, connect_timeout) as conn:
                    acquired = True
                    return await _write(ctx, conn, write, rows)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise connection_error(ctx, exc, target, WHO, lost=acquired) from exc

        return write.report(await until_done(ctx, work(), WHO))

    async def aclose(self) -> None:
        """Close every pool."""
        await self.pools.aclose()


async def _write(
    ctx: ToolContext,
    conn: PgConnection,
    write: TableWrite,
    rows: list[dict[str, Any]],
) -> int:
    """The transaction of one write; the number of rows sent to the table."""
    table, name = write.table, write.name
    qualified = quote_name(table)
    limit = timeout_ms(ctx)
    try:
        async with conn.transaction():
            if limit is not None:
                await conn.execute(f"SET LOCAL statement_timeout = {limit}")
            shape = await conn.prepare(f"SELECT * FROM {qualified} LIMIT 0")
            types = {attr.name: attr.type for attr in shape.get_attributes()}
            matched = columns_of(write, types, WHO)
            columns = matched.names
            records = _records(rows, matched.sources, types, name)
            if write.mode == "replace":
                await conn.execute(f"TRUNCATE {qualified}")
            if not records:
                return 0
            if write.mode == "upsert":
                key_cols, records = matched.upsert(write.key, records)
                await _upsert(conn, qualified, columns, key_cols, records)
            else:
                await conn.copy_records_to_table(
                    table[-1],
                    schema_name=table[0] if len(table) == 2 else None,
                    columns=columns,
                    records=records,
                )
            return len(records)
    except (asyncpg.PostgresError, asyncpg.DataError) as exc:
        # DataError: asyncpg could not encode a value for COPY.
        message = ctx.mask(getattr(exc, "message", None) or str(exc))
        sqlstate = getattr(exc, "sqlstate", None)
        raise ToolError(
            f"{WHO}: writing {name}: {message}",
            error_type="postgres",
            sqlstate=sqlstate,
            table=name,
        ) from exc


async def _upsert(
    conn: PgConnection,
    qualified: str,
    columns: list[str],
    key: list[str],
    records: list[tuple[Any, ...]],
) -> None:
    # A temp table with the written columns' types only (no constraints, no defaults), so
    # it takes exactly what COPY sends; ON COMMIT DROP cleans it up.
    temp = f"_noetl_sink_{uuid.uuid4().hex}"
    cols = ", ".join(quote_ident(c) for c in columns)
    await conn.execute(
        f"CREATE TEMP TABLE {quote_ident(temp)} ON COMMIT DROP AS "
        f"SELECT {cols} FROM {qualified} WITH NO DATA"
    )
    await conn.copy_records_to_table(temp, columns=columns, records=records)
    await conn.execute(
        f"INSERT INTO {qualified} ({cols}) SELECT {cols} FROM "
        f"{quote_ident(temp)}{on_conflict(columns, key)}"
    )


def _records(
    rows: list[dict[str, Any]], sources: dict[str, list[str]], types: dict[str, Any], table: str
) -> list[tuple[Any, ...]]:
    """The rows as tuples in column order, each value converted to its column's type."""
    columns = list(sources)
    single = all(len(keys) == 1 for keys in sources.values())
    first = [keys[0] for keys in sources.values()]
    # Only values not already of a type asyncpg takes as is go through a converter: most
    # cells skip the call (this loop is the sink's cost over a bare COPY).
    checks = [
        (i, native_types(types[c]), convert)
        for i, c in enumerate(columns)
        if (convert := coercer(types[c], row_value=True)) is not None
    ]
    records = []
    for index, row in enumerate(rows):
        values = (
            [row.get(k) for k in first]
            if single
            else [value_of(row, keys) for keys in sources.values()]
        )
        for i, natives, convert in checks:
            value = values[i]
            if value is None or type(value) in natives:
                continue
            try:
                values[i] = convert(value)
            except (
                ValueError,
                TypeError,
                decimal.InvalidOperation,
                binascii.Error,
                msgspec.EncodeError,
            ) as exc:
                raise ToolError(
                    f"{WHO}: row {index}: {type(value).__name__} value does not "
                    f"fit column {columns[i]} of {table}: {exc}",
                    error_type="postgres",
                    table=table,
                    row=index,
                ) from exc
        records.append(tuple(values))
    return records
