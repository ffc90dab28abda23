"""What the SQL tools and table sinks share: statements, JSON-safe values, credentials, threads.

- `split_statements` cuts a script at its top-level `;`, respecting quotes, dollar-quoting
  and comments, and tells each statement's leading keyword and placeholders.
- `json_safe` turns driver values into JSON values (see its docstring for each type).
- connections from credentials are `plugins.sql_auth`.
- blocking drivers run through `plugins.base.in_thread` (bounded by the step's timeout
  and its cancellation).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import ipaddress
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.sources import load_code

T = TypeVar("T")

# Keywords whose statements return rows even where the driver cannot tell (DuckDB, Snowflake).
ROW_KEYWORDS = frozenset(
    {
        "SELECT",
        "WITH",
        "VALUES",
        "TABLE",
        "SHOW",
        "DESCRIBE",
        "DESC",
        "EXPLAIN",
        "PRAGMA",
        "SUMMARIZE",
        "FROM",
        "CALL",
        "PIVOT",
        "UNPIVOT",
        "LIST",
        "LS",
    }
)
# Statements that manage the transaction themselves: a script holding one is not wrapped.
TRANSACTION_KEYWORDS = frozenset(
    {
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
    }
)


def kind_of(who: str) -> str:
    """The error type for a message prefix: "postgres sink" -> "postgres"."""
    return who.split()[0]


# -- statements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One statement of a script, with what a driver needs to know before running it."""

    text: str
    keyword: str  # the first word, upper-cased ("" when there is none)
    qmarks: int = 0  # `?` placeholders
    numbered: int = 0  # the highest `$n` placeholder
    named: frozenset[str] = frozenset()  # `$name` placeholders (DuckDB)


_TAG = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_NUMBERED = re.compile(r"\$(\d+)")
_NAMED = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_WORD = re.compile(r"[A-Za-z_]+")


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def split_statements(sql: str, *, backslash_escapes: bool = False) -> list[Statement]:
    """The statements of `sql`, cut at every `;` outside quotes, dollar-quotes and comments.

    Statements holding nothing but whitespace and comments are dropped. `backslash_escapes`
    makes `\\` escape inside every '...' string (Snowflake); otherwise only in E'...'
    strings (PostgreSQL). An unterminated quote or comment runs to the end of the text, so
    the database reports it.
    """
    statements: list[Statement] = []
    n = len(sql)
    start = 0
    i = 0
    code = False  # has the current statement any code (not only comments)?
    keyword = ""
    qmarks = numbered = 0
    named: set[str] = set()

    def close(end: int) -> None:
        nonlocal code, keyword, qmarks, numbered, named
        text = sql[start:end].strip()
        if code:
            statements.append(Statement(text, keyword, qmarks, numbered, frozenset(named)))
        code, keyword, qmarks, numbered, named = False, "", 0, 0, set()

    while i < n:
        ch = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if ch == "-" and nxt == "-":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == "/" and nxt == "*":
            i = _skip_block_comment(sql, i)
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == ";":
            close(i)
            i += 1
            start = i
            continue
        if not code or (not keyword and ch.isalpha()):
            # The keyword is the first word, past any opening parentheses.
            code = True
            match = _WORD.match(sql, i)
            keyword = match.group(0).upper() if match else ""
            if ch == "(":
                i += 1
                continue
        prev = sql[i - 1] if i > 0 else ""
        if ch == "'":
            escapes = backslash_escapes or (prev in "eE" and (i < 2 or not _ident_char(sql[i - 2])))
            i = _skip_quoted(sql, i, "'", escapes)
        elif ch == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif ch == "$" and not _ident_char(prev):
            tag = _TAG.match(sql, i)
            if tag:
                end = sql.find(tag.group(0), tag.end())
                i = n if end < 0 else end + len(tag.group(0))
                continue
            number = _NUMBERED.match(sql, i)
            name = _NAMED.match(sql, i)
            if number:
                numbered = max(numbered, int(number.group(1)))
                i = number.end()
            elif name:
                named.add(name.group(1))
                i = name.end()
            else:
                i += 1
        elif ch == "?":
            qmarks += 1
            i += 1
        elif _ident_char(ch):
            # Skip a whole word, so a `$` or quote inside an identifier is not taken as one.
            j = i + 1
            while j < n and _ident_char(sql[j]):
                j += 1
            i = j
        else:
            i += 1
    close(n)
    return statements


