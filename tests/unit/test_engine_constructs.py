"""The pure engine for loops, pagination, retries, timeouts, sub-playbooks, sinks, cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from noetl.messages import CancelExecution, CommandCompleted, CommandIssued, StartExecution
from tests.unit.engine_sim import (
    EXECUTION_ID,
    PAGED,
    Sim,
    assert_replays,
    engine_of,
    pages,
    playbook,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "playbooks"


def square(command: CommandIssued) -> tuple[str, Any]:
    locals_ = command.context.locals or {}
    if "n" in locals_:
        return "ok", {
            "n": locals_["n"],
            "square": locals_["n"] ** 2,
            "index": locals_["loop"]["index"],
        }
    return "ok", {"step": command.step}


# -- loops ------------------------------------------------------------------------------


def test_loop_async_fixture_keeps_input_order_and_bounds_concurrency() -> None:
    engine = engine_of((FIXTURES / "loop_async" / "loop_async.yaml").read_text())
    for seed in range(5):
        sim = Sim(engine, square, seed=seed)
        state = sim.run()
        assert state.status == "completed"
        results = state.steps["start"].result
        assert [r["n"] for r in results] == list(range(1, 11))
        assert state.variables["total"] == 385
        assert sim.max_in_flight <= 4
        assert_replays(sim)


def test_sequential_loop_runs_one_item_at_a_time_in_order() -> None:
    engine = engine_of(
        playbook(
            """
        - step: start
          loop: {in: "{{ workload.xs }}", iterator: n}
          tool: {kind: python, code: x}
    """,
            workload="{xs: [3, 1, 2]}",
        )
    )
    sim = Sim(engine, square, seed=7)
    state = sim.run()
    assert sim.max_in_flight == 1
    assert [c.context.locals["n"] for c in sim.issued] == [3, 1, 2]
    assert [r["square"] for r in state.result] == [9, 1, 4]


def test_loop_context_exposes_index_first_last_length() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [a, b, c], iterator: letter, mode: async}
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", c.context.locals["loop"]))
    state = sim.run()
    assert state.result == [
        {"index": 0, "first": True, "last": False, "length": 3},
        {"index": 1, "first": False, "last": False, "length": 3},
        {"index": 2, "first": False, "last": True, "length": 3},
    ]


def test_empty_loop_completes_with_an_empty_list_and_routes_on() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: "{{ [] }}", iterator: n}
          tool: {kind: python, code: x}
          vars: {count: "{{ result | length }}"}
          next: [after]
        - step: after
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, square)
    state = sim.run()
    assert state.status == "completed"
    assert state.steps["start"].result == []
    assert state.variables == {"count": 0}
    assert sim.steps_started() == ["start", "after"]


def test_loop_over_a_non_list_fails_the_step_naming_field_and_value() -> None:
    engine = engine_of(
        playbook(
            """
        - step: start
          loop: {in: "{{ workload.x }}", iterator: n}
          tool: {kind: python, code: x}
    """,
            workload="{x: 5}",
        )
    )
    state = Sim(engine, square).run()
    assert state.status == "failed"
    assert state.error is not None
    message = state.error["message"]
    assert "start" in message and "loop.in" in message and "int 5" in message


def test_failed_item_fails_the_step_after_running_ones_finish() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: "{{ range(10) | list }}", iterator: n, mode: async, max_concurrency: 3}
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        n = command.context.locals["n"]
        return ("error", {"message": f"bad {n}"}) if n == 1 else ("ok", n)

    sim = Sim(engine, tool)  # deterministic order: item 0, 1 (fails), then the in-flight 2
    state = sim.run()
    assert state.status == "failed"
    assert state.error is not None and state.error["type"] == "loop"
    assert "1 of 10 items failed" in state.error["message"]
    issued = [c.context.locals["n"] for c in sim.issued]
    assert issued == [0, 1, 2, 3]  # 3 was issued when 0 finished; nothing after the failure
    assert_replays(sim)


def test_continue_on_error_keeps_failed_items_as_errors() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n, mode: async, continue_on_error: true}
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        n = command.context.locals["n"]
        return ("error", {"message": "two"}) if n == 2 else ("ok", n)

    state = Sim(engine, tool, seed=1).run()
    assert state.status == "completed"
    assert state.result[0] == 1 and state.result[2] == 3
    assert state.result[1]["error"]["message"] == "two"


def test_iterator_tool_is_the_same_as_a_loop() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool:
            kind: iterator
            collection: "{{ [1, 2, 3] }}"
            element: n
            mode: async
            task: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, square, seed=3)
    state = sim.run()
    assert [r["square"] for r in state.result] == [1, 4, 9]
    assert all(c.kind == "python" for c in sim.issued)


def test_ten_thousand_items_stay_bounded_and_linear() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: "{{ range(10000) | list }}", iterator: n, mode: async}
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", 1))
    state = sim.run()
    assert state.status == "completed"
    assert len(state.result) == 10000
    assert sim.max_in_flight <= 16
    # One item event and one command event per item, plus a constant.
    assert len(sim.events) <= 2 * 10000 + 10
    # No decision grows with the items done: each writes a handful of events.
    assert max(len(d.events) for d in sim.decisions[1:]) <= 5


def test_loop_sink_runs_once_after_all_items() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2], iterator: n}
          tool: {kind: python, code: x}
          sink: {tool: {kind: event_log}}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", {"rows": 2}) if c.kind == "sink" else ("ok", 7))
    state = sim.run()
    assert state.status == "completed"
    sinks = [c for c in sim.issued if c.kind == "sink"]
    assert len(sinks) == 1
    assert sinks[0].context.locals["result"] == [7, 7]
    assert all(c.sink is None for c in sim.issued)


def test_step_sink_travels_with_the_command() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          sink: {tool: {kind: event_log}, args: {a: "{{ result }}"}}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", 1))
    sim.run()
    assert sim.issued[0].sink == {"tool": {"kind": "event_log"}, "args": {"a": "{{ result }}"}}


# -- pagination -------------------------------------------------------------------------


def test_pagination_merges_pages_until_continue_while_is_false() -> None:
    engine = engine_of(playbook(PAGED.replace("MAX", "50")))
    sim = Sim(engine, pages(4))
    state = sim.run()
    assert state.status == "completed"
    assert state.result == [10, 11, 20, 21, 30, 31, 40, 41]
    assert [c.index for c in sim.issued] == [0, 1, 2, 3]
    assert sim.issued[3].overrides == {"params": {"page": 4}}
    assert_replays(sim)


def test_pagination_stops_at_max_iterations_and_says_so() -> None:
    engine = engine_of(playbook(PAGED.replace("MAX", "2")))
    sim = Sim(engine, pages(10))
    state = sim.run()
    assert state.status == "completed"
    assert len(sim.issued) == 2
    capped = [e for e in sim.events if e.type == "step.item" and (e.payload or {}).get("capped")]
    assert len(capped) == 1
    completed = next(e for e in sim.events if e.type == "step.completed")
    assert completed.payload is not None and completed.payload["pages"] == 2


def test_missing_merge_path_fails_naming_step_field_and_value() -> None:
    engine = engine_of(playbook(PAGED.replace("MAX", "5").replace("data.data", "data.rows")))
    state = Sim(engine, pages(3)).run()
    assert state.status == "failed"
    assert state.error is not None
    assert "merge_path" in state.error["message"] and "data.rows" in state.error["message"]


def test_continue_while_that_raises_fails_the_step() -> None:
    engine = engine_of(
        playbook(
            PAGED.replace("MAX", "5").replace(
                "response.data.paging.hasMore", "response.data.nope.deeper > 0"
            )
        )
    )
    state = Sim(engine, pages(3)).run()
    assert state.status == "failed"
    assert state.error is not None and "continue_while" in state.error["message"]


# -- retries and timeouts ---------------------------------------------------------------


def test_retry_until_success_with_backoff_timers() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          retry: {max_attempts: 4, delay: 2, backoff: 3}
    """)
    )
    attempts: list[int] = []
    failed_at: list[float] = []

    def flaky(command: CommandIssued) -> tuple[str, Any]:
        attempts.append(command.attempt)
        if command.attempt == 3:
            return ("ok", "fine")
        failed_at.append(sim.clock + 1)  # the clock the failure message is delivered at
        return ("error", {"message": "flaky"})

    sim = Sim(engine, flaky)
    state = sim.run()
    assert state.status == "completed" and state.result == "fine"
    assert attempts == [1, 2, 3]
    scheduled = [e.payload for e in sim.events if e.type == "timer.scheduled"]
    delays = [p["due_at"] - at for p, at in zip(scheduled, failed_at, strict=True) if p]
    assert delays == [2, 6]  # delay, then delay x backoff
    assert [c.command_id.rsplit(":", 1)[1] for c in sim.issued] == ["1", "2", "3"]
    assert_replays(sim)


