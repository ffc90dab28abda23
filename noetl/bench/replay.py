"""Replay: what rebuilding one execution's state costs a coordinator (load + fold).

The execution is made by the real engine, offline: a loop whose items each add a
`command.issued` and a `step.item` decision, committed through the store like a
coordinator's, so the events are exactly what a run of that size leaves behind.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

from noetl import dsl
from noetl.bench.env import BenchEnv
from noetl.bench.model import Replay
from noetl.engine import Engine, Event, ExecutionState
from noetl.errors import NoetlError
from noetl.keys import new_execution_id, outcome_id, start_id
from noetl.messages import CommandCompleted, StartExecution

_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bench_replay}
workflow:
  - step: start
    loop: {in: "{{ range(workload.items) | list }}", iterator: n, mode: async}
    tool: {kind: python, args: {n: "{{ n }}"}, code: "result = n"}
"""

_RUNS = 3
_CHUNK = 10_000


def _events(execution_id: int, items: int) -> list[Event]:
    """Every decision event of a run of the loop, items completing in issue order."""
    engine = Engine(dsl.load_text(_PLAYBOOK), version=1)
    state = ExecutionState(execution_id=execution_id)
    clock = 1000.0
    start = StartExecution(
        execution_id=execution_id,
        dedup_id=start_id(execution_id),
        at=clock,
        path=engine.path,
        version=1,
        workload={"items": items},
    )
    decision = engine.decide(state, start)
    events = list(decision.events)
    queue = deque(decision.commands)
    while queue:
        command = queue.popleft()
        clock += 0.001
        done = CommandCompleted(
            execution_id=execution_id,
            dedup_id=outcome_id(command.command_id),
            at=clock,
            command_id=command.command_id,
            step=command.step,
            result=command.index,
        )
        decision = engine.decide(state, done)
        events.extend(decision.events)
        queue.extend(decision.commands)
    if state.status != "completed":
        raise NoetlError(f"bench replay execution ended {state.status}")
    return events


async def replay_seconds(env: BenchEnv, events: int) -> Replay:
    """Median seconds of `store.load_state` (what a coordinator does to rebuild an
    execution it has not cached) over an execution of about `events` decision events (2
    per loop item, 4 more)."""
    eid = new_execution_id()
    made = _events(eid, max(1, (events - 4) // 2))
    store = env.client.store
    for i in range(0, len(made), _CHUNK):
        await store.append_decision(eid, None, made[i : i + _CHUNK], None)
    times = []
    for _ in range(_RUNS):
        began = time.perf_counter()
        state = await store.load_state(eid)
        times.append(time.perf_counter() - began)
        if state.status != "completed":
            raise NoetlError(f"bench replay rebuilt a {state.status} execution")
    return Replay(seconds=statistics.median(times), events=len(made))
