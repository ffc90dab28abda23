"""`db check`: the runtime's invariants, each one SQL query over the event table.

Every query reads `noetl.event` only (the execution projection is never trusted) and returns
one row per violation. `$1` is an execution id, or NULL for every execution. A clean event
table returns no rows from any query; each row becomes a typed `Violation`.

What the queries rely on, from the engine:
- coordinator decisions carry consecutive versions 1, 2, 3... per execution; runner events
  (`command.started`, `command.completed`, `command.failed`) carry none;
- a step activation begins with `step.started` and ends with one `step.completed` or
  `step.failed`, whose payload's `routes` are the edges it fired (`execution.started` fires
  the route to `start`);
- an execution ends with one `execution.completed|failed|cancelled` decision, after which the
  coordinator decides nothing more (runners may still record the outcome of a command they
  were stopping: that is expected, not a violation);
- a command's outcome is one runner event, or for a `playbook` command (payload `child`)
  the end of the child execution; the decision consuming it names the command too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

import asyncpg
import msgspec

from noetl import keys

Invariant = Literal[
    "step_ended_twice",
    "command_two_outcomes",
    "command_without_outcome",
    "event_after_end",
    "version_gap",
    "version_duplicate",
    "join_fired_twice",
    "stuck",
]

INVARIANTS: Final[tuple[Invariant, ...]] = (
    "step_ended_twice",
    "command_two_outcomes",
    "command_without_outcome",
    "event_after_end",
    "version_gap",
    "version_duplicate",
    "join_fired_twice",
    "stuck",
)


class Violation(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One broken invariant in one execution, with the events that show it."""

    invariant: Invariant
    execution_id: int
    message: str
    step: str | None = None
    command_id: str | None = None
    event_ids: list[int] = []


class CheckReport(msgspec.Struct, kw_only=True):
    """What `db check` found: `violations` is empty when the event table is clean."""

    executions: int
    violations: list[Violation]

    @property
    def clean(self) -> bool:
        """True when no invariant is broken."""
        return not self.violations


_ENDS: Final = "('execution.completed', 'execution.failed', 'execution.cancelled')"
# A runner's outcome, or a decision that consumed one (a `playbook` command whose child
# could not even be started is failed by the coordinator itself).
_OUTCOMES: Final = (
    "('command.completed', 'command.failed', 'step.item', 'step.completed', 'step.failed')"
)


def _scope(alias: str = "") -> str:
    """The execution filter: `$1` is an id, or NULL for every execution."""
    column = f"{alias}.execution_id" if alias else "execution_id"
    return f"($1::bigint IS NULL OR {column} = $1)"


# Two ends for one activation of a step: the activation of an end event is the number of
# `step.started` of that step folded before it (decision order).
_STEP_ENDED_TWICE = f"""
WITH s AS (
  SELECT execution_id, step, event_id, event_type, version,
         count(*) FILTER (WHERE event_type = 'step.started')
           OVER (PARTITION BY execution_id, step ORDER BY version) AS activation
  FROM noetl.event
  WHERE version IS NOT NULL
    AND event_type IN ('step.started', 'step.completed', 'step.failed') AND {_scope()}
)
SELECT execution_id, step, activation,
       array_agg(event_id ORDER BY version) AS event_ids,
       array_agg(event_type ORDER BY version) AS kinds
FROM s WHERE event_type <> 'step.started'
GROUP BY execution_id, step, activation
HAVING count(*) > 1
"""

# More than one recorded outcome (runner), or an outcome consumed by more than one decision.
_COMMAND_TWO_OUTCOMES = f"""
SELECT execution_id, command_id, min(step) AS step,
       count(*) FILTER (WHERE version IS NULL) AS recorded,
       count(*) FILTER (WHERE version IS NOT NULL) AS consumed,
       array_agg(event_id ORDER BY event_id) AS event_ids,
       array_agg(event_type ORDER BY event_id) AS kinds
FROM noetl.event
WHERE command_id IS NOT NULL
  AND event_type IN ('command.completed', 'command.failed', 'step.item', 'step.completed',
                     'step.failed')
  AND {_scope()}
GROUP BY execution_id, command_id
HAVING count(*) FILTER (WHERE version IS NULL) > 1
    OR count(*) FILTER (WHERE version IS NOT NULL) > 1
"""

