"""Deciding a run of queued messages in one call (one thread hop): the same decisions as
deciding them one by one, and no decision reads a stored value that was not looked up."""

from __future__ import annotations

import copy

import msgspec

from actors.batch import decide_run, value_refs
from noetl.blobs import REF_KEY
from noetl.engine import Decision, ExecutionState
from noetl.messages import CommandCompleted, CommandIssued, ExecMessage, StartExecution
from tests.unit.engine_sim import EXECUTION_ID, engine_of, playbook

LOOP = playbook(
    """
    - step: start
      loop: {in: "{{ range(4) | list }}", iterator: n, mode: async}
      tool: {kind: python, args: {n: "{{ n }}"}, code: "result = n"}
      next: [total]
    - step: total
      tool: {kind: python, args: {values: "{{ start }}"}, code: "result = sum(values)"}
    """
)


def ref(digest: str) -> dict[str, object]:
    return {REF_KEY: digest, "size": 10}


def done(command: CommandIssued, result: object) -> CommandCompleted:
    return CommandCompleted(
        execution_id=EXECUTION_ID,
        dedup_id=command.command_id,
        command_id=command.command_id,
        step=command.step,
        result=result,
        at=2000.0,
    )


def started() -> tuple[ExecutionState, list[CommandIssued]]:
    """A loop of four items, all issued (concurrency 16)."""
    state = ExecutionState(execution_id=EXECUTION_ID)
    first = StartExecution(execution_id=EXECUTION_ID, dedup_id="s", path="p", at=1000.0)
    decision = engine_of(LOOP).decide(state, first)
    assert len(decision.commands) == 4
    return state, decision.commands


def as_data(decisions: list[Decision]) -> object:
    return msgspec.to_builtins(decisions)


def test_a_run_decides_what_its_messages_one_by_one_would() -> None:
    engine = engine_of(LOOP)
    state, commands = started()
    messages: list[ExecMessage] = [done(c, i) for i, c in enumerate(commands)]
    alone = copy.deepcopy(state)
    one_by_one = [engine.decide(alone, m, {}) for m in messages]
    together = decide_run(engine, state, messages, {}, set())
    assert as_data(together) == as_data(one_by_one)
    assert msgspec.to_builtins(state) == msgspec.to_builtins(alone)
    # The last item ended the loop: the run issued the next step's command.
    assert [c.step for c in together[-1].commands] == ["total"]


def test_a_run_stops_before_a_message_reading_a_value_not_looked_up() -> None:
    engine = engine_of(LOOP)
    state, commands = started()
    messages: list[ExecMessage] = [
        done(commands[0], ref("a")),
        done(commands[1], 1),
        done(commands[2], ref("b")),
        done(commands[3], 3),
    ]
    assert value_refs(state, messages) == {"a", "b"}
    # Looked up for the first message only (the bound is 1 digest): "b" was not asked.
    asked = value_refs(state, messages, most=1)
    assert asked == {"a"}
    decided = decide_run(engine, state, messages, {"a": 0}, asked)
    assert len(decided) == 2
    rest = decide_run(engine, state, messages[2:], {"b": 2}, value_refs(state, messages[2:]))
    assert len(rest) == 2
    assert [c.step for c in rest[-1].commands] == ["total"]


def test_the_first_message_of_a_run_is_always_decided() -> None:
    engine = engine_of(LOOP)
    state, commands = started()
    decided = decide_run(engine, state, [done(commands[0], ref("c"))], {}, set())
    assert len(decided) == 1 and decided[0].events


def test_value_refs_count_the_state_and_stay_within_the_bound() -> None:
    engine = engine_of(LOOP)
    state, commands = started()
    items: list[ExecMessage] = [done(c, ref(f"r{i}")) for i, c in enumerate(commands)]
    digests = {f"r{i}" for i in range(4)}
    decide_run(engine, state, items, {d: 0 for d in digests}, digests)
    # The loop's step completed with its items' results, which are stored values.
    assert state.steps["start"].status == "completed"
    assert value_refs(state, []) == digests
    later: list[ExecMessage] = [done(commands[0], ref("x")), done(commands[1], ref("y"))]
    assert value_refs(state, later) == digests | {"x", "y"}
    # The state's and the first message's always count; the next ones within the bound.
    assert value_refs(state, later, most=5) == digests | {"x"}
    assert value_refs(state, later, most=0) == digests | {"x"}
    assert value_refs(state, later, most=6) == digests | {"x", "y"}