def test_retry_gives_up_after_max_attempts() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          retry: {max_attempts: 2, delay: 0}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"message": "always"}))
    state = sim.run()
    assert state.status == "failed"
    assert len(sim.issued) == 2


def test_retry_when_false_does_not_retry() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: x}
          retry: {max_attempts: 5, delay: 0, when: "{{ error.status_code in [429, 503] }}"}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"message": "nope", "status_code": 404}))
    assert sim.run().status == "failed"
    assert len(sim.issued) == 1


def test_retry_after_sets_the_delay() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: x}
          retry: {max_attempts: 2, delay: 1}
    """)
    )
    sim = Sim(
        engine,
        lambda c: (
            ("error", {"message": "busy", "retry_after": 30}) if c.attempt == 1 else ("ok", 1)
        ),
    )
    sim.run()
    timer = next(e for e in sim.events if e.type == "timer.scheduled")
    failure_time = 1002  # start at 1001, the failure delivered one tick later
    assert timer.payload is not None and timer.payload["due_at"] == failure_time + 30


def test_duplicate_timer_fires_once() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          retry: {max_attempts: 2, delay: 5}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"message": "x"}) if c.attempt == 1 else ("ok", 1))
    sim.start()
    sim.send(sim.outcome(sim.inbox.pop()))
    name = sim.timers[0].name
    from noetl.messages import Timer

    first = sim.send(Timer(execution_id=EXECUTION_ID, dedup_id=name, name=name))
    second = engine.decide(sim.state, Timer(execution_id=EXECUTION_ID, dedup_id=name, name=name))
    assert first and not second.events and second.duplicate
    assert len(sim.inbox) == 1


def test_execution_timeout_fails_and_stops_running_work() -> None:
    engine = engine_of(
        playbook(
            """
        - step: start
          tool: {kind: python, code: x}
    """,
            metadata="{name: t, timeout: 30}",
        )
    )
    sim = Sim(engine, square)
    sim.start()
    assert [t.name for t in sim.timers] == ["execution.timeout"]
    assert sim.timers[0].due_at == sim.clock + 30
    sim.inbox.clear()  # the command hangs
    sim.step_once()  # nothing else to do: the timer fires
    assert sim.state.status == "failed"
    assert sim.state.error is not None and sim.state.error["type"] == "timeout"
    assert sim.decisions[-1].stop_running


# -- sub-playbooks ----------------------------------------------------------------------


def test_composition_parent_starts_one_child_per_user() -> None:
    engine = engine_of((FIXTURES / "composition_parent" / "composition_parent.yaml").read_text())

    def child(start: StartExecution) -> tuple[str, Any]:
        user = start.workload["user"]
        return "completed", {"name": user["name"], "score": user["age"] * 2}

    sim = Sim(engine, square, child=child, seed=2)
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.result == {"step": "end"}
    assert state.steps["start"].result == [
        {"name": "ada", "score": 72},
        {"name": "bob", "score": 50},
    ]
    starts = [e for e in sim.events if e.type == "command.issued" and e.step == "start"]
    assert len(starts) == 2
    assert_replays(sim)


def test_child_start_message_is_deterministic_and_linked() -> None:
    engine = engine_of(
        playbook(
            """
        - step: start
          tool: {kind: playbook, path: lib/x, version: 3, return_step: score,
                 args: {n: "{{ workload.n }}"}}
    """,
            workload="{n: 4}",
        )
    )
    sim = Sim(engine, square, child=lambda s: ("completed", 1))
    sim.start()
    (start,) = sim.children
    assert start.path == "lib/x" and start.version == 3 and start.return_step == "score"
    assert start.workload == {"n": 4}
    assert start.parent_execution_id == EXECUTION_ID
    assert start.parent_command_id == f"{EXECUTION_ID}:start:1:1"
    again = Sim(engine, square, child=lambda s: ("completed", 1))
    again.start()
    assert again.children[0].execution_id == start.execution_id


def test_child_failure_fails_the_step_with_the_child_error_and_id() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: playbook, path: lib/x}
    """)
    )
    sim = Sim(engine, square, child=lambda s: ("failed", {"message": "kaput"}))
    state = sim.run()
    assert state.status == "failed"
    assert state.error is not None
    assert state.error["type"] == "child" and "kaput" in state.error["message"]
    assert state.error["child_execution_id"]