# `$2`: seconds an ended execution is given for the runners to record what they were stopping.
_COMMAND_WITHOUT_OUTCOME = f"""
WITH ended AS (
  SELECT execution_id, min(event_type) AS end_type, min(created_at) AS ended_at
  FROM noetl.event WHERE event_type IN {_ENDS} AND {_scope()}
  GROUP BY execution_id
)
SELECT c.execution_id, c.command_id, c.step, c.event_id, d.end_type
FROM noetl.event c
JOIN ended d ON d.execution_id = c.execution_id
WHERE c.event_type = 'command.issued' AND {_scope("c")}
  AND d.ended_at < clock_timestamp() - make_interval(secs => $2::float8)
  AND NOT EXISTS (SELECT 1 FROM noetl.event o
                  WHERE o.execution_id = c.execution_id AND o.command_id = c.command_id
                    AND o.event_type IN {_OUTCOMES})
  AND NOT (c.payload ? 'child'
           AND EXISTS (SELECT 1 FROM noetl.event x
                       WHERE x.execution_id = (c.payload->>'child')::bigint
                         AND x.event_type IN {_ENDS}))
"""

_EVENT_AFTER_END = f"""
WITH ends AS (
  SELECT execution_id, min(version) AS version
  FROM noetl.event
  WHERE event_type IN {_ENDS} AND version IS NOT NULL AND {_scope()}
  GROUP BY execution_id
)
SELECT e.execution_id, e.event_id, e.event_type, e.step, e.version, n.version AS end_version
FROM noetl.event e JOIN ends n ON n.execution_id = e.execution_id
WHERE e.version > n.version AND {_scope("e")}
"""

# Versions must run 1, 2, 3... without a hole or a repeat.
_VERSIONS = f"""
SELECT execution_id, version, previous, event_id FROM (
  SELECT execution_id, version, event_id,
         lag(version) OVER (PARTITION BY execution_id ORDER BY version, event_id) AS previous
  FROM noetl.event WHERE version IS NOT NULL AND {_scope()}
) v
WHERE (previous IS NULL AND version <> 1) OR (previous IS NOT NULL AND version <> previous + 1)
"""

# A join (a step that edges from two or more steps reached) started while one of those
# steps was still running, so that step's edge arrives after the join fired: it fires again.
# Legitimate only for a step with one predecessor, which is not a join.
_JOIN_FIRED_TWICE = f"""
WITH ev AS (
  SELECT execution_id, step, event_id, event_type, version, payload,
         max(version) FILTER (WHERE event_type = 'step.started')
           OVER (PARTITION BY execution_id, step ORDER BY version) AS started
  FROM noetl.event
  WHERE version IS NOT NULL
    AND event_type IN ('step.started', 'step.completed', 'step.failed') AND {_scope()}
),
arrival AS (
  SELECT ev.execution_id, ev.step AS source, ev.started, ev.version AS arrived,
         ev.event_id, r.value->>'step' AS target
  FROM ev CROSS JOIN LATERAL jsonb_array_elements(
         CASE WHEN jsonb_typeof(ev.payload->'routes') = 'array'
              THEN ev.payload->'routes' ELSE '[]'::jsonb END) AS r(value)
  WHERE ev.event_type <> 'step.started' AND ev.started IS NOT NULL
),
joins AS (
  SELECT execution_id, target FROM arrival
  GROUP BY execution_id, target HAVING count(DISTINCT source) > 1
)
SELECT a.execution_id, a.target AS step, a.source,
       ARRAY[s.event_id, a.event_id] AS event_ids
FROM arrival a
JOIN joins j ON j.execution_id = a.execution_id AND j.target = a.target
JOIN ev s ON s.execution_id = a.execution_id AND s.step = a.target
         AND s.event_type = 'step.started' AND s.version > a.started AND s.version < a.arrived
"""

# `$2`: seconds of silence allowed to an execution without a timeout of its own.
_STUCK = f"""
WITH live AS (
  SELECT s.execution_id, s.created_at AS started_at
  FROM noetl.event s
  WHERE s.event_type = 'execution.started' AND {_scope("s")}
    AND NOT EXISTS (SELECT 1 FROM noetl.event e
                    WHERE e.execution_id = s.execution_id AND e.event_type IN {_ENDS})
),
last AS (
  SELECT DISTINCT ON (e.execution_id) e.execution_id, e.event_id, e.event_type, e.step,
         e.created_at
  FROM noetl.event e JOIN live l ON l.execution_id = e.execution_id
  ORDER BY e.execution_id, e.event_id DESC
),
allowed AS (
  SELECT l.execution_id,
         coalesce((SELECT (t.payload->>'due_at')::float8 - extract(epoch FROM l.started_at)
                   FROM noetl.event t
                   WHERE t.execution_id = l.execution_id
                     AND t.dedup_key = '{keys.timer_scheduled_key(keys.EXECUTION_TIMEOUT)}'),
                  $2::float8) AS seconds
  FROM live l
)
SELECT t.execution_id, t.event_id, t.event_type, t.step, t.created_at, a.seconds,
       extract(epoch FROM clock_timestamp() - t.created_at)::float8 AS silent
FROM last t JOIN allowed a ON a.execution_id = t.execution_id
WHERE t.created_at < clock_timestamp() - make_interval(secs => greatest(a.seconds, 0))
"""