def _skip_quoted(sql: str, i: int, quote: str, escapes: bool) -> int:
    """The index just past the string or quoted identifier opening at `i`."""
    j = i + 1
    n = len(sql)
    while j < n:
        ch = sql[j]
        if escapes and ch == "\\":
            j += 2
        elif ch == quote:
            if j + 1 < n and sql[j + 1] == quote:  # a doubled quote stands for itself
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return n


def _skip_block_comment(sql: str, i: int) -> int:
    """The index just past the /* ... */ comment opening at `i` (they nest, as in PostgreSQL)."""
    depth = 0
    j = i
    n = len(sql)
    while j < n:
        if sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return n


def statement_params(
    stmt: Statement, params: list[Any] | dict[str, Any], position: int, who: str
) -> tuple[list[Any] | dict[str, Any], int]:
    """The params `stmt` takes, and the position of the next unused `?` param.

    `$n` refers to `params[n-1]` in every statement; each `?` takes the next param in
    order across the script; `$name` (DuckDB) takes the whole mapping.
    """
    if stmt.named:
        if not isinstance(params, dict):
            raise ToolError(
                f"{who}: the query uses named parameters "
                f"(${sorted(stmt.named)[0]}), so `params` must be a mapping",
                error_type=kind_of(who),
            )
        return {k: v for k, v in params.items() if k in stmt.named}, position
    if isinstance(params, dict):
        if stmt.qmarks or stmt.numbered:
            raise ToolError(
                f"{who}: the query uses positional parameters, so `params` must be a list",
                error_type=kind_of(who),
            )
        return [], position
    if stmt.numbered:
        if stmt.numbered > len(params):
            raise ToolError(
                f"{who}: the query uses ${stmt.numbered} but only {len(params)} params were given",
                error_type=kind_of(who),
            )
        return params[: stmt.numbered], position
    if stmt.qmarks:
        end = position + stmt.qmarks
        if end > len(params):
            raise ToolError(
                f"{who}: the query has {end} `?` placeholders but only "
                f"{len(params)} params were given",
                error_type=kind_of(who),
            )
        return params[position:end], end
    return [], position


async def sql_text(ctx: ToolContext, spec: Mapping[str, Any], who: str) -> str:
    """The SQL of a call: `script` > `query_b64` / `command_b64` > `query` / `command`."""
    text = await load_code(
        dict(spec), ctx, code_keys=("query", "command"), b64_keys=("query_b64", "command_b64")
    )
    if text is None or not text.strip():
        raise ToolError(
            f"{who}: `query` (or `command`, `query_b64`, `script`) is required",
            error_type=kind_of(who),
        )
    return text


def params_of(spec: Mapping[str, Any], who: str) -> list[Any] | dict[str, Any]:
    """The `params` of a call: a list (positional) or a mapping (named); none is []."""
    params = spec.get("params")
    if params is None:
        return []
    if isinstance(params, tuple):
        return list(params)
    if not isinstance(params, list | dict):
        raise ToolError(
            f"{who}: `params` must be a list (or a mapping of names), not {type(params).__name__}",
            error_type=kind_of(who),
        )
    return params


def command_result(rowcount: int, status: str) -> dict[str, Any]:
    """The result of a script whose statements return no rows."""
    return {"rowcount": rowcount, "status": status}


# -- JSON-safe values -----------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """`value` as JSON data, the form every SQL tool returns rows in.

    Decimal: an int when integral, else a float (NaN/Infinity too), so numbers stay numbers
    for templates and Python steps; date, datetime, time: ISO 8601 text; timedelta
    (intervals): seconds as a float; UUID and IP addresses: text; bytes: base64 text;
    tuples and sets: lists; mappings: dicts with text keys; a PostgreSQL range:
    `{lower, upper, lower_inc, upper_inc, empty}`; anything else unknown: its `str()`.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, asyncpg.Range):
        return {
            "lower": json_safe(value.lower),
            "upper": json_safe(value.upper),
            "lower_inc": value.lower_inc,
            "upper_inc": value.upper_inc,
            "empty": value.isempty,
        }
    if isinstance(
        value,
        uuid.UUID
        | ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network
        | ipaddress.IPv4Interface
        | ipaddress.IPv6Interface,
    ):
        return str(value)
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    return str(value)


# -- identifiers ----------------------------------------------------------------------------