def test_return_step_the_child_lacks_fails_the_child_at_once() -> None:
    child_engine = engine_of(
        (FIXTURES / "composition_child" / "composition_child.yaml").read_text()
    )
    sim = Sim(child_engine, square)
    sim.send(
        StartExecution(
            execution_id=EXECUTION_ID,
            dedup_id="s",
            path="x",
            parent_execution_id=1,
            parent_command_id="1:start:1:1",
            return_step="nope",
        )
    )
    assert sim.state.status == "failed"
    assert sim.state.error is not None and "return_step `nope`" in sim.state.error["message"]
    notice = sim.decisions[-1].parent_notice
    assert notice is not None and notice.status == "failed" and notice.execution_id == 1


def test_child_reports_its_return_step_result() -> None:
    child_engine = engine_of((FIXTURES / "hello_world" / "hello_world.yaml").read_text())
    sim = Sim(child_engine, lambda c: ("ok", {"data": {"greeting": "g"}, "step": c.step}))
    sim.send(
        StartExecution(
            execution_id=EXECUTION_ID,
            dedup_id="s",
            path="x",
            parent_execution_id=1,
            parent_command_id="1:a:1:1",
            return_step="start",
        )
    )
    while sim.inbox:
        sim.step_once()
    notice = sim.decisions[-1].parent_notice
    assert notice is not None and notice.status == "completed"
    assert notice.result == {"data": {"greeting": "g"}, "step": "start"}


