"""The pure engine: each routing rule, joins, failures, duplicates, replay, determinism."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noetl import keys
from noetl.engine import ExecutionState
from noetl.engine.iteration import deep_merge
from noetl.messages import (
    CommandCompleted,
    CommandContext,
    CommandIssued,
    ErrorInfo,
    StartExecution,
    Wake,
)
from tests.support.playbooks import playbook_text
from tests.unit.engine_sim import EXECUTION_ID, Sim, engine_of

FIXTURES = Path(__file__).parent.parent / "fixtures" / "playbooks"


def playbook(body: str, workload: str = "{}") -> str:
    return playbook_text(body, workload=workload)


def echo(command: CommandIssued) -> tuple[str, Any]:
    """Every tool returns its step name and edge args."""
    return "ok", {"step": command.step, "edge": command.edge_args}


def types(sim: Sim) -> list[tuple[str, str | None]]:
    return [(e.type, e.step) for e in sim.events]


def test_hello_world_runs_both_steps_and_binds_vars() -> None:
    engine = engine_of((FIXTURES / "hello_world" / "hello_world.yaml").read_text())

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.step == "start":
            return "ok", {"status": "success", "data": {"greeting": "Hello World!"}}
        return "ok", {"final": command.context.vars["greeting"]}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed"
    assert state.variables == {"greeting": "Hello World!"}
    assert state.result == {"final": "Hello World!"}
    assert sim.steps_started() == ["start", "end"]
    start_cmd = sim.issued[0]
    assert start_cmd.kind == "python"
    assert start_cmd.args == {"message": "{{ workload.message }}"}
    assert start_cmd.context.workload == {"message": "Hello World"}


def test_routing_only_step_and_workbook_and_fan_out_join() -> None:
    engine = engine_of(
        (FIXTURES / "control_flow_workbook" / "control_flow_workbook.yaml").read_text()
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.step == "eval_flag":
            assert command.kind == "python"
            assert command.args["temperature_c"] == "{{ workload.temperature_c }}"
            return "ok", {"is_hot": True}
        return "ok", {"who": command.step}

    for seed in range(6):
        sim = Sim(engine, tool, seed=seed)
        state = sim.run()
        assert state.status == "completed", seed
        started = sim.steps_started()
        assert sorted(started) == ["end", "eval_flag", "hot_a", "hot_b", "start"]
        assert started[-1] == "end" and started.count("end") == 1
        assert "cold" not in state.steps


def test_else_branch_when_no_condition_holds() -> None:
    engine = engine_of(
        (FIXTURES / "control_flow_workbook" / "control_flow_workbook.yaml").read_text()
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return "ok", {"is_hot": False} if command.step == "eval_flag" else {"who": "C"}

    sim = Sim(engine, tool)
    sim.run()
    assert sim.steps_started() == ["start", "eval_flag", "cold", "end"]


def test_failure_routes_with_error_and_edge_args() -> None:
    engine = engine_of((FIXTURES / "error_routing" / "error_routing.yaml").read_text())

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.step == "start":
            return "error", {"type": "python", "message": "ValueError: boom"}
        return "ok", {"recovered": True, "reason": command.edge_args["reason"]}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed"
    assert state.steps["start"].status == "failed"
    assert state.result == {"recovered": True, "reason": "ValueError: boom"}


def test_unhandled_failure_fails_the_execution() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: "x"}
          next: [b]
        - step: b
          tool: {kind: python, code: "x"}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"type": "python", "message": "nope"}))
    state = sim.run()
    assert state.status == "failed"
    assert state.error is not None and state.error["step"] == "start"
    assert "b" not in state.steps
    assert types(sim)[-1] == ("execution.failed", None)


def test_else_does_not_fire_on_failure() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: "x"}
          next:
            - when: "{{ error is defined and error.type == 'other' }}"
              then: [b]
            - else: [b]
        - step: b
          tool: {kind: python, code: "x"}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"type": "python", "message": "nope"}))
    assert sim.run().status == "failed"


def test_unevaluable_when_counts_as_false_on_failure() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: "x"}
          next:
            - when: "{{ result.missing > 1 }}"
              then: [b]
            - when: "{{ error is defined }}"
              then: [c]
        - step: b
          tool: {kind: python, code: "x"}
        - step: c
          tool: {kind: python, code: "x"}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return ("error", {"message": "x"}) if command.step == "start" else ("ok", 1)

    sim = Sim(engine, tool)
    assert sim.run().status == "completed"
    assert sim.steps_started() == ["start", "c"]


def test_render_error_in_when_on_success_fails_the_step() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: "x"}
          next:
            - when: "{{ nothing_here > 1 }}"
              then: [b]
        - step: b
          tool: {kind: python, code: "x"}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", 1))
    state = sim.run()
    assert state.status == "failed"
    assert state.error is not None and state.error["type"] == "render"
    assert "nothing_here" in state.error["message"]


def test_unconditional_edges_fire_with_first_true_when() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: "x"}
          next:
            - step: audit
            - when: "{{ result.total > 100 }}"
              then: [{step: big, args: {total: "{{ result.total }}"}}]
            - when: "{{ result.total > 0 }}"
              then: [small]
            - else: [none]
        - step: audit
          tool: {kind: python, code: "x"}
        - step: big
          tool: {kind: python, code: "x"}
        - step: small
          tool: {kind: python, code: "x"}
        - step: none
          tool: {kind: python, code: "x"}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", {"total": 500} if c.step == "start" else {}))
    sim.run()
    assert sorted(sim.steps_started()) == ["audit", "big", "start"]
    big = next(c for c in sim.issued if c.step == "big")
    assert big.edge_args == {"total": 500}


def test_implicit_route_to_end_and_result_of_end() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          next: [a, b]
        - step: a
          tool: {kind: python, code: "x"}
        - step: b
          tool: {kind: python, code: "x"}
        - step: end
          tool: {kind: python, code: "x"}
    """)
    )
    for seed in range(4):
        sim = Sim(engine, echo, seed=seed)
        state = sim.run()
        assert sim.steps_started().count("end") == 1
        assert state.result == {"step": "end", "edge": {}}


