"""The `duckdb` tool: SQL in DuckDB, run in a worker thread.

`database` is `:memory:` (the default: a fresh database per call) or a file path. The
statements run in one transaction when there are several; the result has the postgres
tool's shape (rows of the last statement returning rows, else `{rowcount, status}` with the
statement's keyword as status). `params` fill `?` (in order across the script), `$n`, or
`$name` (with a mapping). `attach: [{name, auth}]` attaches PostgreSQL databases through
DuckDB's postgres extension, which must be installed (or installable) for this DuckDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from noetl.errors import ToolError
from plugins.base import ToolContext, in_thread
from plugins.paths import confined
from plugins.sql import (
    ROW_KEYWORDS,
    TRANSACTION_KEYWORDS,
    Statement,
    command_result,
    json_safe,
    params_of,
    quote_ident,
    split_statements,
    sql_text,
    statement_params,
)
from plugins.sql_auth import postgres_params, resolve_auth

MEMORY = ":memory:"


@dataclass(frozen=True)
class Attachment:
    """A PostgreSQL database to attach as `name`, with its libpq connection string."""

    name: str
    conninfo: str


class DuckdbTool:
    """Tool kind `duckdb`: each call opens its own connection in a worker thread."""

    kind = "duckdb"

    async def run(self, ctx: ToolContext, spec: dict[str, Any]) -> Any:
        """Run the call's statements and return its rows or `{rowcount, status}`."""
        statements = split_statements(await sql_text(ctx, spec, "duckdb tool"))
        if not statements:
            raise ToolError("duckdb tool: the query holds no statement", error_type="duckdb")
        params = params_of(spec, "duckdb tool")
        database = spec.get("database") or MEMORY
        if not isinstance(database, str):
            raise ToolError(
                "duckdb tool: `database` must be a file path or :memory:", error_type="duckdb"
            )
        attachments = await attachments_of(ctx, spec.get("attach"))
        if database != MEMORY:
            database = confined(database, ctx.data_root, "duckdb tool")
        session = Session(database, read_only=bool(spec.get("read_only")), data_root=ctx.data_root)

        def work() -> Any:
            with session:
                session.attach(attachments)
                session.confine()
                return run_statements(session.conn, statements, params)

        try:
            return await in_thread(ctx, work, "duckdb tool", session.interrupt)
        except ToolError as exc:
            masked = ctx.mask(str(exc))  # ATTACH errors may quote the connection string
            if masked == str(exc):
                raise
            raise ToolError(masked, error_type=exc.error_type, **exc.details) from None


class Session:
    """One DuckDB connection, opened in the worker thread, interruptible from the loop."""

    def __init__(
        self, database: str, *, read_only: bool = False, data_root: Path | None = None
    ) -> None:
        self.database = database
        self.read_only = read_only
        self.data_root = data_root
        self.conn: duckdb.DuckDBPyConnection
        self._lock = threading.Lock()
        self._open = False

    def __enter__(self) -> Session:
        try:
            conn = duckdb.connect(self.database, read_only=self.read_only)
        except duckdb.Error as exc:
            raise ToolError(
                f"duckdb tool: cannot open database {self.database}: {exc}",
                error_type="duckdb",
                database=self.database,
            ) from exc
        with self._lock:
            self.conn, self._open = conn, True
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._open = False
            self.conn.close()

    def confine(self) -> None:
        """With a data root: SQL may read and write files under it only (`read_csv`, `COPY`,
        `ATTACH` of files, named by their full path), and cannot lift that limit (the
        configuration is locked)."""
        if self.data_root is None:
            return
        root = os.path.realpath(self.data_root)
        self.conn.execute("SET allowed_directories = ?", [[root]])
        self.conn.execute("SET enable_external_access = false")
        self.conn.execute("SET lock_configuration = true")

    def interrupt(self) -> None:
        """Stop the running statement (the thread then raises InterruptException)."""
        with self._lock:
            if self._open:
                self.conn.interrupt()

    def attach(self, attachments: list[Attachment]) -> None:
        """Attach each PostgreSQL database, loading DuckDB's postgres extension first."""
        if not attachments:
            return
        try:
            self.conn.execute("LOAD postgres")  # installs it first where DuckDB can
        except duckdb.Error as exc:
            raise ToolError(
                "duckdb tool: `attach` needs DuckDB's postgres extension, which is neither "
                f"installed for DuckDB {duckdb.__version__} nor installable here: "
                f"{str(exc).splitlines()[0]}",
                error_type="duckdb",
            ) from exc
        for item in attachments:
            try:
                self.conn.execute(
                    f"ATTACH ? AS {quote_ident(item.name)} (TYPE postgres)", [item.conninfo]
                )
            except duckdb.Error as exc:
                raise ToolError(
                    f"duckdb tool: cannot attach PostgreSQL database `{item.name}`: {exc}",
                    error_type="duckdb",
                ) from exc


