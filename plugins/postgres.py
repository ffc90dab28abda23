"""The `postgres` tool: SQL against PostgreSQL through asyncpg, one pool per connection.

A call's statements (split at top-level `;`) run on one pooled connection, in one
transaction when there are several and none manages the transaction itself. The result
(see `noetl.sql_shape`) is the rows of a single statement as JSON-safe dicts; `{rowcount,
status}` of the last statement (status: PostgreSQL's command tag) with NoETL's `command_<i>`
beside when no statement returns rows; else NoETL's `command_<i>` mapping. `params` fill
`$1..$n` in every statement; text params are converted to the parameter's type (an ISO
date for a date, digits for an int) since templates render most values as text.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import decimal
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from noetl.errors import ToolError, ToolTimeout
from noetl.sql_shape import script_result, statement_entry
from plugins.base import ToolContext, until_done
from plugins.sql import (
    TRANSACTION_KEYWORDS,
    json_safe,
    params_of,
    split_statements,
    sql_text,
    timeout_ms,
)
from plugins.sql_auth import describe_postgres, postgres_params, resolve_auth

#: A pool unused for this long is closed (checked whenever the instance is used).
IDLE_SECONDS = 300.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_POOL_SIZE = 10
QUERY_CANCELED = "57014"  # statement_timeout (or a cancel request) ended the statement

#: What a pool hands out (generic only in the type stubs).
PgConnection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


# -- pools ----------------------------------------------------------------------------------


def _json_text(value: Any) -> bytes:
    # Text passes as JSON text, as with asyncpg's own codec; bytes are JSON already encoded
    # (the sink's row values); anything else is encoded here.
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    return msgspec.json.encode(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    """json/jsonb as Python values both ways, in binary format so COPY can carry them too."""
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        format="binary",
        encoder=_json_text,
        decoder=msgspec.json.decode,
    )
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=lambda v: b"\x01" + _json_text(v),
        decoder=lambda data: msgspec.json.decode(data[1:]),
    )


@dataclass
class _Pool:
    pool: asyncpg.Pool
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0


class PgPools:
    """asyncpg pools by connection arguments, each closed once idle for `idle` seconds."""

    def __init__(self, *, max_size: int = DEFAULT_POOL_SIZE, idle: float = IDLE_SECONDS) -> None:
        self.max_size = max_size
        self.idle = idle
        self._pools: dict[str, _Pool] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._pools)

    @contextlib.asynccontextmanager
    async def connection(
        self, params: Mapping[str, Any], connect_timeout: float
    ) -> AsyncIterator[PgConnection]:
        """A connection of the pool for `params` (made on first use), returned after use."""
        key = json.dumps(params, sort_keys=True, default=str)
        async with self._lock:
            idle = self._take_idle()
            entry = self._pools.get(key)
            if entry is None:
                # min_size=0: making the pool connects nowhere; errors surface on acquire.
                # `timeout` bounds each connection attempt, not the wait for a free one.
                pool = await asyncpg.create_pool(
                    **params,
                    min_size=0,
                    max_size=self.max_size,
                    timeout=connect_timeout,
                    init=_init_connection,
                    max_inactive_connection_lifetime=self.idle,
                )
                entry = self._pools[key] = _Pool(pool)
            entry.users += 1
        for old in idle:
            await _close_pool(old)
        try:
            # A busy pool makes the call wait for a connection (the step's timeout bounds it).
            async with entry.pool.acquire() as conn:
                yield conn
        finally:
            entry.users -= 1
            entry.last_used = time.monotonic()

    def _take_idle(self) -> list[asyncpg.Pool]:
        """Remove the pools unused for `idle` seconds; the caller closes them."""
        now = time.monotonic()
        idle = [
            key
            for key, entry in self._pools.items()
            if entry.users == 0 and now - entry.last_used > self.idle
        ]
        return [self._pools.pop(key).pool for key in idle]

    async def aclose(self) -> None:
        """Close every pool."""
        async with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for entry in pools:
            await _close_pool(entry.pool)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        pool.terminate()


# -- the tool -------------------------------------------------------------------------------


class PostgresTool:
    """Tool kind `postgres`; holds one asyncpg pool per credential / DSN."""

    kind = "postgres"

    def __init__(self, *, pool_size: int = DEFAULT_POOL_SIZE, idle: float = IDLE_SECONDS) -> None:
        self.pools = PgPools(max_size=pool_size, idle=idle)

    async def run(self, ctx: ToolContext, spec: dict[str, Any]) -> Any:
        """Run the call's statements and return their result (see `noetl.sql_shape`)."""
        sql = await sql_text(ctx, spec, "postgres tool")
        statements = split_statements(sql)
        if not statements:
            raise ToolError("postgres tool: the query holds no statement", error_type="postgres")
        params = params_of(spec, "postgres tool")
        if isinstance(params, dict):
            raise ToolError(
                "postgres tool: `params` must be a list (for $1, $2, ...)", error_type="postgres"
            )
        label, data = await resolve_auth(ctx, spec, "postgres tool")
        connect = postgres_params(ctx, label, data, "postgres tool")
        target = describe_postgres(connect)
        connect_timeout = _connect_timeout(ctx, spec)

        async def work() -> Any:
            acquired = False
            try:
                async with self.pools.connection(connect, connect_timeout) as conn:
                    acquired = True
                    return await _run_statements(
                        ctx, conn, [s.text for s in statements], params, _transactional(statements)
                    )
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise connection_error(ctx, exc, target, "postgres tool", lost=acquired) from exc

        return await until_done(ctx, work(), "postgres tool")

    async def aclose(self) -> None:
        """Close every pool."""
        await self.pools.aclose()