def test_result_is_last_completed_tool_step_without_end_tool() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: "x"}
          next: [end]
        - step: end
    """)
    )
    state = Sim(engine, echo).run()
    assert state.status == "completed"
    assert state.result == {"step": "start", "edge": {}}


def test_join_merges_args_of_every_arriving_edge() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          next: [a, b]
        - step: a
          tool: {kind: python, code: "x"}
          next: [{step: join, args: {from_a: "{{ result.step }}"}}]
        - step: b
          tool: {kind: python, code: "x"}
          next: [{step: join, args: {from_b: "{{ result.step }}"}}]
        - step: join
          tool: {kind: python, code: "x"}
    """)
    )
    sim = Sim(engine, echo, seed=3)
    state = sim.run()
    assert state.result == {"step": "join", "edge": {"from_a": "a", "from_b": "b"}}


def test_duplicate_outcome_is_ignored() -> None:
    engine = engine_of((FIXTURES / "hello_world" / "hello_world.yaml").read_text())
    sim = Sim(engine, echo)
    sim.start()
    command = sim.inbox.pop()
    done = CommandCompleted(
        execution_id=EXECUTION_ID,
        dedup_id="x",
        command_id=command.command_id,
        step="start",
        result={"data": {"greeting": "hi"}},
    )
    assert sim.send(done)
    decision = engine.decide(sim.state, done)
    assert decision.duplicate and not decision.events
    again = engine.decide(
        sim.state, StartExecution(execution_id=EXECUTION_ID, dedup_id="s", path="p")
    )
    assert again.duplicate and not again.events
    assert [c.step for c in engine.pending_commands(sim.state)] == ["end"]


def test_workload_merges_and_renders() -> None:
    engine = engine_of(
        playbook(
            """
        - step: start
          tool: {kind: python, code: "x"}
    """,
            workload="{a: 1, b: '{{ workload.a + 1 }}'}",
        )
    )
    sim = Sim(engine, echo, workload={"a": 5})
    state = sim.run()
    assert state.workload == {"a": 5, "b": 6}


def test_wake_on_a_finished_step_set_completes() -> None:
    engine = engine_of((FIXTURES / "hello_world" / "hello_world.yaml").read_text())
    sim = Sim(engine, echo)
    sim.start()
    decision = engine.decide(sim.state, Wake(execution_id=EXECUTION_ID, dedup_id="w"))
    assert decision.duplicate and not decision.events


def test_command_ids_are_stable() -> None:
    engine = engine_of((FIXTURES / "hello_world" / "hello_world.yaml").read_text())
    first, second = Sim(engine, echo), Sim(engine, echo)
    first.run()
    second.run()
    assert [c.command_id for c in first.issued] == [c.command_id for c in second.issued]
    assert first.issued[0].command_id == f"{EXECUTION_ID}:start:1:1"


