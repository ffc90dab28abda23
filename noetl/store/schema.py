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
    (
        7,
        "decisions of many executions in one transaction (group commit)",
        """
        -- Each decision commits whole or not at all, on its own: its events go in with the
        -- rest, and when one of them finds its version or dedup key taken, the decision's
        -- rows are removed again and its projection is not written. Returns the executions
        -- whose decision did not go in (a version conflict each). No subtransaction.
        -- Rows go in (execution, version) order, as every batch writes them, so that two
        -- writers of the same executions wait for each other instead of deadlocking.
        CREATE OR REPLACE FUNCTION noetl.append_decisions(
            e_execution bigint[], e_parent bigint[], e_version int[], e_type text[],
            e_step text[], e_command text[], e_dedup text[], e_status text[],
            e_payload text[], e_error text[],
            p_execution bigint[], p_parent bigint[], p_path text[], p_version int[],
            p_status text[], p_workload text[], p_result text[], p_error text[],
            p_restarted bigint[])
        RETURNS bigint[] LANGUAGE plpgsql AS $fn$
        DECLARE
            ids bigint[];
            owners bigint[];
            conflicted bigint[];
        BEGIN
            WITH ins AS (
                INSERT INTO noetl.event (execution_id, version, event_type, step, command_id,
                                         dedup_key, parent_execution_id, status, payload,
                                         error)
                SELECT u.execution_id, u.version, u.event_type, u.step, u.command_id,
                       u.dedup_key, u.parent, u.status, u.payload::jsonb, u.error::jsonb
                FROM unnest(e_execution, e_version, e_type, e_step, e_command, e_dedup,
                            e_parent, e_status, e_payload, e_error)
                     AS u(execution_id, version, event_type, step, command_id, dedup_key,
                          parent, status, payload, error)
                ORDER BY u.execution_id, u.version
                ON CONFLICT DO NOTHING
                RETURNING event_id, execution_id
            )
            SELECT coalesce(array_agg(ins.event_id), '{}'),
                   coalesce(array_agg(ins.execution_id), '{}')
            INTO ids, owners FROM ins;
            SELECT coalesce(array_agg(w.x), '{}') INTO conflicted
            FROM (SELECT x, count(*) AS n FROM unnest(e_execution) AS x GROUP BY x) AS w
            LEFT JOIN (SELECT x, count(*) AS n FROM unnest(owners) AS x GROUP BY x) AS g
                   USING (x)
            WHERE g.n IS DISTINCT FROM w.n;
            IF cardinality(conflicted) > 0 THEN
                DELETE FROM noetl.event
                WHERE event_id = ANY(ids) AND execution_id = ANY(conflicted);
            END IF;
            INSERT INTO noetl.execution (execution_id, path, version, status, workload,
                                         result, error, parent_execution_id, restarted_from,
                                         ended_at)
            SELECT p.execution_id, p.path, p.version, p.status, p.workload::jsonb,
                   p.result::jsonb, p.error::jsonb, p.parent, p.restarted,
                   CASE WHEN p.status IN ('completed', 'failed', 'cancelled') THEN now() END
            FROM unnest(p_execution, p_parent, p_path, p_version, p_status, p_workload,
                        p_result, p_error, p_restarted)
                 AS p(execution_id, parent, path, version, status, workload, result, error,
                      restarted)
            WHERE NOT p.execution_id = ANY(conflicted)
            ORDER BY p.execution_id
            ON CONFLICT (execution_id) DO UPDATE
               SET status = excluded.status, result = excluded.result,
                   error = excluded.error, ended_at = excluded.ended_at;
            RETURN conflicted;
        END
        $fn$;
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
