"""The PostgreSQL store: event table, execution projection, catalog and credentials."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import asyncpg
import msgspec

from noetl import blobs
from noetl.engine.events import Event
from noetl.engine.state import ExecutionState
from noetl.errors import CatalogError, ExecutionNotFound, StoreError
from noetl.keys import TIMER_FIRED_PREFIX
from noetl.store import batches, order, replay, schema
from noetl.store import events as event_sql
from noetl.store.batches import RunnerWrite
from noetl.store.events import Projection
from noetl.store.group import GroupCommit
from noetl.store.pinned import Pinned
from noetl.store.views import execution_summary

# Walks running executions only: an ended one's subtree is being cancelled.
# The longest list at the top of each value or under one of its keys, counted in PostgreSQL;
# a value over the bound is not sent.
_BOUNDED_BLOBS = """
SELECT digest, size, items, CASE WHEN items <= $2 THEN data END AS data
FROM (
  SELECT digest, size, data,
         CASE jsonb_typeof(data)
           WHEN 'array' THEN jsonb_array_length(data)
           WHEN 'object' THEN (SELECT coalesce(max(jsonb_array_length(v)), 0)
                               FROM jsonb_each(data) AS e(k, v)
                               WHERE jsonb_typeof(v) = 'array')
           ELSE 0
         END AS items
  FROM noetl.blob WHERE digest = ANY($1::text[])
) AS b
"""

_LIVE_TREE = """
WITH RECURSIVE tree(id) AS (
    SELECT execution_id FROM noetl.execution WHERE execution_id = $1 AND status = 'running'
    UNION ALL
    SELECT e.execution_id FROM noetl.execution e JOIN tree ON e.parent_execution_id = tree.id
    WHERE e.status = 'running'
)
SELECT count(*) AS n, coalesce(bool_or(id = $2), false) AS live FROM tree
"""

__all__ = ["Projection", "Store"]


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Key order survives JSONB through `noetl.store.order` (SQL rows keep their columns').
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=order.encode, decoder=order.decode, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is (asyncpg rolls back an open transaction
    first). The default reset (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`)
    is one more round trip on every store call, a decision's and an outcome's commit
    included; the store leaves no session state behind: its locks are transaction-scoped
    (`pg_advisory_xact_lock`), its settings `SET LOCAL` or fixed at connect, and it neither
    listens nor declares cursors outside a transaction."""