# -- cancellation -----------------------------------------------------------------------


def test_cancel_ends_the_execution_and_stops_work_and_children() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          next: [a, b]
        - step: a
          tool: {kind: python, code: x}
        - step: b
          tool: {kind: playbook, path: lib/x}
    """)
    )
    sim = Sim(engine, square)
    sim.start()
    assert len(sim.inbox) == 1 and len(sim.children) == 1
    sim.send(CancelExecution(execution_id=EXECUTION_ID, dedup_id="c", reason="stop it"))
    decision = sim.decisions[-1]
    assert sim.state.status == "cancelled"
    assert decision.stop_running
    assert decision.cancel_children == [sim.children[0].execution_id]
    late = sim.send(sim.outcome(sim.inbox.pop()))
    assert late == []


# -- properties -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=0, max_size=25),
    st.integers(1, 6),
    st.booleans(),
    st.integers(0, 1000),
)
def test_random_loops_terminate_and_replay(
    failures: list[bool], concurrency: int, tolerate: bool, seed: int
) -> None:
    items = list(range(len(failures)))
    engine = engine_of(
        playbook(f"""
        - step: start
          loop: {{in: {items}, iterator: n, mode: async, max_concurrency: {concurrency},
                  continue_on_error: {str(tolerate).lower()}}}
          tool: {{kind: python, code: x}}
          retry: {{max_attempts: 2, delay: 1}}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        n = command.context.locals["n"]
        return ("error", {"message": "f"}) if failures[n] else ("ok", n)

    sim = Sim(engine, tool, seed=seed)
    state = sim.run()
    assert state.status in ("completed", "failed")
    assert sim.max_in_flight <= concurrency
    if not any(failures) or tolerate:
        assert state.status == "completed"
        assert len(state.result) == len(items)
    else:
        assert state.status == "failed"
    assert_replays(sim)


