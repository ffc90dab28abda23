"""Read-only queries behind the CLI's views (`status`, `watch`, `logs`, `list`): events after
a point, child executions, and executions filtered by status and path.

Every id leaves here as a string: 63-bit integers lose digits in JSON readers.
"""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["children", "events_after", "execution_summary", "find_executions"]


def execution_summary(r: asyncpg.Record) -> dict[str, Any]:
    """One execution of a list, from a row with its id, path, version, status and times."""
    return {
        "execution_id": str(r["execution_id"]),
        "path": r["path"],
        "version": r["version"],
        "status": r["status"],
        "started_at": r["started_at"].isoformat(),
        "ended_at": r["ended_at"].isoformat() if r["ended_at"] else None,
    }


async def events_after(pool: asyncpg.Pool, execution_id: int, after: int) -> list[dict[str, Any]]:
    """The events of an execution written after event id `after`, oldest first, with
    `at` (seconds since the epoch, from the time in the id's high bits)."""
    rows = await pool.fetch(
        "SELECT event_id, event_type, step, command_id, status, payload, error "
        "FROM noetl.event WHERE execution_id = $1 AND event_id > $2 ORDER BY event_id",
        execution_id,
        after,
    )
    return [{**dict(r), "at": (r["event_id"] >> 22) / 1000.0} for r in rows]


async def children(pool: asyncpg.Pool, execution_id: int) -> list[dict[str, Any]]:
    """The executions started by this one (its sub-playbook calls), oldest first."""
    rows = await pool.fetch(
        "SELECT execution_id, path, status FROM noetl.execution "
        "WHERE parent_execution_id = $1 ORDER BY started_at",
        execution_id,
    )
    return [{**dict(r), "execution_id": str(r["execution_id"])} for r in rows]


async def find_executions(
    pool: asyncpg.Pool, limit: int, *, status: str | None = None, path: str | None = None
) -> list[dict[str, Any]]:
    """The most recent executions, newest first, with `duration_seconds` (up to now for
    those still running). `path` matches exactly, or as a prefix when it ends with `*`."""
    where: list[str] = []
    args: list[object] = [limit]
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if path is not None:
        if path.endswith("*"):
            escaped = path[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(escaped + "%")
            where.append(f"path LIKE ${len(args)}")
        else:
            args.append(path)
            where.append(f"path = ${len(args)}")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = await pool.fetch(
        "SELECT execution_id, path, version, status, started_at, ended_at, "
        "extract(epoch FROM coalesce(ended_at, now()) - started_at)::float8 AS duration "
        f"FROM noetl.execution {clause}ORDER BY started_at DESC LIMIT $1",
        *args,
    )
    return [
        {**execution_summary(r), "duration_seconds": round(float(r["duration"]), 3)} for r in rows
    ]
