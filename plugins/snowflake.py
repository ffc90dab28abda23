"""The `snowflake` tool: SQL in Snowflake through the official connector, in a worker thread.

Each call opens its own connection (`auth`: account, user, password or private_key,
warehouse, database, schema, role; host/port/protocol for a private endpoint) and closes it.
The statements run in one transaction when there are several (Snowflake commits a DDL
statement on its own). `params` fill `?` placeholders, bound by the server (qmark style).
The result has the postgres tool's shape; VARIANT, OBJECT and ARRAY values are parsed. The
step's timeout becomes the connector's query timeout, which cancels the query in Snowflake.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext, in_thread
from plugins.sql import (
    ROW_KEYWORDS,
    TRANSACTION_KEYWORDS,
    Statement,
    command_result,
    json_safe,
    params_of,
    split_statements,
    sql_text,
    statement_params,
)
from plugins.sql_auth import resolve_auth, snowflake_params

if TYPE_CHECKING:
    from snowflake.connector import SnowflakeConnection
    from snowflake.connector.cursor import SnowflakeCursor

#: Statements whose row count Snowflake reports (others report a status row).
DML_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})
#: Column types Snowflake hands over as JSON text.
_JSON_TYPES = frozenset({"VARIANT", "OBJECT", "ARRAY", "MAP"})
_CANCELED_ERRNOS = frozenset({604, 630})  # canceled; statement timeout reached


class SnowflakeTool:
    """Tool kind `snowflake`."""

    kind = "snowflake"

    async def run(self, ctx: ToolContext, spec: dict[str, Any]) -> Any:
        """Run the call's statements and return its rows or `{rowcount, status}`."""
        statements = split_statements(
            await sql_text(ctx, spec, "snowflake tool"), backslash_escapes=True
        )
        if not statements:
            raise ToolError("snowflake tool: the query holds no statement", error_type="snowflake")
        params = params_of(spec, "snowflake tool")
        label, data = await resolve_auth(ctx, spec, "snowflake tool")
        connect = snowflake_params(ctx, label, data, "snowflake tool")
        timeout = query_timeout(ctx)

        def work() -> Any:
            with SnowflakeSession(ctx, connect) as conn:
                return run_statements(ctx, conn, statements, params, timeout)

        return await in_thread(ctx, work, "snowflake tool")


def query_timeout(ctx: ToolContext) -> int | None:
    """The connector's per-query timeout (whole seconds) for the step's timeout."""
    return None if not ctx.timeout else max(1, math.ceil(ctx.timeout))


class SnowflakeSession:
    """A connection opened on entry (in the worker thread) and closed on exit."""

    def __init__(
        self, ctx: ToolContext, params: dict[str, Any], who: str = "snowflake tool"
    ) -> None:
        self.ctx = ctx
        self.params = params
        self.who = who
        self.conn: SnowflakeConnection | None = None

    def __enter__(self) -> SnowflakeConnection:
        import snowflake.connector  # slow to import: only steps that use it pay

        try:
            # qmark: values are bound by the server, never pasted into the SQL text.
            self.conn = snowflake.connector.connect(**self.params, paramstyle="qmark")
        except snowflake.connector.Error as exc:
            account = self.params.get("account")
            raise snowflake_error(
                self.ctx,
                exc,
                f"cannot connect to account {account!r} as {self.params.get('user')!r}",
                self.who,
            ) from exc
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception as error:  # closing is best effort: the work is done
                self.ctx.logger.debug("snowflake: closing the connection failed: %s", error)


def run_statements(
    ctx: ToolContext,
    conn: SnowflakeConnection,
    statements: list[Statement],
    params: list[Any] | dict[str, Any],
    timeout: int | None,
) -> Any:
    """Run `statements` (in one transaction when several) and shape the result."""
    if isinstance(params, dict):
        raise ToolError(
            "snowflake tool: `params` must be a list (for the ? placeholders)",
            error_type="snowflake",
        )
    transactional = len(statements) > 1 and not any(
        s.keyword in TRANSACTION_KEYWORDS for s in statements
    )
    cursor = conn.cursor()
    rows: list[dict[str, Any]] | None = None
    last: dict[str, Any] = {}
    position = 0
    try:
        if transactional:
            execute(ctx, cursor, "BEGIN", None, timeout)
        for index, stmt in enumerate(statements):
            # Only `?` binds here: `$1` names a column of a staged file in Snowflake.
            qmarks_only = dataclasses.replace(stmt, numbered=0, named=frozenset())
            args, position = statement_params(qmarks_only, params, position, "snowflake tool")
            where = f" (statement {index + 1} of {len(statements)})" if len(statements) > 1 else ""
            execute(ctx, cursor, stmt.text, args or None, timeout, where, index + 1)
            if stmt.keyword in ROW_KEYWORDS:
                rows = fetch_dicts(cursor)
            else:
                count = cursor.rowcount if stmt.keyword in DML_KEYWORDS else 0
                last = command_result(count or 0, stmt.keyword)
        if transactional:
            execute(ctx, cursor, "COMMIT", None, timeout)
    except BaseException:
        if transactional:
            rollback(cursor)
        raise
    finally:
        cursor.close()
    return rows if rows is not None else last


def execute(
    ctx: ToolContext,
    cursor: SnowflakeCursor,
    sql: str,
    args: Any,
    timeout: int | None,
    where: str = "",
    statement: int | None = None,
    who: str = "snowflake tool",
) -> None:
    """`cursor.execute`, with the connector's errors as ToolError (ToolTimeout when timed out)."""
    import snowflake.connector

    try:
        cursor.execute(sql, args, timeout=timeout)
    except snowflake.connector.Error as exc:
        error = snowflake_error(ctx, exc, "", who, where)
        if statement is not None:
            error.details["statement"] = statement
        raise error from exc


def rollback(cursor: SnowflakeCursor) -> None:
    """Roll the open transaction back, if the session still lets us."""
    try:
        cursor.execute("ROLLBACK")
    except Exception:  # the session may be gone: Snowflake then rolls back by itself
        return


def snowflake_error(ctx: ToolContext, exc: Any, what: str, who: str, where: str = "") -> ToolError:
    """The ToolError for a connector error: errno, sqlstate and query id in the details."""
    errno, sqlstate = getattr(exc, "errno", None), getattr(exc, "sqlstate", None)
    cause = getattr(exc, "raw_msg", None) or getattr(exc, "msg", None) or str(exc)
    prefix = f"{who}: {what}: " if what else f"{who}: "
    message = ctx.mask(f"{prefix}{cause}{where}")
    details = {"errno": errno, "sqlstate": sqlstate, "sfqid": getattr(exc, "sfqid", None)}
    if errno in _CANCELED_ERRNOS or sqlstate == "57014":
        timeout = ToolTimeout(message)
        timeout.details.update(details)
        return timeout
    return ToolError(message, error_type="snowflake", **details)


def fetch_dicts(cursor: SnowflakeCursor) -> list[dict[str, Any]]:
    """The cursor's rows as JSON-safe dicts; semi-structured values parsed."""
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    description = cursor.description or []
    names = [column.name for column in description]
    converters: list[Callable[[Any], Any]] = [
        _parse_json if FIELD_ID_TO_NAME[column.type_code] in _JSON_TYPES else json_safe
        for column in description
    ]
    return [
        {name: convert(value) for name, convert, value in zip(names, converters, row, strict=True)}
        for row in cursor.fetchall()
    ]


def _parse_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else json_safe(value)