# -- restart from a step ----------------------------------------------------------------


def test_restart_reuses_everything_before_the_failed_step() -> None:
    from noetl.engine.restart import default_restart_step, restart_snapshot

    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          vars: {seen: "{{ result.step }}"}
          next: [{step: b, args: {from_start: "{{ result.step }}"}}]
        - step: b
          tool: {kind: python, code: x}
          next: [end]
        - step: end
          tool: {kind: python, code: x}
    """)
    )
    broken = Sim(
        engine, lambda c: ("error", {"message": "b broke"}) if c.step == "b" else square(c)
    )
    assert broken.run().status == "failed"
    assert default_restart_step(broken.events) == "b"
    snapshot = restart_snapshot(EXECUTION_ID, broken.events, "b")
    fixed = Sim(engine, square)
    fixed.send(
        StartExecution(
            execution_id=EXECUTION_ID + 1,
            dedup_id="r",
            path="p",
            restarted_from=EXECUTION_ID,
            restore=snapshot,
        )
    )
    while fixed.state.running and fixed.step_once():
        pass
    assert fixed.state.status == "completed"
    assert fixed.steps_started() == ["b", "end"]
    assert fixed.issued[0].edge_args == {"from_start": "start"}
    assert fixed.state.variables == {"seen": "start"}
    assert fixed.state.restarted_from == EXECUTION_ID
    assert_replays(fixed)


def test_restart_from_a_step_that_never_ran_is_refused() -> None:
    import pytest

    from noetl.engine.restart import restart_snapshot
    from noetl.errors import NoetlError

    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          next: [b]
        - step: b
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"message": "x"}))
    sim.run()
    with pytest.raises(NoetlError, match="step `b` did not run"):
        restart_snapshot(EXECUTION_ID, sim.events, "b")


# -- case -------------------------------------------------------------------------------


CASE = """
    - step: start
      tool: {kind: python, code: x}
      case:
        - when: "{{ event.name == 'call.done' and response.is_hot }}"
          then:
            set: [{name: temp, value: "{{ response.temp }}"}]
            next: [{step: hot, args: {t: "{{ response.temp }}"}}]
        - when: "{{ event.name == 'call.error' }}"
          then:
            next: [recover]
        - when: "{{ event.name == 'step.exit' and result.temp < 0 }}"
          then:
            set: {frozen: true}
            next: [frozen]
      next: [mild]
    - step: hot
      tool: {kind: python, code: x}
    - step: recover
      tool: {kind: python, code: x}
    - step: frozen
      tool: {kind: python, code: x}
    - step: mild
      tool: {kind: python, code: x}
"""


def weather(result: dict[str, Any] | None) -> Any:
    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.step != "start":
            return "ok", {"step": command.step, "edge": command.edge_args}
        return ("ok", result) if result is not None else ("error", {"message": "down"})

    return tool


def test_case_call_done_rule_sets_and_routes() -> None:
    sim = Sim(engine_of(playbook(CASE)), weather({"is_hot": True, "temp": 31}))
    state = sim.run()
    assert state.status == "completed"
    assert sim.steps_started() == ["start", "hot"]
    assert state.variables == {"temp": 31}
    assert state.result == {"step": "hot", "edge": {"t": 31}}


def test_case_step_exit_rule_after_no_call_rule() -> None:
    sim = Sim(engine_of(playbook(CASE)), weather({"is_hot": False, "temp": -5}))
    state = sim.run()
    assert sim.steps_started() == ["start", "frozen"]
    assert state.variables == {"frozen": True}


def test_case_falls_back_to_next_when_no_rule_fires() -> None:
    sim = Sim(engine_of(playbook(CASE)), weather({"is_hot": False, "temp": 12}))
    sim.run()
    assert sim.steps_started() == ["start", "mild"]


def test_case_call_error_rule_handles_the_failure() -> None:
    sim = Sim(engine_of(playbook(CASE)), weather(None))
    state = sim.run()
    assert state.status == "completed"
    assert state.steps["start"].status == "failed"
    assert sim.steps_started() == ["start", "recover"]


def test_case_without_error_rule_fails_the_execution() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then: {next: [b]}
        - step: b
          tool: {kind: python, code: x}
    """)
    )
    assert Sim(engine, weather(None)).run().status == "failed"