def parse_table_name(name: Any, fold: Callable[[str], str], who: str) -> tuple[str, ...]:
    """The parts of `schema.table` (or `db.schema.table`), each as the database names it.

    A "quoted" part is taken as written; a bare part is folded as the database folds
    unquoted names (`fold`: str.lower for PostgreSQL, str.upper for Snowflake).
    """
    if not isinstance(name, str) or not name.strip():
        raise ToolError(f"{who}: `table` (like schema.table) is required", error_type=kind_of(who))
    parts: list[str] = []
    text = name.strip()
    i = 0
    while True:
        if text.startswith('"', i):
            end = _skip_quoted(text, i, '"', False)
            if end > len(text) or not text[end - 1 : end] == '"' or end - i < 3:
                raise ToolError(f"{who}: bad table name {name!r}", error_type=kind_of(who))
            parts.append(text[i + 1 : end - 1].replace('""', '"'))
            i = end
        else:
            end = text.find(".", i)
            end = len(text) if end < 0 else end
            bare = text[i:end].strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", bare):
                raise ToolError(
                    f"{who}: bad table name {name!r} (quote parts that are "
                    'not plain names, like public."My Table")',
                    error_type=kind_of(who),
                )
            parts.append(fold(bare))
            i = end
        if i >= len(text):
            break
        if text[i] != ".":
            raise ToolError(f"{who}: bad table name {name!r}", error_type=kind_of(who))
        i += 1
    if len(parts) > 3:
        raise ToolError(f"{who}: bad table name {name!r}", error_type=kind_of(who))
    return tuple(parts)


def quote_ident(name: str) -> str:
    """`name` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_name(parts: tuple[str, ...]) -> str:
    """A qualified name, each part quoted."""
    return ".".join(quote_ident(part) for part in parts)


def match_columns(keys: list[str], columns: list[str], table: str, who: str) -> dict[str, str]:
    """Each row key's column: the same name, else the one column equal to it ignoring case."""
    exact = set(columns)
    folded: dict[str, list[str]] = {}
    for column in columns:
        folded.setdefault(column.lower(), []).append(column)
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        if key in exact:
            mapping[key] = key
        elif len(folded.get(key.lower(), [])) == 1:
            mapping[key] = folded[key.lower()][0]
        else:
            unknown.append(key)
    if unknown:
        raise ToolError(
            f"{who}: table {table} has no column "
            f"{', '.join(map(repr, unknown))} (its columns: {', '.join(columns)})",
            error_type=kind_of(who),
            table=table,
        )
    return mapping


def column_sources(keys: list[str], mapping: Mapping[str, str]) -> dict[str, list[str]]:
    """Each written column with the row keys that fill it (keys differing only in case)."""
    columns: dict[str, list[str]] = {}
    for key in keys:
        columns.setdefault(mapping[key], []).append(key)
    return columns


def value_of(row: Mapping[str, Any], keys: list[str]) -> Any:
    """The row's value under the first of `keys` it has, else None."""
    for key in keys:
        if key in row:
            return row[key]
    return None


def row_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, in the order they first appear."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row:
            keys.setdefault(key, None)
    return list(keys)


def key_columns(spec: Mapping[str, Any], mode: str, columns: list[str], who: str) -> list[str]:
    """The `key` columns of an upsert (each one of the written columns)."""
    key = spec.get("key")
    if isinstance(key, str):
        key = [key]
    if mode != "upsert":
        return list(key or [])
    if not key or not isinstance(key, list) or not all(isinstance(k, str) for k in key):
        raise ToolError(
            f"{who}: mode upsert needs `key`, the list of columns that identify a row",
            error_type=kind_of(who),
        )
    missing = [k for k in key if k not in columns]
    if missing:
        raise ToolError(
            f"{who}: key column {', '.join(map(repr, missing))} is in no row",
            error_type=kind_of(who),
        )
    return key


def dedupe_last(rows: list[tuple[Any, ...]], key_index: list[int]) -> list[tuple[Any, ...]]:
    """`rows` with one row per key, the last one given (an upsert cannot touch a row twice)."""
    latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        latest[tuple(_hashable(row[i]) for i in key_index)] = row
    return list(latest.values())


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


SINK_MODES = ("insert", "upsert", "replace")


def sink_mode(spec: Mapping[str, Any], who: str) -> str:
    """The sink's `mode`: insert (default), upsert or replace."""
    mode = spec.get("mode") or "insert"
    if mode not in SINK_MODES:
        raise ToolError(
            f"{who}: `mode` must be one of {', '.join(SINK_MODES)}, not {mode!r}",
            error_type=kind_of(who),
        )
    return str(mode)


# -- time bounds ----------------------------------------------------------------------------


def timeout_ms(ctx: ToolContext) -> int | None:
    """The step's timeout in whole milliseconds (at least 1), or None when unbounded."""
    if ctx.timeout is None or ctx.timeout <= 0:
        return None
    return max(1, math.ceil(ctx.timeout * 1000))