# -- properties over random DAGs --------------------------------------------------------


@st.composite
def random_dag(draw: st.DrawFn) -> tuple[str, dict[str, bool]]:
    """A playbook of n steps where each step routes forward to a random subset, some edges
    conditional on a per-step boolean `flag` in the workload; steps may fail."""
    n = draw(st.integers(min_value=2, max_value=9))
    names = ["start", *[f"s{i}" for i in range(1, n)]]
    flags = {name: draw(st.booleans()) for name in names}
    fails = {name: draw(st.booleans()) for name in names}
    lines = []
    for i, name in enumerate(names):
        later = names[i + 1 :]
        targets = draw(st.lists(st.sampled_from(later), unique=True, max_size=3)) if later else []
        lines.append(f"- step: {name}")
        if draw(st.booleans()) or name == "start":
            lines.append("  tool: {kind: python, code: x}")
        if targets:
            lines.append("  next:")
            for t in targets:
                if draw(st.booleans()):
                    lines.append(f"    - step: {t}")
                else:
                    lines.append(f'    - when: "{{{{ workload.flags.{name} }}}}"')
                    lines.append(f"      then: [{t}]")
            if draw(st.booleans()):
                lines.append('    - when: "{{ error is defined }}"')
                lines.append(f"      then: [{later[-1]}]")
    workload = msgspec.json.encode({"flags": flags}).decode()
    text = (
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: r}\n"
        f"workload: {workload}\nworkflow:\n" + textwrap.indent("\n".join(lines), "  ")
    )
    return text, fails


@settings(max_examples=150, deadline=None)
@given(random_dag(), st.integers(min_value=0, max_value=1000))
def test_random_dags_terminate_run_each_step_once_and_replay(
    case: tuple[str, dict[str, bool]], seed: int
) -> None:
    text, fails = case
    engine = engine_of(text)

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if fails[command.step]:
            return "error", {"type": "python", "message": f"{command.step} failed"}
        return "ok", {"step": command.step}

    sim = Sim(engine, tool, seed=seed)
    state = sim.run()
    assert state.status in ("completed", "failed")
    assert not state.pending or state.status == "failed"
    started = sim.steps_started()
    assert len(started) == len(set(started)), started  # at most once per activation (no cycles)
    if state.status == "completed":
        # Every step some edge reached ran, once: joins fired exactly once, none was lost.
        targets = {
            route["step"] for e in sim.events for route in (e.payload or {}).get("routes", ())
        }
        assert targets == set(started), (targets, started)
    versions = [e.version for e in sim.events]
    assert versions == list(range(1, len(versions) + 1))
    assert len({e.dedup_key for e in sim.events}) == len(sim.events)
    assert msgspec.to_builtins(sim.replayed()) == msgspec.to_builtins(state)
    # Deterministic: the same messages in the same order give the same events and commands.
    again = Sim(engine, tool, seed=seed)
    again.run()
    assert msgspec.to_builtins(again.events) == msgspec.to_builtins(sim.events)
    assert [c.command_id for c in again.issued] == [c.command_id for c in sim.issued]


@settings(max_examples=60, deadline=None)
@given(random_dag(), st.integers(min_value=0, max_value=1000), st.data())
def test_deciding_on_a_replayed_state_matches_the_live_one(
    case: tuple[str, dict[str, bool]], seed: int, data: st.DataObject
) -> None:
    """A coordinator that crashed and replayed decides exactly as the one that did not."""
    text, _ = case
    engine = engine_of(text)
    sim = Sim(engine, echo, seed=seed)
    sim.start()
    steps = data.draw(st.integers(min_value=0, max_value=6))
    for _ in range(steps):
        if not sim.inbox:
            break
        command = sim.inbox.pop(0)
        outcome = sim.outcome(command)
        replayed: ExecutionState = sim.replayed()
        live = engine.decide(sim.state, outcome)
        from_replay = engine.decide(replayed, outcome)
        assert msgspec.to_builtins(live.events) == msgspec.to_builtins(from_replay.events)
        assert msgspec.to_builtins(live.commands) == msgspec.to_builtins(from_replay.commands)
        sim.events.extend(live.events)
        sim.inbox.extend(live.commands)