def test_case_retry_with_new_params_and_collect() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: "http://api/items", params: {page: 1}}
          case:
            - when: "{{ event.name == 'call.done' and response.data.more }}"
              then:
                collect: {strategy: append, path: data.items, into: pages}
                retry: {params: {page: "{{ response.data.page + 1 }}"}}
            - when: "{{ event.name == 'call.done' }}"
              then:
                collect: {strategy: append, path: data.items, into: pages}
                next: [done]
        - step: done
          tool: {kind: python, code: x}
    """)
    )

    def api(command: CommandIssued) -> tuple[str, Any]:
        if command.step == "done":
            return "ok", "done"
        page = command.overrides.get("params", {}).get("page", 1)
        return "ok", {"data": {"page": page, "more": page < 3, "items": [page, page * 10]}}

    sim = Sim(engine, api)
    state = sim.run()
    assert state.status == "completed"
    assert state.variables["pages"] == [1, 10, 2, 20, 3, 30]
    # One engine serves every execution of its version: the second run collects the same
    # (a rule's `set` without templates must not keep what the first run collected).
    assert Sim(engine, api).run().variables["pages"] == [1, 10, 2, 20, 3, 30]
    assert [c.overrides for c in sim.issued if c.step == "start"] == [
        {},
        {"params": {"page": 2}},
        {"params": {"page": 3}},
    ]
    assert_replays(sim)


def test_case_sink_runs_before_the_rule_routes() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then:
                sink: {tool: {kind: event_log}}
                next: [b]
        - step: b
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", {"rows": 1}) if c.kind == "sink" else ("ok", {"v": 1}))
    state = sim.run()
    assert state.status == "completed"
    kinds = [c.kind for c in sim.issued]
    assert kinds == ["python", "sink", "python"]
    sink = sim.issued[1]
    assert sink.context.locals["result"] == {"v": 1}
    assert state.steps["start"].result == {"v": 1}


def test_per_item_sink_travels_with_each_item_and_rows_add_up() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n, mode: async}
          tool: {kind: python, code: x}
          sink: {per_item: true, tool: {kind: event_log}}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", 1))
    sim.start()
    while sim.inbox:
        command = sim.inbox.pop(0)
        assert command.sink == {"per_item": True, "tool": {"kind": "event_log"}}
        sim.send(
            CommandCompleted(
                execution_id=EXECUTION_ID,
                dedup_id=command.command_id,
                command_id=command.command_id,
                step=command.step,
                result=1,
                meta={"sink": {"rows": 1}},
            )
        )
    assert sim.state.status == "completed"
    assert all(c.kind != "sink" for c in sim.issued)
    completed = next(e for e in sim.events if e.type == "step.completed")
    assert completed.payload is not None and completed.payload["sink"] == {"rows": 3}


def test_retries_apply_to_each_page() -> None:
    engine = engine_of(
        playbook(
            PAGED.replace("MAX", "10").replace(
                "    - step: start\n",
                "    - step: start\n      retry: {max_attempts: 2, delay: 1}\n",
            )
        )
    )
    flaky = pages(3)

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.index == 1 and command.attempt == 1:
            return "error", {"message": "503", "status_code": 503}
        return flaky(command)

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.result == [10, 11, 20, 21, 30, 31]
    assert [(c.index, c.attempt) for c in sim.issued] == [(0, 1), (1, 1), (1, 2), (2, 1)]
    assert sim.issued[2].overrides == {"params": {"page": 2}}
