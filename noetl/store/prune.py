"""Retention: deleting ended executions, whole trees at a time, in short transactions.

Invariants:
- a tree (an execution without a stored parent, and its descendants) is pruned whole or not
  at all, and only when every execution in it has a terminal status and ended before the
  cutoff: a running or queued execution, or a parent with a live descendant, is never
  touched, and no remaining execution refers to a pruned child;
- each batch is one short transaction holding row locks on dead executions only (nothing a
  live mesh writes), with `lock_timeout` so that it never queues behind anybody;
- when an archive is asked for, an execution is deleted only if its events are exactly the
  ones archived (same count and newest event id, checked under the batch's row locks);
- a blob is deleted only when no remaining event or execution row refers to it and it was
  neither stored nor reused within `BLOB_GRACE` (`Store.put_blob` refreshes `created_at`
  of a blob reused after an hour), so a value being written right now is never lost.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import asyncpg
import msgspec

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

__all__ = [
    "BLOB_GRACE",
    "Tree",
    "delete_trees",
    "eligible_trees",
    "event_rows",
    "sweep_blobs",
    "unreferenced_blobs",
]

_TERMINAL: Final = "('completed', 'failed', 'cancelled')"
# Blobs younger than this are never swept (see the module's invariants).
BLOB_GRACE: Final = dt.timedelta(hours=2)
_LOCK_TIMEOUT: Final = "5s"
_BLOB_BATCH: Final = 1000

# Roots after `$3` in id order, each with its whole tree and whether all of it may go.
_TREES = f"""
WITH RECURSIVE roots AS (
    SELECT x.execution_id FROM noetl.execution x
    WHERE x.execution_id > $3 AND x.status IN {_TERMINAL} AND x.ended_at < $1
      AND (x.parent_execution_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM noetl.execution p
                          WHERE p.execution_id = x.parent_execution_id))
    ORDER BY x.execution_id LIMIT $2
), tree(root, id) AS (
    SELECT execution_id, execution_id FROM roots
    UNION ALL
    SELECT tree.root, c.execution_id
    FROM noetl.execution c JOIN tree ON c.parent_execution_id = tree.id
)
SELECT tree.root, array_agg(tree.id ORDER BY tree.id) AS ids,
       bool_and(x.status IN {_TERMINAL} AND x.ended_at < $1) AS ended,
       (SELECT count(*) FROM noetl.event e WHERE e.execution_id = ANY(array_agg(tree.id)))
           AS events
FROM tree JOIN noetl.execution x ON x.execution_id = tree.id
GROUP BY tree.root ORDER BY tree.root
"""

_REF: Final = r'"\$noetl_ref": "([0-9a-f]{64})"'
# Every digest a row outside `$1` refers to (a reference is `{"$noetl_ref": digest, ...}`).
_REFERENCED = f"""
SELECT m[1] AS digest FROM noetl.event e,
       regexp_matches(coalesce(e.payload::text, '') || coalesce(e.error::text, ''),
                      '{_REF}', 'g') m
WHERE NOT (e.execution_id = ANY($1))
UNION
SELECT m[1] FROM noetl.execution x,
       regexp_matches(coalesce(x.workload::text, '') || coalesce(x.result::text, ''),
                      '{_REF}', 'g') m
WHERE NOT (x.execution_id = ANY($1))
"""


class Tree(msgspec.Struct, frozen=True, kw_only=True):
    """An execution without a stored parent and its descendants (`ids`, the root first
    among them in id order), with their event count."""

    root: int
    ids: tuple[int, ...]
    events: int


async def eligible_trees(
    conn: Conn | asyncpg.Pool, cutoff: dt.datetime, after: int, limit: int
) -> tuple[list[Tree], int]:
    """The prunable trees among the next `limit` ended roots after id `after`, and the id
    to continue from (`after` itself when there are no more roots)."""
    rows = await conn.fetch(_TREES, cutoff, limit, after)
    trees = [
        Tree(root=r["root"], ids=tuple(r["ids"]), events=int(r["events"]))
        for r in rows
        if r["ended"]
    ]
    return trees, max((int(r["root"]) for r in rows), default=after)


async def event_rows(conn: Conn | asyncpg.Pool, execution_id: int) -> list[dict[str, Any]]:
    """Every event of an execution with all its columns, oldest first (what is archived);
    ids as strings, like every other JSON document of the runtime."""
    rows = await conn.fetch(
        "SELECT * FROM noetl.event WHERE execution_id = $1 ORDER BY event_id", execution_id
    )
    out = []
    for r in rows:
        row = dict(r)
        for key in ("event_id", "execution_id", "parent_execution_id"):
            if row[key] is not None:
                row[key] = str(row[key])
        row["created_at"] = row["created_at"].isoformat()
        out.append(row)
    return out


async def delete_trees(
    conn: Conn,
    trees: list[Tree],
    cutoff: dt.datetime,
    archived: dict[int, tuple[int, int]] | None,
) -> tuple[list[Tree], int]:
    """Delete the trees still prunable under row locks (and, with `archived`, whose every
    execution's events still are the (count, newest event id) archived); return the trees
    deleted and their events deleted. One transaction."""
    ids = [i for t in trees for i in t.ids]
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        locked = {
            int(r["execution_id"])
            for r in await conn.fetch(
                "SELECT execution_id FROM noetl.execution WHERE execution_id = ANY($1) "
                f"AND status IN {_TERMINAL} AND ended_at < $2 FOR UPDATE",
                ids,
                cutoff,
            )
        }
        now = {
            int(r["execution_id"]): (int(r["n"]), int(r["newest"]))
            for r in await conn.fetch(
                "SELECT execution_id, count(*) AS n, max(event_id) AS newest FROM noetl.event "
                "WHERE execution_id = ANY($1) GROUP BY execution_id",
                ids,
            )
        }

        def unchanged(i: int) -> bool:
            return archived is None or archived.get(i) == now.get(i, (0, 0))

        # A tree whose children changed since it was chosen is left for the next run.
        kept = [t for t in trees if all(i in locked and unchanged(i) for i in t.ids)]
        gone = [i for t in kept for i in t.ids]
        if not gone:
            return [], 0
        deleted = await conn.execute("DELETE FROM noetl.event WHERE execution_id = ANY($1)", gone)
        await conn.execute("DELETE FROM noetl.execution WHERE execution_id = ANY($1)", gone)
    return kept, int(deleted.split()[-1])


async def unreferenced_blobs(
    conn: Conn | asyncpg.Pool, before: dt.datetime, excluded: list[int]
) -> list[str]:
    """Digests of blobs stored before `before` that no event or execution row refers to,
    not counting the executions `excluded` (those about to be pruned, for a dry run).

    Reads every event's payload once, and only when some blob is old enough to go.
    """
    old = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM noetl.blob WHERE created_at < $1)", before
    )
    if not old:
        return []
    rows = await conn.fetch(
        f"SELECT digest FROM noetl.blob WHERE created_at < $1 "
        f"AND digest NOT IN ({_REFERENCED.replace('$1', '$2')})",
        before,
        excluded,
    )
    return sorted(str(r["digest"]) for r in rows)


async def sweep_blobs(conn: Conn | asyncpg.Pool, digests: list[str], before: dt.datetime) -> int:
    """Delete those of `digests` still older than `before`, in batches; return how many."""
    count = 0
    for i in range(0, len(digests), _BLOB_BATCH):
        status = await conn.execute(
            "DELETE FROM noetl.blob WHERE digest = ANY($1) AND created_at < $2",
            digests[i : i + _BLOB_BATCH],
            before,
        )
        count += int(status.split()[-1])
    return count
