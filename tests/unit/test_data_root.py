"""NOETL_DATA_ROOT: the file sink and DuckDB read and write local files only under it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.duckdb import DuckdbTool
from plugins.paths import file_mode
from plugins.sinks.duckdb import DuckdbSink
from plugins.sinks.file import FileSink

ROWS = [{"id": 1, "name": "ada"}, {"id": 2, "name": "bob"}]


def ctx(root: Path | None) -> ToolContext:
    return ToolContext(execution_id=1, command_id="c", step="s", timeout=30.0, data_root=root)


async def query(root: Path | None, sql: str, **spec: Any) -> Any:
    return await DuckdbTool().run(ctx(root), {"query": sql, **spec})


async def test_without_a_root_paths_are_used_as_given(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    result = await FileSink().write(ctx(None), {"path": str(target)}, ROWS)
    assert result["rows"] == 2 and target.read_text().count("\n") == 2


async def test_the_file_sink_writes_under_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    result = await FileSink().write(ctx(root), {"path": "out/rows.csv"}, ROWS)
    assert result["rows"] == 2
    assert (root / "out" / "rows.csv").read_text().splitlines()[0] == "id,name"
    for outside in (str(tmp_path / "escape.csv"), "../escape.csv", "/etc/cron.d/x.csv"):
        with pytest.raises(ToolError, match="is outside the data directory"):
            await FileSink().write(ctx(root), {"path": outside}, ROWS)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ToolError, match="is outside the data directory"):
        await FileSink().write(ctx(root), {"path": "link/escape.csv"}, ROWS)
    assert not (tmp_path / "escape.csv").exists()


async def test_files_written_by_the_sink_honour_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "rows.json"
    await FileSink().write(ctx(None), {"path": str(target)}, ROWS)
    assert stat.S_IMODE(target.stat().st_mode) == file_mode()
    assert file_mode() == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


async def test_duckdb_databases_and_files_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "people.csv").write_text("id,name\n1,ada\n")
    secret = tmp_path / "secret.csv"
    secret.write_text("token\nhunter2\n")
    rows = await query(root, f"SELECT name FROM read_csv('{root / 'people.csv'}')")
    assert rows == [{"name": "ada"}]
    with pytest.raises(ToolError, match="is outside the data directory"):
        await query(root, "SELECT 1", database=str(tmp_path / "x.duckdb"))
    for sql in (
        f"SELECT * FROM read_csv('{secret}')",
        f"COPY (SELECT 1 AS x) TO '{tmp_path / 'out.csv'}'",
        "SET enable_external_access = true",
    ):
        with pytest.raises(ToolError):
            await query(root, sql)
    assert not (tmp_path / "out.csv").exists()
    # Without a root, the same read works: the refusal above is the boundary's doing.
    assert await query(None, f"SELECT token FROM read_csv('{secret}')") == [{"token": "hunter2"}]


async def test_the_duckdb_sink_writes_under_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    await query(root, "CREATE TABLE people (id INTEGER, name TEXT)", database="w.duckdb")
    sink = DuckdbSink()
    result = await sink.write(ctx(root), {"database": "w.duckdb", "table": "people"}, ROWS)
    assert result["rows"] == 2 and (root / "w.duckdb").exists()
    with pytest.raises(ToolError, match="is outside the data directory"):
        await sink.write(ctx(root), {"database": str(tmp_path / "w.duckdb"), "table": "p"}, ROWS)