def _transactional(statements: list[Any]) -> bool:
    # One statement is atomic already (and may be one that cannot run in a transaction
    # block, like VACUUM); a script that says BEGIN/COMMIT manages its own.
    return len(statements) > 1 and not any(s.keyword in TRANSACTION_KEYWORDS for s in statements)


def _connect_timeout(ctx: ToolContext, spec: Mapping[str, Any]) -> float:
    value = spec.get("connect_timeout")
    if value is not None:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ToolError(
                "postgres tool: `connect_timeout` must be a number of seconds",
                error_type="postgres",
            ) from exc
    if ctx.timeout:
        return min(ctx.timeout, DEFAULT_CONNECT_TIMEOUT)
    return DEFAULT_CONNECT_TIMEOUT


class _StatementFailed(Exception):
    """A statement failed: carries which one, so the error can say so."""

    def __init__(self, index: int, error: asyncpg.PostgresError) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


async def _run_statements(
    ctx: ToolContext, conn: PgConnection, texts: list[str], params: list[Any], transactional: bool
) -> Any:
    limit = timeout_ms(ctx)
    tx = conn.transaction() if transactional else None
    try:
        try:
            if tx is not None:
                await tx.start()
            if limit is not None:
                # LOCAL ends with the transaction; a session-wide value is undone when the
                # pool resets the connection (RESET ALL) on release.
                scope = "LOCAL " if transactional else ""
                await conn.execute(f"SET {scope}statement_timeout = {limit}")
        except asyncpg.PostgresError as exc:
            raise _StatementFailed(0, exc) from exc
        entries: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            try:
                stmt = await conn.prepare(text)
                args = coerce_params(stmt.get_parameters(), params, index, len(texts))
                records = await stmt.fetch(*args)
            except asyncpg.PostgresError as exc:
                raise _StatementFailed(index, exc) from exc
            attributes = stmt.get_attributes()
            rows = None
            if attributes:
                rows = [
                    {key: json_safe(value) for key, value in record.items()} for record in records
                ]
            columns = [a.name for a in attributes]
            entries.append(statement_entry(rows, columns, stmt.get_statusmsg() or ""))
        if tx is not None:
            try:
                await tx.commit()
            except asyncpg.PostgresError as exc:  # a deferred constraint, say
                raise _StatementFailed(len(texts) - 1, exc) from exc
    except _StatementFailed as failed:
        if tx is not None:
            await _rollback(tx)
        raise statement_error(ctx, failed.error, failed.index, len(texts), limit) from None
    except BaseException:
        if tx is not None:
            await _rollback(tx)
        raise
    return script_result(entries)


async def _rollback(tx: Any) -> None:
    # The connection may be gone already; the pool discards it then.
    with contextlib.suppress(Exception):
        await tx.rollback()


# -- errors ---------------------------------------------------------------------------------


def statement_error(
    ctx: ToolContext, exc: asyncpg.PostgresError, index: int, count: int, limit_ms: int | None
) -> ToolError:
    """The ToolError for a statement PostgreSQL refused, naming the statement and cause."""
    where = f" (statement {index + 1} of {count})" if count > 1 else ""
    sqlstate = getattr(exc, "sqlstate", None)
    message = ctx.mask(getattr(exc, "message", None) or str(exc))
    details: dict[str, Any] = {"sqlstate": sqlstate, "statement": index + 1}
    for attr in ("detail", "hint"):
        value = getattr(exc, attr, None)
        if value:
            details[attr] = ctx.mask(str(value))
    if sqlstate == QUERY_CANCELED and limit_ms is not None:
        timeout = ToolTimeout(
            f"postgres tool: statement timed out after {limit_ms / 1000:g}s{where}: {message}"
        )
        timeout.details.update(details)
        return timeout
    return ToolError(f"postgres tool: {message}{where}", error_type="postgres", **details)