class Store:
    """A pool of connections to the runtime's database and the operations on it."""

    def __init__(self, pool: asyncpg.Pool, relaxed: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        # Facts whose loss in a crash costs nothing (command.started) commit without waiting
        # for the WAL flush, which takes a disk sync off every command's path.
        self.relaxed = relaxed or pool
        # Runner events of concurrent callers commit together (noetl.store.group), each
        # batcher on a connection of its own; relaxed facts batch apart, so that they never
        # wait for a WAL flush.
        self._pinned = [Pinned(each) for each in dict.fromkeys((pool, self.relaxed))]
        batchers = [self._runner_batches(pinned) for pinned in self._pinned]
        self.outcomes, self.relaxed_outcomes = batchers[0], batchers[-1]

    @staticmethod
    def _runner_batches(conn: Pinned) -> GroupCommit[RunnerWrite, tuple[bool, ...]]:
        return GroupCommit(
            partial(batches.write_runner_events, conn), batches.runner_keys, batches.MAX_BATCH
        )

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 10, relaxed: bool = False
    ) -> Store:
        """Open a pool (and a small relaxed-durability pool when `relaxed`)."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
            )
            relaxed_pool = None
            if relaxed:
                relaxed_pool = await asyncpg.create_pool(
                    dsn,
                    min_size=1,
                    max_size=max(2, max_size // 2),
                    init=_init_connection,
                    reset=_keep_session,
                    server_settings={"synchronous_commit": "off"},
                )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(pool, relaxed_pool)

    async def close(self) -> None:
        """Close the pools."""
        for pinned in self._pinned:
            await pinned.release()
        if self.relaxed is not self.pool:
            await self.relaxed.close()
        await self.pool.close()

    # -- schema ------------------------------------------------------------------------

    async def init_schema(self) -> list[int]:
        """Create or upgrade the schema; return the migrations applied now."""
        async with self.pool.acquire() as conn:
            return await schema.migrate(conn)

    async def check_schema(self) -> list[str]:
        """What is missing or different in the schema."""
        async with self.pool.acquire() as conn:
            return await schema.check(conn)

    # -- events ------------------------------------------------------------------------

    async def append_decision(
        self,
        execution_id: int,
        parent_execution_id: int | None,
        events: list[Event],
        projection: Projection | None,
    ) -> None:
        """Commit a coordinator decision (raises VersionConflict if stale)."""
        await event_sql.append_decision(
            self.pool, execution_id, parent_execution_id, events, projection
        )

    async def append_runner_event(
        self, execution_id: int, event: Event, *, durable: bool = True
    ) -> bool:
        """Record a runner event once; False if it was already there. Returns once it is
        committed, possibly in one transaction with other callers' events."""
        batcher = self.outcomes if durable else self.relaxed_outcomes
        (inserted,) = await batcher.submit(RunnerWrite(execution_id, (event,)))
        return inserted

    async def append_runner_events(self, execution_id: int, events: list[Event]) -> list[bool]:
        """Record several runner events of one caller once each, durably, in one
        transaction and one round trip (never split across batches), earlier events with
        lower event ids; per event, whether it was new. Their dedup keys must differ and be
        in descending order (the order batches write rows in): `started:` before `outcome:`."""
        keys = [e.dedup_key for e in events]
        if keys != sorted(set(keys), reverse=True):
            raise StoreError(f"runner events of one write need distinct, descending keys: {keys}")
        return list(await self.outcomes.submit(RunnerWrite(execution_id, tuple(events))))

    async def find_event(self, execution_id: int, dedup_key: str) -> Event | None:
        """The event with this dedup key, if written."""
        return await event_sql.find(self.pool, execution_id, dedup_key)

    async def load_decisions(self, execution_id: int, after_version: int = 0) -> list[Event]:
        """Decision events in version order."""
        return await event_sql.load_decisions(self.pool, execution_id, after_version)

    async def load_state(self, execution_id: int) -> ExecutionState:
        """The execution's state rebuilt from its decision events (a new one if none)."""
        return await replay.load_state(self.pool, execution_id)

    async def live_tree(self, root_execution_id: int, execution_id: int) -> tuple[int, bool]:
        """The running executions under `root_execution_id` (itself excluded) and whether
        `execution_id` is among them or is the root, running."""
        row = await self.pool.fetchrow(_LIVE_TREE, root_execution_id, execution_id)
        assert row is not None
        return max(int(row["n"]) - 1, 0), bool(row["live"])

    async def list_events(self, execution_id: int) -> list[dict[str, Any]]:
        """All events of an execution, oldest first."""
        await self.get_execution(execution_id)
        return await event_sql.list_events(self.pool, execution_id)

    # -- large values ------------------------------------------------------------------

    async def put_blob(self, data: bytes) -> dict[str, Any]:
        """Store JSON `data` once (by content hash) and return its reference."""
        ref, digest = blobs.make_ref(data)
        # Key orders need recording only where there are objects: a list of ten million
        # scalars goes as it is, without a walk over its items.
        text = order.encode(msgspec.json.decode(data)) if b"{" in data else data.decode()
        await self.pool.execute(
            # A blob reused after an hour is marked young again, so that `db prune` (which
            # spares blobs younger than two hours) never deletes a value being referenced.
            "INSERT INTO noetl.blob (digest, data, size) VALUES ($1, $2::text::jsonb, $3) "
            "ON CONFLICT (digest) DO UPDATE SET created_at = now() "
            "WHERE noetl.blob.created_at < now() - interval '1 hour'",
            digest,
            text,
            len(data),
        )
        return ref

    async def get_blobs(
        self, digests: Iterable[str], max_items: int | None = None
    ) -> dict[str, Any]:
        """The values of stored blobs, by digest. With `max_items`, a value holding a list
        longer than that (at its top or under one key) is counted by PostgreSQL and left
        there: it comes back as `blobs.Oversized`, so the caller's memory stays bounded."""
        wanted = sorted(set(digests))
        if not wanted:
            return {}
        if max_items is None:
            rows = await self.pool.fetch(
                "SELECT digest, data FROM noetl.blob WHERE digest = ANY($1::text[])", wanted
            )
            found = {r["digest"]: r["data"] for r in rows}
        else:
            found = {}
            for r in await self.pool.fetch(_BOUNDED_BLOBS, wanted, max_items):
                ref = {blobs.REF_KEY: r["digest"], "size": r["size"]}
                over = r["items"] > max_items
                found[r["digest"]] = (
                    blobs.Oversized(ref, r["items"], max_items) if over else r["data"]
                )
        missing = set(wanted) - set(found)
        if missing:
            raise StoreError(f"stored values are missing: {sorted(missing)}")
        return found

    async def resolve(self, value: Any) -> Any:
        """`value` with its blob references replaced by the stored values."""
        digests = list(blobs.refs_in(value))
        if not digests:
            return value
        return blobs.resolve(value, await self.get_blobs(digests))

    # -- catalog -----------------------------------------------------------------------

    async def register_playbook(
        self, path: str, content: str, files: dict[str, str] | None = None
    ) -> tuple[int, bool]:
        """Store `content` (and the script `files` it ships) as the next version of `path`;
        an unchanged playbook keeps its version. Returns (version, created)."""
        files = files or {}
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialises registrations of one path so versions stay gapless and monotonic.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", path)
            latest = await conn.fetchrow(
                "SELECT version, content, files FROM noetl.catalog WHERE path = $1 "
                "ORDER BY version DESC LIMIT 1",
                path,
            )
            if latest is not None and latest["content"] == content and latest["files"] == files:
                return int(latest["version"]), False
            version = 1 if latest is None else int(latest["version"]) + 1
            await conn.execute(
                "INSERT INTO noetl.catalog (path, version, content, files) VALUES ($1, $2, $3, $4)",
                path,
                version,
                content,
                files,
            )
            return version, True

    async def get_playbook(self, path: str, version: int | None = None) -> tuple[int, str]:
        """(version, content) of `path` at `version`, or its latest version."""
        if version is None:
            row = await self.pool.fetchrow(
                "SELECT version, content FROM noetl.catalog WHERE path = $1 "
                "ORDER BY version DESC LIMIT 1",
                path,
            )
        else:
            row = await self.pool.fetchrow(
                "SELECT version, content FROM noetl.catalog WHERE path = $1 AND version = $2",
                path,
                version,
            )
        if row is None:
            at = "" if version is None else f" version {version}"
            raise CatalogError(
                f"no playbook registered at `{path}`{at}: register it with "
                "`noetl-runtime register FILE` (`noetl-runtime playbooks` lists those there are)"
            )
        return int(row["version"]), str(row["content"])

    async def get_files(self, path: str, version: int) -> dict[str, str]:
        """The script files registered with a playbook version."""
        files = await self.pool.fetchval(
            "SELECT files FROM noetl.catalog WHERE path = $1 AND version = $2", path, version
        )
        return dict(files or {})

    async def list_playbooks(self) -> list[dict[str, Any]]:
        """Every registered path with its latest version."""
        rows = await self.pool.fetch(
            "SELECT path, max(version) AS version, max(created_at) AS updated_at "
            "FROM noetl.catalog GROUP BY path ORDER BY path"
        )
        return [
            {"path": r["path"], "version": r["version"], "updated_at": r["updated_at"].isoformat()}
            for r in rows
        ]

    # -- executions --------------------------------------------------------------------

    async def get_execution(self, execution_id: int) -> dict[str, Any]:
        """The execution row (status, result, error, times)."""
        row = await self.pool.fetchrow(
            "SELECT * FROM noetl.execution WHERE execution_id = $1", execution_id
        )
        if row is None:
            raise ExecutionNotFound(f"no execution {execution_id}")
        return dict(row)

    async def describe(self, execution_id: int) -> dict[str, Any]:
        """The document `status --json` prints: status, result, each step's result, vars."""
        row = await self.get_execution(execution_id)
        events = await self.pool.fetch(
            "SELECT event_type, step, payload, error FROM noetl.event "
            "WHERE execution_id = $1 "
            "AND event_type IN ('execution.started', 'step.completed', 'step.failed', "
            "'step.item') "
            "ORDER BY version",
            execution_id,
        )
        steps: dict[str, Any] = {}
        variables: dict[str, Any] = {}
        for e in events:
            payload = e["payload"] or {}
            # Variables ride on every decision that sets them (a step's end, a `case` rule on
            # one call of a step, a handled failure), as the engine's own state folds them.
            variables.update(payload.get("vars") or {})
            if e["event_type"] == "execution.started":
                # A restarted execution starts with the results it kept.
                restored = payload.get("restore") or {}
                for name, step in (restored.get("steps") or {}).items():
                    steps[name] = (
                        step.get("result")
                        if step.get("status") == "completed"
                        else {"error": step.get("error")}
                    )
                variables.update(restored.get("vars") or {})
            elif e["event_type"] == "step.completed":
                steps[e["step"]] = payload.get("result")
            elif e["event_type"] == "step.failed":
                steps[e["step"]] = {"error": e["error"]}
        return {
            "execution_id": str(execution_id),
            "path": row["path"],
            "version": row["version"],
            "status": row["status"],
            "result": await self.resolve(row["result"]),
            "steps": {name: await self.resolve(value) for name, value in steps.items()},
            "vars": variables,
            "error": row["error"],
            "parent_execution_id": (
                None if row["parent_execution_id"] is None else str(row["parent_execution_id"])
            ),
            "restarted_from": (
                None if row["restarted_from"] is None else str(row["restarted_from"])
            ),
            "started_at": row["started_at"].isoformat(),
            "ended_at": row["ended_at"].isoformat() if row["ended_at"] else None,
        }

    async def list_executions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent executions, newest first."""
        rows = await self.pool.fetch(
            "SELECT execution_id, path, version, status, started_at, ended_at "
            "FROM noetl.execution ORDER BY started_at DESC LIMIT $1",
            limit,
        )
        return [execution_summary(r) for r in rows]

    async def pending_timers(self) -> list[tuple[int, str, float]]:
        """(execution_id, name, due_at) of timers scheduled and not fired, in running
        executions."""
        rows = await self.pool.fetch(
            """
            SELECT t.execution_id, t.payload->>'name' AS name,
                   (t.payload->>'due_at')::float8 AS due_at
            FROM noetl.execution x
            JOIN noetl.event t ON t.execution_id = x.execution_id
                              AND t.event_type = 'timer.scheduled'
            WHERE x.status = 'running'
              AND NOT EXISTS (SELECT 1 FROM noetl.event f
                              WHERE f.execution_id = t.execution_id
                                AND f.dedup_key = $1 || (t.payload->>'name'))
            """,
            TIMER_FIRED_PREFIX,
        )
        return [(int(r["execution_id"]), str(r["name"]), float(r["due_at"])) for r in rows]

    async def stale_executions(self, older_than_ms: int) -> list[int]:
        """Running executions whose newest event is older than `older_than_ms`."""
        rows = await self.pool.fetch(
            """
            SELECT x.execution_id FROM noetl.execution x
            WHERE x.status = 'running'
              AND coalesce((SELECT max(e.event_id) FROM noetl.event e
                            WHERE e.execution_id = x.execution_id), 0) >> 22
                  < floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1
            """,
            older_than_ms,
        )
        return [int(r["execution_id"]) for r in rows]