Connection = asyncpg.Connection | asyncpg.Pool


async def check_events(
    conn: Connection,
    execution_id: int | None = None,
    *,
    settle: float = 60.0,
    stuck_after: float = 3600.0,
) -> CheckReport:
    """Run every invariant's query (on one execution, or all) and collect the violations.

    `settle`: seconds after its end before an execution's commands must all have an outcome.
    `stuck_after`: silence allowed to a running execution that has no timeout of its own.
    """
    checks: tuple[tuple[str, Callable[[asyncpg.Record], Violation], tuple[float, ...]], ...] = (
        (_STEP_ENDED_TWICE, _step_ended_twice, ()),
        (_COMMAND_TWO_OUTCOMES, _two_outcomes, ()),
        (_COMMAND_WITHOUT_OUTCOME, _without_outcome, (settle,)),
        (_EVENT_AFTER_END, _after_end, ()),
        (_VERSIONS, _versions, ()),
        (_JOIN_FIRED_TWICE, _joins, ()),
        (_STUCK, _stuck, (stuck_after,)),
    )
    violations: list[Violation] = []
    for query, violation, args in checks:
        violations += [violation(r) for r in await conn.fetch(query, execution_id, *args)]
    if execution_id is None:
        executions = int(
            await conn.fetchval(
                "SELECT count(*) FROM noetl.event WHERE event_type = 'execution.started'"
            )
        )
    else:
        executions = 1
    violations.sort(key=lambda v: (v.execution_id, INVARIANTS.index(v.invariant)))
    return CheckReport(executions=executions, violations=violations)


def _violation(invariant: Invariant, r: asyncpg.Record, message: str) -> Violation:
    """A violation from one query row: its `execution_id`, and its `step`, `command_id` and
    `event_ids` (an array) or `event_id` where the query selects them."""
    ids = r.get("event_ids")
    return Violation(
        invariant=invariant,
        execution_id=r["execution_id"],
        step=r.get("step"),
        command_id=r.get("command_id"),
        event_ids=[int(i) for i in ids] if ids is not None else [int(r["event_id"])],
        message=message,
    )


def _step_ended_twice(r: asyncpg.Record) -> Violation:
    return _violation(
        "step_ended_twice",
        r,
        f"step `{r['step']}` (activation {r['activation']} in this execution) "
        f"ended {len(r['kinds'])} times: {', '.join(r['kinds'])}",
    )


def _two_outcomes(r: asyncpg.Record) -> Violation:
    what = []
    if r["recorded"] > 1:
        what.append(f"{r['recorded']} outcomes recorded")
    if r["consumed"] > 1:
        what.append(f"its outcome consumed by {r['consumed']} decisions")
    return _violation(
        "command_two_outcomes",
        r,
        f"command {r['command_id']}: {' and '.join(what)} ({', '.join(r['kinds'])})",
    )


def _without_outcome(r: asyncpg.Record) -> Violation:
    return _violation(
        "command_without_outcome",
        r,
        f"command {r['command_id']} was issued and has no outcome, and the "
        f"execution has ended ({r['end_type']})",
    )


def _after_end(r: asyncpg.Record) -> Violation:
    return _violation(
        "event_after_end",
        r,
        f"{r['event_type']} at version {r['version']} follows the execution's "
        f"end at version {r['end_version']}",
    )


def _versions(r: asyncpg.Record) -> Violation:
    version, previous = r["version"], r["previous"]
    if previous is not None and version == previous:
        return _violation("version_duplicate", r, f"version {version} is written twice")
    low = 1 if previous is None else previous + 1
    missing = f"{low}" if low == version - 1 else f"{low} to {version - 1}"
    return _violation("version_gap", r, f"version {missing} missing before version {version}")


def _joins(r: asyncpg.Record) -> Violation:
    return _violation(
        "join_fired_twice",
        r,
        f"join `{r['step']}` started while `{r['source']}`, one of its "
        f"predecessors, was still running; that step's edge arrived after it",
    )


def _stuck(r: asyncpg.Record) -> Violation:
    return _violation(
        "stuck",
        r,
        f"running with no event for {r['silent']:.0f} s (allowed "
        f"{r['seconds']:.0f} s); last event: {r['event_type']}"
        + (f" of step `{r['step']}`" if r["step"] else "")
        + f" at {r['created_at'].isoformat()}",
    )
