"""`Store.load_state` (payloads decoded straight into Structs) rebuilds exactly the state
that `replay(load_decisions(...))` does, key order of every map included."""

from __future__ import annotations

from collections import deque

import msgspec

from noetl import dsl
from noetl.engine import Engine, Event, ExecutionState, replay
from noetl.keys import new_execution_id, outcome_id, start_id
from noetl.messages import CommandCompleted, StartExecution
from noetl.store import Store

# Maps whose key order JSONB would change (longer keys first), in args, items, results
# and vars, next to plain ones.
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: replay_order}
workflow:
  - step: start
    loop: {in: "{{ workload.rows }}", iterator: row, mode: async}
    tool: {kind: python, args: {zebra_long: "{{ row }}", a: 1}, code: "result = row"}
    vars: {longest_name_first: "{{ result }}", b: 2}
    next: [end]
  - step: end
    tool: {kind: python, args: {all: "{{ start }}"}, code: "result = all"}
"""


def _run(execution_id: int, rows: list[dict[str, object]]) -> tuple[list[Event], list[Event]]:
    """The decision events of a run, and runner events (no version) to mix in."""
    engine = Engine(dsl.load_text(PLAYBOOK), version=1)
    state = ExecutionState(execution_id=execution_id)
    start = StartExecution(
        execution_id=execution_id,
        dedup_id=start_id(execution_id),
        at=1.0,
        path=engine.path,
        version=1,
        workload={"rows": rows},
    )
    decision = engine.decide(state, start)
    decisions, runner = list(decision.events), []
    queue = deque(decision.commands)
    while queue:
        command = queue.popleft()
        result = {"value_longer_key": command.index, "k": [{"yy_long": 1, "x": 2}]}
        runner.append(
            Event(
                type="command.completed",
                dedup_key=outcome_id(command.command_id),
                step=command.step,
                command_id=command.command_id,
                payload={"result": result},
            )
        )
        done = CommandCompleted(
            execution_id=execution_id,
            dedup_id=outcome_id(command.command_id),
            at=2.0,
            command_id=command.command_id,
            step=command.step,
            result=result,
        )
        decision = engine.decide(state, done)
        decisions.extend(decision.events)
        queue.extend(decision.commands)
    assert state.status == "completed"
    return decisions, runner


async def test_load_state_is_replay_of_load_decisions(pg_dsn: str) -> None:
    store = await Store.connect(pg_dsn, max_size=2)
    try:
        await store.init_schema()
        eid = new_execution_id()
        rows: list[dict[str, object]] = [{"name_long": i, "id": str(i)} for i in range(30)]
        decisions, runner = _run(eid, rows)
        for i in range(0, len(decisions), 7):
            await store.append_decision(eid, None, decisions[i : i + 7], None)
        for event in runner:
            assert await store.append_runner_event(eid, event)
        expected = replay(eid, await store.load_decisions(eid))
        got = await store.load_state(eid)
        assert got.status == "completed" and got.seq == len(decisions)
        assert msgspec.json.encode(got) == msgspec.json.encode(expected)
        assert list(got.steps["end"].result) == ["value_longer_key", "k"]
        assert list(got.steps["start"].result[3]) == ["value_longer_key", "k"]
        assert (await store.load_state(new_execution_id())).status == "new"
    finally:
        await store.close()
