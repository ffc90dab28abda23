"""The `file` sink, and the encodings it shares with the object-store sinks.

`{kind: file, path, format: json|jsonl|csv|parquet, mode}`; without `format`, the path's
suffix decides. Values are made JSON-safe first (dates as ISO text, ...). json: one array;
jsonl: a row per line; csv: a header of the rows' keys, nested values as JSON text, null as
an empty field; parquet: written by DuckDB (`COPY ... TO`), column types inferred from the
values. A file sink replaces the file (written to a temp file, then renamed into place)
unless `mode: insert` (alias `append`), which appends to a jsonl or csv file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.paths import confined, file_mode
from plugins.sql import json_safe, row_keys

FORMATS = ("json", "jsonl", "csv", "parquet")
_SUFFIXES = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
CONTENT_TYPES = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
_APPENDABLE = ("jsonl", "csv")


def format_of(spec: Mapping[str, Any], location: str, who: str) -> str:
    """The sink's `format`, else the one `location`'s suffix implies."""
    fmt = spec.get("format")
    if fmt is None:
        fmt = _SUFFIXES.get(Path(location).suffix.lower())
        if fmt is None:
            raise ToolError(
                f"{who}: set `format` ({', '.join(FORMATS)}); {location!r} has no known suffix",
                error_type="sink",
            )
    if fmt not in FORMATS:
        raise ToolError(
            f"{who}: `format` must be one of {', '.join(FORMATS)}, not {fmt!r}", error_type="sink"
        )
    return str(fmt)


def encode_rows(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """The rows in `fmt` (blocking: parquet goes through DuckDB and a temp file)."""
    safe = [json_safe(row) for row in rows]
    if fmt == "json":
        return json.dumps(safe, ensure_ascii=False).encode()
    if fmt == "jsonl":
        return _jsonl(safe)
    if fmt == "csv":
        return _csv(safe, row_keys(safe), header=True)
    return _parquet(safe)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


def _csv(rows: list[dict[str, Any]], columns: list[str], *, header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_field(row.get(c)) for c in columns])
    return out.getvalue().encode()


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    if not rows:
        raise ToolError(
            "parquet needs at least one row (its columns come from the rows)", error_type="sink"
        )
    with tempfile.TemporaryDirectory(prefix="noetl-parquet-") as tmp:
        source = Path(tmp) / "rows.jsonl"
        target = Path(tmp) / "rows.parquet"
        source.write_bytes(_jsonl(rows))
        conn = duckdb.connect()
        try:
            # sample_size=-1: infer each column's type from every row, not the first ones.
            # COPY takes no parameter for its target: the path is quoted as a literal.
            literal = str(target).replace("'", "''")
            conn.execute(
                "COPY (SELECT * FROM read_json(?, format='newline_delimited', "
                f"sample_size=-1)) TO '{literal}' (FORMAT parquet)",
                [str(source)],
            )
        except duckdb.Error as exc:
            raise ToolError(f"cannot write parquet: {exc}", error_type="sink") from exc
        finally:
            conn.close()
        return target.read_bytes()


class FileSink:
    """Sink kind `file`: writes to the runner's file system."""

    kind = "file"

    def __init__(self) -> None:
        # Appends to one path from concurrent steps must not interleave.
        self._locks: dict[str, asyncio.Lock] = {}

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Write `rows` to `spec["path"]`; `{"rows": n, "path", "format", "bytes"}`."""
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            raise ToolError("file sink: `path` is required", error_type="sink")
        fmt = format_of(spec, path, "file sink")
        mode = spec.get("mode") or "replace"
        if mode not in ("replace", "insert", "append"):
            raise ToolError(
                f"file sink: `mode` must be replace (the default) or insert (append), not {mode!r}",
                error_type="sink",
            )
        append = mode != "replace"
        if append and fmt not in _APPENDABLE:
            raise ToolError(
                f"file sink: cannot append to a {fmt} file (only jsonl and csv); use mode replace",
                error_type="sink",
            )
        target = Path(confined(path, ctx.data_root, "file sink"))
        lock = self._locks.setdefault(str(target), asyncio.Lock())
        async with lock:
            try:
                size = await asyncio.to_thread(_append if append else _replace, target, rows, fmt)
            except ToolError as exc:
                raise ToolError(f"file sink: {path}: {exc}", error_type="sink") from exc
            except OSError as exc:
                raise ToolError(
                    f"file sink: cannot write {path}: {exc.strerror or exc}",
                    error_type="sink",
                    path=path,
                ) from exc
        return {"rows": len(rows), "path": path, "format": fmt, "bytes": size}


def _replace(target: Path, rows: list[dict[str, Any]], fmt: str) -> int:
    data = encode_rows(rows, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A reader never sees half a file: write beside it, then rename over it.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            # mkstemp made it 0600; the file gets what the umask gives any other new file.
            os.fchmod(out.fileno(), file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


def _append(target: Path, rows: list[dict[str, Any]], fmt: str) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    safe = [json_safe(row) for row in rows]
    if fmt == "jsonl":
        data = _jsonl(safe)
    else:
        existing = _csv_header(target)
        columns = existing or row_keys(safe)
        extra = [key for key in row_keys(safe) if key not in columns]
        if extra:
            raise ToolError(
                f"the rows have columns the file's header lacks: {', '.join(extra)}",
                error_type="sink",
            )
        data = _csv(safe, columns, header=existing is None)
    with target.open("ab") as out:
        out.write(data)
    return len(data)


def _csv_header(path: Path) -> list[str] | None:
    """The columns of an existing CSV file's header; None for a missing or empty file."""
    try:
        with path.open(newline="") as src:
            return next(csv.reader(src), None)
    except FileNotFoundError:
        return None