@pytest.mark.parametrize("name", ["hello_world", "control_flow_workbook", "error_routing"])
def test_fixture_playbooks_complete_in_the_engine(name: str) -> None:
    engine = engine_of((FIXTURES / name / f"{name}.yaml").read_text())

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if name == "error_routing" and command.step == "start":
            return "error", {"message": "boom"}
        return "ok", {"is_hot": True, "data": {"greeting": "x"}, "who": "w"}

    assert Sim(engine, tool).run().status == "completed"


def test_key_formats_are_the_stored_ones() -> None:
    """Stored events and messages in flight carry these: a changed format breaks replay and
    dedup, so each is pinned."""
    cid = keys.command_id(7, "fetch", 2, 3, index=4, phase="sink")
    assert cid == "7:fetch:2.4:3:sink"
    assert keys.command_id(7, "fetch", 1, 1) == "7:fetch:1:1"
    assert [
        keys.start_id(7),
        keys.cancel_id(7),
        keys.outcome_id(cid),
        keys.child_ended_id(8),
        keys.timer_id(7, "retry:x"),
        keys.wake_id(7, 12),
        keys.retry_timer(cid),
        keys.step_started_key("a", 2),
        keys.step_completed_key("a", 2),
        keys.step_failed_key("a", 2),
        keys.step_item_key(cid),
        keys.command_issued_key(cid),
        keys.timer_scheduled_key("t"),
        keys.timer_fired_key("t"),
        keys.started_key(cid),
        keys.outcome_key(cid),
    ] == [
        "start:7",
        "cancel:7",
        "7:fetch:2.4:3:sink:outcome",
        "child:8",
        "timer:7:retry:x",
        "wake:7:12",
        "retry:7:fetch:2.4:3:sink",
        "step.started:a:2",
        "step.completed:a:2",
        "step.failed:a:2",
        "step.item:7:fetch:2.4:3:sink",
        "command.issued:7:fetch:2.4:3:sink",
        "timer.scheduled:t",
        "timer.fired:t",
        "started:7:fetch:2.4:3:sink",
        "outcome:7:fetch:2.4:3:sink",
    ]


def test_command_context_is_the_map_it_replaced_on_the_wire() -> None:
    full = {"workload": {"a": 1}, "vars": {}, "steps": {"s": [1]}, "locals": {"n": 2}}
    typed = CommandContext(workload={"a": 1}, vars={}, steps={"s": [1]}, locals={"n": 2})
    assert msgspec.msgpack.encode(typed) == msgspec.msgpack.encode(full)
    bare = CommandContext(workload={}, vars={}, steps={})
    assert msgspec.msgpack.encode(bare) == msgspec.msgpack.encode(
        {"workload": {}, "vars": {}, "steps": {}}
    )
    ref = {"$noetl_ref": "ab" * 32, "size": 12}
    stored = CommandContext.stored(ref)
    assert stored.reference() == ref
    assert msgspec.msgpack.encode(stored) == msgspec.msgpack.encode(ref)
    assert bare.reference() is None


def test_error_info_round_trips_its_flat_record() -> None:
    record = {"type": "http", "message": "503", "step": "a", "status_code": 503}
    info = ErrorInfo.of(record, type="error", kind="http")
    assert (info.type, info.step, info.kind, info.details) == (
        "http",
        "a",
        "http",
        {"status_code": 503},
    )
    assert info.record() == {**record, "kind": "http"}
    assert ErrorInfo.of({}, type="error", message="m").record() == {"type": "error", "message": "m"}


_json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=3)
_json_map = st.recursive(
    st.dictionaries(st.text(max_size=2), _json_leaf, max_size=3),
    lambda inner: st.dictionaries(st.text(max_size=2), inner | _json_leaf, max_size=3),
    max_leaves=8,
)


@given(_json_map, _json_map)
@settings(max_examples=60, deadline=None)
def test_deep_merge_lays_the_update_over_the_base(base: dict, update: dict) -> None:
    """The one deep merge (pagination overrides in the engine, tool blocks in the runner)."""
    before = msgspec.json.encode([base, update])
    merged = deep_merge(base, update)
    assert msgspec.json.encode([base, update]) == before  # neither input is changed
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert merged[key] == deep_merge(base[key], value)
        else:
            assert merged[key] == value
    assert {k: v for k, v in merged.items() if k not in update} == {
        k: v for k, v in base.items() if k not in update
    }
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