async def attachments_of(ctx: ToolContext, attach: Any) -> list[Attachment]:
    """The `attach` list with every credential resolved (in the loop, before the thread)."""
    if attach is None:
        return []
    if not isinstance(attach, list) or not all(
        isinstance(item, Mapping) and isinstance(item.get("name"), str) for item in attach
    ):
        raise ToolError("duckdb tool: `attach` must be a list of {name, auth}", error_type="duckdb")
    result = []
    for item in attach:
        label, data = await resolve_auth(ctx, item, "duckdb tool")
        params = postgres_params(ctx, label, data, "duckdb tool")
        result.append(Attachment(item["name"], _conninfo(params)))
    return result


def _conninfo(params: Mapping[str, Any]) -> str:
    """A libpq connection string (what DuckDB's ATTACH takes) for asyncpg's arguments."""
    if "dsn" in params:
        return str(params["dsn"])
    names = {
        "host": "host",
        "port": "port",
        "user": "user",
        "password": "password",
        "database": "dbname",
        "ssl": "sslmode",
    }
    parts = []
    for key, name in names.items():
        if params.get(key) is not None:
            value = str(params[key]).replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"{name}='{value}'")
    return " ".join(parts)


def run_statements(
    conn: duckdb.DuckDBPyConnection, statements: list[Statement], params: list[Any] | dict[str, Any]
) -> Any:
    """Run `statements` on `conn` (in one transaction when several) and shape the result."""
    transactional = len(statements) > 1 and not any(
        s.keyword in TRANSACTION_KEYWORDS for s in statements
    )
    if transactional:
        conn.begin()
    rows: list[dict[str, Any]] | None = None
    last: dict[str, Any] = {}
    position = 0
    try:
        for index, stmt in enumerate(statements):
            args, position = statement_params(stmt, params, position, "duckdb tool")
            try:
                cursor = conn.execute(stmt.text, args or None)
                fetched = cursor.fetchall()
                description = cursor.description
            except duckdb.Error as exc:
                where = (
                    f" (statement {index + 1} of {len(statements)})" if len(statements) > 1 else ""
                )
                raise ToolError(
                    f"duckdb tool: {exc}{where}",
                    error_type="duckdb",
                    statement=index + 1,
                    exception=type(exc).__name__,
                ) from exc
            if _returns_rows(stmt, description):
                rows = _dicts(description or [], fetched)
            else:
                count = fetched[0][0] if fetched and isinstance(fetched[0][0], int) else 0
                last = command_result(count, stmt.keyword)
        if transactional:
            conn.commit()
    except BaseException:
        if transactional:
            rollback(conn)
        raise
    return rows if rows is not None else last


def rollback(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll the open transaction back; an error here would only hide the one that matters."""
    with contextlib.suppress(duckdb.Error):
        conn.rollback()


def _returns_rows(stmt: Statement, description: Any) -> bool:
    if stmt.keyword in ROW_KEYWORDS:
        return True
    # DuckDB answers a command with one BIGINT column `Count`; anything else is rows
    # (INSERT ... RETURNING, say).
    return bool(description) and not (len(description) == 1 and description[0][0] == "Count")


def _dicts(description: list[Any], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    names = [column[0] for column in description]
    # DuckDB hands JSON columns over as their text.
    parse = [str(column[1]) == "JSON" for column in description]
    return [
        {
            name: _value(value, is_json)
            for name, value, is_json in zip(names, row, parse, strict=True)
        }
        for row in rows
    ]


def _value(value: Any, is_json: bool) -> Any:
    if is_json and isinstance(value, str):
        return json.loads(value)
    return json_safe(value)
