"""`/api/postgres/execute`: NoETL's SQL endpoint, the most dangerous route of the API.

Off unless `NOETL_API_SQL=on`, and then only with a bearer token configured. One statement
per call, in a transaction bounded by a statement timeout, at most `row_cap` rows back.
Every call writes one audit line (time, caller, target, the statement's first 200
characters), never its parameters or a connection string.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import asyncpg
import msgspec
from aiohttp import web

from noetl.api.common import ApiError, Route, body, json_response
from noetl.api.credentials import credential_store
from noetl.api.schemas import ErrorBody, SqlBody, SqlResult
from noetl.client import Client
from noetl.errors import ToolError
from plugins.postgres import coerce_params

__all__ = ["SqlEndpoint"]

audit = logging.getLogger("noetl.api.audit")
log = logging.getLogger("noetl.api")

# A connection of our pool, or one of its own to another database.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_NAMED: Final = re.compile(r"%\((\w+)\)s")
_AUDIT_CHARS: Final = 200
_CONNECT_SECONDS: Final = 10.0


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _statement(sent: SqlBody) -> tuple[str, list[Any]]:
    """The one statement to run and its positional parameters ($1..$n)."""
    given = [x for x in (sent.query, sent.query_base64, sent.procedure) if x is not None]
    if len(given) != 1:
        raise ApiError(400, "give exactly one of `query`, `query_base64` or `procedure`")
    params = sent.parameters
    if sent.procedure is not None:
        if not _IDENT.fullmatch(sent.procedure):
            raise ApiError(400, "`procedure` is a procedure name (`name` or `schema.name`)")
        if isinstance(params, dict):
            raise ApiError(400, "a procedure takes its `parameters` as a list")
        args = list(params or [])
        marks = ", ".join(f"${i}" for i in range(1, len(args) + 1))
        return f"CALL {sent.procedure}({marks})", args
    if sent.query_base64 is not None:
        try:
            query = base64.b64decode(sent.query_base64, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(400, "`query_base64` is not base64 of UTF-8 text") from None
    else:
        query = str(sent.query)
    if not query.strip():
        raise ApiError(400, "the statement is empty")
    if isinstance(params, dict):
        # NoETL's named parameters, `%(name)s`, become positional ones.
        names: list[str] = []

        def number(found: re.Match[str]) -> str:
            if found[1] not in names:
                names.append(found[1])
            return f"${names.index(found[1]) + 1}"

        query = _NAMED.sub(number, query)
        missing = [n for n in names if n not in params]
        if missing:
            raise ApiError(400, f"`parameters` lacks {', '.join(missing)}")
        return query, [params[n] for n in names]
    return query, list(params or [])


def _connect_args(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    dsn = data.get("dsn") or data.get("connection_string")
    if isinstance(dsn, str):
        return {"dsn": dsn}
    fields = {
        "host": data.get("host"),
        "port": data.get("port"),
        "user": data.get("user") or data.get("username"),
        "password": data.get("password"),
        "database": data.get("database") or data.get("dbname"),
    }
    if not fields["host"]:
        raise ApiError(400, f"credential `{name}` is not a PostgreSQL connection")
    return {k: v for k, v in fields.items() if v is not None}


def target_of(sent: SqlBody) -> str:
    """Where a statement runs, as the audit line says it (never the connection string)."""
    if sent.credential is not None:
        return f"credential {sent.credential}"
    if sent.connection_string is not None:
        return "connection string"
    return "runtime database"


class SqlEndpoint:
    """Runs one statement per call; see the module's docstring for the rules."""

    def __init__(
        self,
        client: Client,
        *,
        enabled: bool,
        has_token: bool,
        timeout: float = 30.0,
        row_cap: int = 1000,
    ) -> None:
        self.client = client
        self.enabled = enabled
        self.has_token = has_token
        self.timeout = timeout
        self.row_cap = row_cap

    def routes(self) -> list[Route]:
        return [
            Route(
                "POST",
                "/api/postgres/execute",
                self.execute,
                "Run one SQL statement (NoETL; off unless NOETL_API_SQL=on, token required)",
                "noetl",
                {
                    200: SqlResult,
                    400: ErrorBody,
                    403: ErrorBody,
                    404: ErrorBody,
                    504: ErrorBody,
                },
                body=SqlBody,
            )
        ]

    async def execute(self, request: web.Request) -> web.Response:
        if not self.enabled:
            raise ApiError(403, "the SQL endpoint is off (the server sets NOETL_API_SQL=on)")
        if not self.has_token:
            raise ApiError(403, "the SQL endpoint needs the API token (NOETL_API_TOKEN) set")
        sent = await body(request, SqlBody)
        query, params = _statement(sent)
        target = target_of(sent)
        audit.info(
            "sql at %s from %s on %s: %s",
            datetime.datetime.now(datetime.UTC).isoformat(),
            request.remote,
            target,
            query[:_AUDIT_CHARS],
        )
        async with self._connection(sent) as conn:
            rows, truncated = await self._run(conn, query, params, sent.db_schema)
        return json_response(SqlResult(status="ok", result=rows, truncated=truncated))

    @contextlib.asynccontextmanager
    async def _connection(self, sent: SqlBody) -> AsyncIterator[Connection]:
        if sent.connection_string is None and sent.credential is None:
            async with self.client.store.pool.acquire() as pooled:
                try:
                    yield pooled
                finally:
                    # The store's pool skips the session reset (see noetl.store); a user's
                    # statement may have left session state (SET, LISTEN, a session lock).
                    if not pooled.is_closed():
                        await pooled.reset()
            return
        if sent.connection_string is not None and sent.credential is not None:
            raise ApiError(400, "give `connection_string` or `credential`, not both")
        if sent.credential is not None:
            store = await credential_store(self.client)
            found = await store.find(sent.credential)
            if found is None:
                raise ApiError(404, f"no credential `{sent.credential}`")
            args = _connect_args(found.data, sent.credential)
        else:
            args = {"dsn": sent.connection_string}
        try:
            conn = await asyncpg.connect(**args, timeout=_CONNECT_SECONDS)
        except Exception as exc:  # the message may quote the connection string: not echoed
            log.warning("sql: cannot connect to the %s (%s)", target_of(sent), type(exc).__name__)
            raise ApiError(400, "cannot connect to the database given") from None
        try:
            yield conn
        finally:
            await conn.close(timeout=_CONNECT_SECONDS)

    async def _run(
        self, conn: Connection, query: str, params: list[Any], schema: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        limit_ms = max(1, int(self.timeout * 1000))
        try:
            # The asyncio bound backs up the server's own timeout, in case it cannot act.
            async with asyncio.timeout(self.timeout + 5), conn.transaction():
                await conn.execute(f"SET LOCAL statement_timeout = {limit_ms}")
                if schema is not None:
                    await conn.execute(f"SET LOCAL search_path TO {_quote(schema)}")
                stmt = await conn.prepare(query)
                args = coerce_params(stmt.get_parameters(), params, 0, 1)
                if not stmt.get_attributes():
                    await stmt.fetch(*args)
                    return [], False
                cursor = await stmt.cursor(*args)
                rows = await cursor.fetch(self.row_cap + 1)
        except asyncpg.QueryCanceledError:
            raise ApiError(
                504, f"the statement ran past its {self.timeout:g} s timeout and was cancelled"
            ) from None
        except TimeoutError:
            conn.terminate()
            raise ApiError(
                504, "the statement did not end in time; its connection was closed"
            ) from None
        except asyncpg.PostgresError as exc:
            raise ApiError(400, f"the statement failed: {exc}") from None
        except ToolError as exc:
            raise ApiError(400, str(exc).replace("postgres tool: ", "")) from None
        values = msgspec.to_builtins([dict(r) for r in rows[: self.row_cap]], enc_hook=str)
        return values, len(rows) > self.row_cap
