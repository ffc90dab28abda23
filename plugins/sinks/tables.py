"""What the table sinks (postgres, duckdb, snowflake) share: reading the request, matching
row keys to the table's columns, the upsert key, ON CONFLICT and batched VALUES lists.

Each sink keeps its own I/O and type conversion; these helpers only plan, so a table sink
reads `spec` and matches columns exactly like the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from noetl.errors import ToolError
from plugins.sql import (
    column_sources,
    dedupe_last,
    key_columns,
    match_columns,
    parse_table_name,
    quote_ident,
    row_keys,
    sink_mode,
)


@dataclass(frozen=True)
class TableWrite:
    """One write request: `keys` is the union of the rows' keys, `key` the upsert key,
    `empty` says there are no rows."""

    mode: str
    table: tuple[str, ...]
    keys: list[str]
    key: list[str]
    empty: bool

    @property
    def name(self) -> str:
        return ".".join(self.table)

    @property
    def nothing_to_do(self) -> bool:
        """No rows, and not a replace (which empties the table even then)."""
        return self.empty and self.mode != "replace"

    def report(self, written: int, **more: Any) -> dict[str, Any]:
        """The sink's result: `{"rows": n, "table", "mode", ...}`."""
        return {"rows": written, "table": self.name, "mode": self.mode, **more}


def table_write(
    spec: dict[str, Any],
    rows: list[dict[str, Any]],
    fold: Callable[[str], str],
    who: str,
    *,
    no_database: str | None = None,
) -> TableWrite:
    """Read `mode`, `table` (its bare parts folded as the database folds them) and `key`.

    `no_database`: the error type to raise for a `db.schema.table` name, where the
    database cannot be named.
    """
    mode = sink_mode(spec, who)
    table = parse_table_name(spec.get("table"), fold, who)
    if no_database is not None and len(table) > 2:
        raise ToolError(
            f"{who}: `table` must be table or schema.table, not {spec.get('table')!r}",
            error_type=no_database,
        )
    keys = row_keys(rows)
    return TableWrite(mode, table, keys, key_columns(spec, mode, keys, who), not rows)


@dataclass(frozen=True)
class Columns:
    """The table's columns the rows fill: `sources` gives each one's row keys, in order."""

    mapping: dict[str, str]
    sources: dict[str, list[str]]

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def upsert(
        self, key: list[str], records: list[tuple[Any, ...]]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The key's columns, and `records` with one record per key (the last one wins)."""
        key_cols = list(dict.fromkeys(self.mapping[k] for k in key))
        names = self.names
        return key_cols, dedupe_last(records, [names.index(c) for c in key_cols])


def columns_of(write: TableWrite, table_columns: Iterable[str], who: str) -> Columns:
    """Match the row keys to the table's columns (see `match_columns`)."""
    mapping = match_columns(write.keys, list(table_columns), write.name, who)
    return Columns(mapping, column_sources(write.keys, mapping))


def on_conflict(columns: list[str], key: list[str]) -> str:
    """` ON CONFLICT (key) DO UPDATE SET ...` (DO NOTHING when every column is the key)."""
    updates = [c for c in columns if c not in key]
    conflict = ", ".join(quote_ident(k) for k in key)
    if not updates:
        return f" ON CONFLICT ({conflict}) DO NOTHING"
    return f" ON CONFLICT ({conflict}) DO UPDATE SET " + ", ".join(
        f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates
    )


def value_batches(
    records: list[tuple[Any, ...]], width: int, per_statement: int
) -> Iterator[tuple[str, list[Any]]]:
    """`records` in batches of at most `per_statement` bound values: each batch's VALUES
    list of `?` placeholders and its values, flat."""
    size = max(1, per_statement // width) if width else 1
    placeholders = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(records), size):
        batch = records[start : start + size]
        yield ", ".join([placeholders] * len(batch)), [v for record in batch for v in record]
