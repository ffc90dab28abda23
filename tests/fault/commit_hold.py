"""A connection terminated exactly inside a decision's commit, deterministically.

Test-only: a statement trigger on `noetl.event` (created here, never by the runtime) holds
the transaction of the decision that starts a chosen step of a chosen execution, with its
rows inserted and not yet committed, in a `pg_sleep` loop for as long as a flag row exists.
The held backend names the decision in its `application_name`, so the test finds it in
`pg_stat_activity` (wait event `PgSleep`) and terminates it there.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec

_INSTALL = """
CREATE TABLE public.drill_hold (execution_id bigint NOT NULL, step text NOT NULL);
CREATE FUNCTION public.drill_hold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  eid bigint;
  first_version int;
  n int;
BEGIN
  SELECT min(r.execution_id), min(r.version), count(*) INTO eid, first_version, n
  FROM new_rows AS r WHERE r.version IS NOT NULL;
  IF n >= 2 AND EXISTS (
    SELECT 1 FROM new_rows AS r
    JOIN public.drill_hold AS h ON h.execution_id = r.execution_id AND h.step = r.step
    WHERE r.event_type = 'step.started'
  ) THEN
    PERFORM set_config('application_name',
                       format('drill-hold %s %s %s', eid, first_version, n), true);
    WHILE EXISTS (SELECT 1 FROM public.drill_hold) LOOP
      PERFORM pg_sleep(0.05);
    END LOOP;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER drill_hold AFTER INSERT ON noetl.event
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.drill_hold();
"""
_UNINSTALL = """
DROP TRIGGER drill_hold ON noetl.event;
DROP FUNCTION public.drill_hold();
DROP TABLE public.drill_hold;
"""
_HELD = """
SELECT pid, application_name FROM pg_stat_activity
WHERE application_name LIKE 'drill-hold %' AND wait_event = 'PgSleep' AND pid <> $1
ORDER BY pid LIMIT 1
"""


class Held(msgspec.Struct, frozen=True):
    """A decision held inside its commit: its backend, execution, first version and how
    many events it writes."""

    pid: int
    execution_id: int
    version: int
    events: int


class CommitHold:
    """Holds the commit of the decision starting `step` of an execution, on demand."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def install(cls, dsn: str) -> CommitHold:
        conn = await asyncpg.connect(dsn)
        await conn.execute(_INSTALL)
        return cls(conn)

    async def hold(self, execution_id: int, step: str) -> None:
        """From now on, hold the decision that starts `step` of `execution_id`."""
        await self.conn.execute("INSERT INTO public.drill_hold VALUES ($1, $2)", execution_id, step)

    async def held(self, other_than: int = 0, timeout: float = 60) -> Held:
        """The held decision, once its backend (not `other_than`) sleeps inside the
        commit."""
        async with asyncio.timeout(timeout):
            while (row := await self.conn.fetchrow(_HELD, other_than)) is None:
                await asyncio.sleep(0.05)
        _, eid, version, events = str(row["application_name"]).split()
        return Held(int(row["pid"]), int(eid), int(version), int(events))

    async def terminate(self, held: Held) -> None:
        assert await self.conn.fetchval("SELECT pg_terminate_backend($1)", held.pid)

    async def committed(self, held: Held) -> int:
        """How many events of the held decision's versions are committed."""
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM noetl.event WHERE execution_id = $1 "
                "AND version >= $2 AND version < $2 + $3",
                held.execution_id,
                held.version,
                held.events,
            )
        )

    async def release(self) -> None:
        """Let every held commit go on, and hold no more."""
        await self.conn.execute("DELETE FROM public.drill_hold")

    async def uninstall(self) -> None:
        await self.conn.execute(_UNINSTALL)
        await self.conn.close()
