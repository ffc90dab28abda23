"""What an idle execution costs a coordinator that keeps it cached.

Measured in this process with tracemalloc, not from a process's RSS (which moves by whole
arenas and with everything else the process does): `executions` execution actors are set
up exactly as a coordinator host holds them between two messages (the state rebuilt from
stored events, its mailbox, its task waiting for the next message), and the Python memory
they hold is divided by their number. The state is that of the bench chain halfway: ten
steps completed with their results, one command in flight.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import deque
from typing import cast

import msgspec

from actors.coordinator import CoordinatorHost, ExecutionActor
from noetl import dsl
from noetl.bench import playbooks
from noetl.bench.model import Idle
from noetl.bus import Bus
from noetl.config import Settings
from noetl.engine import Engine, Event, ExecutionState, replay
from noetl.keys import outcome_id, start_id
from noetl.messages import CommandCompleted, StartExecution
from noetl.store import Store

_STEPS = 20


def _halfway(engine: Engine, execution_id: int) -> list[Event]:
    """The decision events of the chain until half its steps have completed."""
    state = ExecutionState(execution_id=execution_id)
    start = StartExecution(
        execution_id=execution_id,
        dedup_id=start_id(execution_id),
        at=1.0,
        path=engine.path,
        version=1,
        workload={"source": "bench"},
    )
    decision = engine.decide(state, start)
    events, queue = list(decision.events), deque(decision.commands)
    for _ in range(_STEPS // 2):
        command = queue.popleft()
        done = CommandCompleted(
            execution_id=execution_id,
            dedup_id=outcome_id(command.command_id),
            at=2.0,
            command_id=command.command_id,
            step=command.step,
            result={"step": command.step, "rows": 1},
        )
        decision = engine.decide(state, done)
        events.extend(decision.events)
        queue.extend(decision.commands)
    return events


async def idle_execution(home_text: str, executions: int) -> Idle:
    """Bytes of Python memory held per idle cached execution (`home_text`: the chain
    playbook's text)."""
    engine = Engine(dsl.load_text(home_text), version=1)
    stored = msgspec.json.encode(_halfway(engine, 1))
    # Idle actors touch neither the bus nor the store: they wait on their mailbox.
    host = CoordinatorHost(cast(Bus, None), cast(Store, None), Settings(idle_evict=3600.0))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for eid in range(1, executions + 1):
            actor = host.actors[eid] = ExecutionActor(host, eid)
            actor.state = replay(eid, msgspec.json.decode(stored, type=list[Event]))
            actor.engine = engine
            actor.task = asyncio.create_task(actor.run())
        await asyncio.sleep(0.1)  # every actor waits for its next message
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for actor in host.actors.values():
            await actor.close()
    return Idle(kib_per_execution=round(held / executions / 1024, 2), executions=executions)


async def idle(executions: int) -> Idle:
    """The measure on the bench chain's playbook."""
    return await idle_execution(playbooks.chain_text(_STEPS), executions)
