"""The PostgreSQL schema `noetl`, as numbered migrations applied once each, in order."""

from __future__ import annotations

from typing import Final

import asyncpg

# Each entry is applied in its own transaction and recorded in noetl.migration; never edit
# one that has shipped, add a new one.
MIGRATIONS: Final[list[tuple[int, str, str]]] = [
    (
        1,
        "event table, execution projection, catalog, credentials",
        """
        CREATE SCHEMA IF NOT EXISTS noetl;
        CREATE SEQUENCE IF NOT EXISTS noetl.event_seq;
        -- Time-ordered 64-bit ids: milliseconds since the epoch in the high bits, a sequence in
        -- the low 22, so an id tells when its event was written.
        CREATE OR REPLACE FUNCTION noetl.next_event_id() RETURNS bigint
        LANGUAGE sql VOLATILE AS $$
          SELECT (floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint << 22)
                 | (nextval('noetl.event_seq') & 4194303)
        $$;
        CREATE TABLE noetl.event (
            event_id bigint PRIMARY KEY DEFAULT noetl.next_event_id(),
            execution_id bigint NOT NULL,
            version int NULL,
            event_type text NOT NULL,
            step text NULL,
            command_id text NULL,
            dedup_key text NOT NULL,
            parent_execution_id bigint NULL,
            status text NULL,
            payload jsonb NULL,
            error jsonb NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT event_dedup UNIQUE (execution_id, dedup_key),
            CONSTRAINT event_version UNIQUE (execution_id, version)
        );
        CREATE INDEX event_by_execution ON noetl.event (execution_id, event_id);
        CREATE TABLE noetl.execution (
            execution_id bigint PRIMARY KEY,
            path text NOT NULL,
            version int NOT NULL,
            status text NOT NULL,
            workload jsonb NULL,
            result jsonb NULL,
            error jsonb NULL,
            parent_execution_id bigint NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            ended_at timestamptz NULL
        );
        CREATE INDEX execution_running ON noetl.execution (execution_id)
            WHERE status = 'running';
        CREATE INDEX execution_recent ON noetl.execution (started_at DESC);
        CREATE TABLE noetl.catalog (
            path text NOT NULL,
            version int NOT NULL,
            content text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (path, version)
        );
        CREATE TABLE noetl.credential (
            name text PRIMARY KEY,
            type text NOT NULL,
            data bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        2,
        "executions restarted from another one",
        """
        ALTER TABLE noetl.execution ADD COLUMN restarted_from bigint NULL;
        """,
    ),
    (
        3,
        "large values stored once by content hash",
        """
        CREATE TABLE IF NOT EXISTS noetl.blob (
            digest text PRIMARY KEY,
            data jsonb NOT NULL,
            size int NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        4,
        "script files that travel with a registered playbook",
        """
        ALTER TABLE noetl.catalog ADD COLUMN files jsonb NOT NULL DEFAULT '{}'::jsonb;
        """,
    ),
    (
        5,
        "running children of an execution, for the cap on live descendants",
        """
        CREATE INDEX IF NOT EXISTS execution_running_children
            ON noetl.execution (parent_execution_id) WHERE status = 'running';
        """,
    ),
    (
        6,
        "children of an execution, for `db prune`'s walk down a tree",
        """
        CREATE INDEX IF NOT EXISTS execution_children
            ON noetl.execution (parent_execution_id) WHERE parent_execution_id IS NOT NULL;
        """,
    ),
]

# What `db validate` expects to find: table -> columns.
EXPECTED_COLUMNS: Final[dict[str, set[str]]] = {
    "event": {
        "event_id",
        "execution_id",
        "version",
        "event_type",
        "step",
        "command_id",
        "dedup_key",
        "parent_execution_id",
        "status",
        "payload",
        "error",
        "created_at",
    },
    "execution": {
        "execution_id",
        "path",
        "version",
        "status",
        "workload",
        "result",
        "error",
        "parent_execution_id",
        "started_at",
        "ended_at",
        "restarted_from",
    },
    "catalog": {"path", "version", "content", "created_at", "files"},
    "credential": {"name", "type", "data", "created_at", "updated_at"},
    "blob": {"digest", "data", "size", "created_at"},
}

# Any constant works: it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x6E6F65746C


async def migrate(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> list[int]:
    """Apply the migrations not applied yet; return their numbers. Safe to run concurrently."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS noetl;
            CREATE TABLE IF NOT EXISTS noetl.migration (
                number int PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        done = {r["number"] for r in await conn.fetch("SELECT number FROM noetl.migration")}
        for number, description, sql in MIGRATIONS:
            if number in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO noetl.migration (number, description) VALUES ($1, $2)",
                number,
                description,
            )
            applied.append(number)
    return applied


async def check(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> list[str]:
    """What is missing or different from the expected schema (empty when all is well)."""
    problems: list[str] = []
    has_schema = await conn.fetchval(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'noetl'"
    )
    if not has_schema:
        return ["schema `noetl` does not exist: run `noetl-runtime db init`"]
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'noetl'"
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], set()).add(row["column_name"])
    for table, columns in EXPECTED_COLUMNS.items():
        if table not in found:
            problems.append(f"table noetl.{table} is missing")
            continue
        missing = sorted(columns - found[table])
        if missing:
            problems.append(f"table noetl.{table} lacks columns: {', '.join(missing)}")
    if "migration" in found:
        done = {r["number"] for r in await conn.fetch("SELECT number FROM noetl.migration")}
        pending = [n for n, _, _ in MIGRATIONS if n not in done]
        if pending:
            problems.append(f"migrations not applied: {pending}")
    else:
        problems.append("table noetl.migration is missing: run `noetl-runtime db init`")
    return problems