def connection_error(
    ctx: ToolContext, exc: BaseException, target: str, who: str, *, lost: bool = False
) -> ToolError:
    """The ToolError for a server that could not be reached, refused the login or (`lost`)
    dropped the connection while in use."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, TimeoutError):
        cause = "no answer (connect timeout)"
    else:
        cause = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    what = "lost the connection to" if lost else "cannot connect to"
    message = ctx.mask(f"{who}: {what} {target}: {cause}")
    details = {"sqlstate": sqlstate} if sqlstate else {}
    return ToolError(message, error_type="postgres", **details)


# -- converting params to the server's types -------------------------------------------------

_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def _to_int(value: Any) -> Any:
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _to_float(value: Any) -> Any:
    return float(value) if isinstance(value, str | decimal.Decimal) else value


def _to_numeric(value: Any) -> Any:
    if isinstance(value, str):
        return decimal.Decimal(value.strip())
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    return value


def _to_bool(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return bool(value)
    return value


def _to_date(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        return (
            dt.datetime.fromisoformat(text).date()
            if len(text) > 10
            else dt.date.fromisoformat(text)
        )
    if isinstance(value, dt.datetime):
        return value.date()
    return value


def _to_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.strip())
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time())
    return value


def _to_time(value: Any) -> Any:
    return dt.time.fromisoformat(value.strip()) if isinstance(value, str) else value


def _to_interval(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    return value


def _to_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def _to_bytes(value: Any) -> Any:
    # base64 text: the form the postgres tool returns bytea in.
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    return value


def _to_json_value(value: Any) -> bytes:
    # A row's value is data: a string is a JSON string, not JSON text.
    return msgspec.json.encode(value)


def _to_array(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip().startswith("["):
        return json.loads(value)
    return value


_COERCERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(("int2", "int4", "int8", "oid"), _to_int),
    **dict.fromkeys(("float4", "float8"), _to_float),
    "numeric": _to_numeric,
    "bool": _to_bool,
    "date": _to_date,
    **dict.fromkeys(("timestamp", "timestamptz"), _to_timestamp),
    **dict.fromkeys(("time", "timetz"), _to_time),
    "interval": _to_interval,
    **dict.fromkeys(("text", "varchar", "bpchar", "name", "char", "citext"), _to_text),
    "bytea": _to_bytes,
}


#: The Python types asyncpg takes as they are for each type (no conversion needed).
_NATIVE: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("int2", "int4", "int8", "oid"), (int,)),
    **dict.fromkeys(("float4", "float8"), (float,)),
    "numeric": (decimal.Decimal, int),
    "bool": (bool,),
    "date": (dt.date,),
    **dict.fromkeys(("timestamp", "timestamptz"), (dt.datetime,)),
    **dict.fromkeys(("time", "timetz"), (dt.time,)),
    "interval": (dt.timedelta,),
    **dict.fromkeys(("text", "varchar", "bpchar", "name", "char", "citext"), (str,)),
    "bytea": (bytes,),
}


def native_types(pg_type: Any) -> tuple[type, ...]:
    """The exact Python types that need no conversion for `pg_type` (none for json)."""
    return (list,) if pg_type.kind == "array" else _NATIVE.get(pg_type.name, ())


def coercer(pg_type: Any, *, row_value: bool = False) -> Callable[[Any], Any] | None:
    """The converter of values for a parameter or column of `pg_type` (asyncpg's Type)."""
    if pg_type.kind == "array":
        return _to_array
    if pg_type.name in ("json", "jsonb"):
        # A param is left to the connection's codec (text passes as JSON text).
        return _to_json_value if row_value else None
    return _COERCERS.get(pg_type.name)


def coerce_params(types: tuple[Any, ...], params: list[Any], index: int, count: int) -> list[Any]:
    """The params statement `index` takes ($1..$n), each converted to its parameter's type."""
    where = f" (statement {index + 1} of {count})" if count > 1 else ""
    if len(types) > len(params):
        raise ToolError(
            f"postgres tool: the query uses ${len(types)} but only {len(params)} "
            f"params were given{where}",
            error_type="postgres",
        )
    args = []
    for position, (pg_type, value) in enumerate(zip(types, params, strict=False), start=1):
        convert = coercer(pg_type)
        if value is not None and convert is not None:
            try:
                value = convert(value)
            except (ValueError, TypeError, decimal.InvalidOperation, binascii.Error) as exc:
                raise ToolError(
                    f"postgres tool: param ${position} ({type(value).__name__}) "
                    f"is not a valid {pg_type.name}{where}: {exc}",
                    error_type="postgres",
                ) from exc
        args.append(value)
    return args
