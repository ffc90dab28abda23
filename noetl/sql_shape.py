"""NoETL's per-statement shape of a SQL result, beside this runtime's (see tools.md).

A postgres result is stored in the smallest form that loses nothing, rows never twice:

- one statement that returns rows: the list of rows. NoETL's `command_0` is derived from it
  (`{status, rows, row_count, columns}`, the columns named by the first row);
- no statement that returns rows: `{rowcount, status}` of the last statement, and
  `command_<i>: {status, row_count, message}` for each statement;
- several statements, some returning rows: NoETL's mapping of `command_<i>` (the rows
  under their statement). It answers the list shape where a list is read: its length,
  `[0]` and iteration are those of the rows of the last statement that returned rows.

Pure functions of the value, so the engine reads results the same way on replay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

COMMAND: Final = re.compile(r"command_(\d+)")


def is_statements(value: Any) -> bool:
    """True for NoETL's mapping of statements (every key `command_<i>`, `command_0` first)."""
    return (
        isinstance(value, Mapping)
        and "command_0" in value
        and all(isinstance(k, str) and COMMAND.fullmatch(k) for k in value)
    )


def last_rows(statements: Mapping[str, Any]) -> list[Any]:
    """The rows of the last statement that returned rows ([] when none did)."""
    found: tuple[int, Any] | None = None
    for key, entry in statements.items():
        match = COMMAND.fullmatch(key)
        if match is None or not isinstance(entry, Mapping) or "rows" not in entry:
            continue
        index = int(match.group(1))
        if found is None or index > found[0]:
            found = (index, entry["rows"])
    return [] if found is None or not isinstance(found[1], list) else found[1]


def command_view(rows: Sequence[Any]) -> dict[str, Any]:
    """NoETL's `command_0` of a single statement's rows."""
    first = rows[0] if rows else None
    columns = list(first) if isinstance(first, Mapping) else []
    return {"status": "success", "rows": rows, "row_count": len(rows), "columns": columns}


def statement_entry(rows: list[Any] | None, columns: list[str], tag: str) -> dict[str, Any]:
    """One statement's `command_<i>`: its rows, or its row count and command tag."""
    if rows is not None:
        return {"status": "success", "rows": rows, "row_count": len(rows), "columns": columns}
    return {"status": "success", "row_count": tag_count(tag), "message": tag}


def tag_count(tag: str) -> int:
    """The row count at the end of a command tag ("INSERT 0 3" -> 3; "CREATE TABLE" -> 0)."""
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def script_result(entries: list[dict[str, Any]]) -> Any:
    """The stored result of a script's statements (`statement_entry` each, in order)."""
    commands = {f"command_{i}": entry for i, entry in enumerate(entries)}
    with_rows = [entry for entry in entries if "rows" in entry]
    if not with_rows:
        last = entries[-1]
        return {"rowcount": last["row_count"], "status": last["message"], **commands}
    if len(entries) == 1:
        rows: list[Any] = with_rows[0]["rows"]
        return rows
    return commands
