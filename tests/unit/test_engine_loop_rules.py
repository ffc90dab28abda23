"""`case` rules on loop steps (issue 9, rule 2): per item, at the loop's end, routes once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from noetl.dsl import check_text
from noetl.messages import CommandIssued
from tests.unit.engine_sim import Sim, assert_replays, engine_of, playbook

SEEDS = (None, 1, 2, 3)


def item_of(command: CommandIssued) -> Any:
    return (command.context.locals or {}).get("n")


def started(sim: Sim, name: str) -> int:
    return sim.steps_started().count(name)


def test_call_error_retry_recalls_only_that_item_within_max_attempts() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n, mode: async}
          tool: {kind: http, url: "http://api", params: {n: "{{ n }}"}}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then:
                retry:
                  max_attempts: 3
                  args: {params: {n: "{{ n }}", again: "{{ loop.index }}"}}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if item_of(command) == 2 and command.attempt < 3:
            return "error", {"type": "http", "message": "busy"}
        return "ok", {"n": item_of(command), "attempt": command.attempt}

    for seed in SEEDS:
        sim = Sim(engine, tool, seed=seed)
        state = sim.run()
        assert state.status == "completed", state.error
        calls = Counter(item_of(c) for c in sim.issued)
        assert calls == {1: 1, 2: 3, 3: 1}
        retried = [c.overrides for c in sim.issued if c.attempt > 1]
        assert retried == [{"params": {"n": 2, "again": 1}}] * 2
        assert state.steps["start"].result == [
            {"n": 1, "attempt": 1},
            {"n": 2, "attempt": 3},
            {"n": 3, "attempt": 1},
        ]
        assert_replays(sim)


def test_item_whose_retries_run_out_fails_the_loop() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2], iterator: n}
          tool: {kind: http, url: "http://api"}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then: {retry: {max_attempts: 2}, next: [{step: never}]}
        - step: never
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return ("error", {"message": "down"}) if item_of(command) == 2 else ("ok", 1)

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "failed"
    assert Counter(item_of(c) for c in sim.issued) == {1: 1, 2: 2}
    assert "1 of 2 items failed" in str(state.error)
    assert "never" not in state.steps


def test_call_error_rule_without_retry_takes_the_failure_and_the_loop_goes_on() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then:
                collect: {into: failed_items, path: message}
                next: [{step: report, args: {bad: "{{ n }}"}}]
        - step: report
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.step == "start" and item_of(command) == 2:
            return "error", {"message": "no 2"}
        return "ok", {"step": command.step}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.variables["failed_items"] == ["no 2"]
    assert state.steps["start"].result[1]["error"]["message"] == "no 2"
    assert started(sim, "report") == 1
    report = next(c for c in sim.issued if c.step == "report")
    assert report.edge_args == {"bad": 2}
    assert_replays(sim)


def test_per_item_rules_set_collect_and_result_and_routes_are_taken_once() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3, 4], iterator: n, mode: async, max_concurrency: 4}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' and response.n > 1 }}"
              then:
                - collect: {into: big, path: n, strategy: append}
                - set: {last_big: "{{ n }}"}
                - result: {n: "{{ response.n }}", big: true}
                  next: [{step: after, args: {seen: "{{ n }}"}}]
            - when: "{{ event.name == 'call.done' }}"
              then:
                set: {small: "{{ n }}"}
                next: [{step: after, args: {seen: 0, small: "{{ n }}"}}]
          next: [{step: not_taken}]
        - step: after
          tool: {kind: python, code: x}
        - step: not_taken
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return "ok", {"n": item_of(command)}

    for seed in SEEDS:
        sim = Sim(engine, tool, seed=seed)
        state = sim.run()
        assert state.status == "completed", state.error
        assert sorted(state.variables["big"]) == [2, 3, 4]
        assert state.variables["small"] == 1
        assert state.steps["start"].result == [
            {"n": 1},
            {"n": 2, "big": True},
            {"n": 3, "big": True},
            {"n": 4, "big": True},
        ]
        # One activation, whatever order the items ended in: targets once, args merged
        # in item order (the last item wins `seen`); the step's `next` is not taken.
        assert started(sim, "after") == 1 and "not_taken" not in state.steps
        after = next(c for c in sim.issued if c.step == "after")
        assert after.edge_args == {"seen": 4, "small": 1}
        assert_replays(sim)


def test_per_item_rule_sink_writes_each_item_before_the_loop_ends() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [10, 20], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then:
                sink:
                  tool: {kind: postgres, table: t}
                  args: {n: "{{ n }}", i: "{{ loop.index }}", r: "{{ result.v }}"}
                next: [{step: after, args: {last: "{{ n }}"}}]
        - step: after
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return ("ok", {"rows": 1}) if command.kind == "sink" else ("ok", {"v": item_of(command)})

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert [(c.step, c.kind) for c in sim.issued] == [
        ("start", "python"),
        ("start", "sink"),
        ("start", "python"),
        ("start", "sink"),
        ("after", "python"),
    ]
    sinks = [c for c in sim.issued if c.kind == "sink"]
    assert [c.context.locals for c in sinks] == [
        {"n": 10, "loop": {"index": 0, "first": True, "last": False, "length": 2},
         "loop_index": 0, "result": {"v": 10}},
        {"n": 20, "loop": {"index": 1, "first": False, "last": True, "length": 2},
         "loop_index": 1, "result": {"v": 20}},
    ]  # fmt: skip
    assert state.steps["start"].result == [{"v": 10}, {"v": 20}]
    assert started(sim, "after") == 1
    assert sim.issued[-1].edge_args == {"last": 20}
    assert_replays(sim)


def test_loop_done_rule_applies_once_and_its_next_wins() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then: {next: [{step: per_item}]}
            - when: "{{ event.name == 'loop.done' and result.stats.total == 3 }}"
              then:
                set: {total: "{{ result | length }}", ok: "{{ result.stats.success }}"}
                result: {count: "{{ result | length }}"}
                next: [{step: summary}]
        - step: per_item
          tool: {kind: python, code: x}
        - step: summary
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", {"n": item_of(c)}))
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.variables == {"total": 3, "ok": 3}
    assert state.steps["start"].result == {"count": 3}
    assert started(sim, "summary") == 1 and "per_item" not in state.steps
    assert_replays(sim)


def test_loop_done_rule_without_next_leaves_routing_to_the_items_then_next() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'loop.done' }}"
              then: {set: {done: true}}
          next: [{step: after}]
        - step: after
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, lambda c: ("ok", 1))
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.variables == {"done": True}
    assert started(sim, "after") == 1


def test_a_retried_rule_sink_writes_the_same_item_again() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2], iterator: n}
          tool: {kind: python, code: x}
          retry: {max_attempts: 2, delay: 1}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then: {sink: {tool: {kind: event_log}, args: {n: "{{ n }}"}}}
    """)
    )
    failed_once: set[int] = set()

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.kind == "sink":
            n = item_of(command)
            if n not in failed_once:
                failed_once.add(n)
                return "error", {"message": "sink down"}
            return "ok", {"rows": 1}
        return "ok", {"v": item_of(command)}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    sinks = [c for c in sim.issued if c.kind == "sink"]
    assert [(c.attempt, item_of(c), (c.context.locals or {})["result"]) for c in sinks] == [
        (1, 1, {"v": 1}),
        (2, 1, {"v": 1}),
        (1, 2, {"v": 2}),
        (2, 2, {"v": 2}),
    ]
    assert_replays(sim)


def test_call_error_rule_sink_writes_the_failed_item_with_its_error() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then:
                sink:
                  tool: {kind: postgres, table: failures}
                  args: {n: "{{ n }}", i: "{{ loop.index }}", why: "{{ error.message }}"}
                set: {had_errors: true}
          next: [{step: after}]
        - step: after
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.kind == "sink":
            return "ok", {"rows": 1}
        if command.step == "start" and item_of(command) == 2:
            return "error", {"type": "python", "message": "no 2"}
        return "ok", {"v": item_of(command)}

    for seed in SEEDS:
        sim = Sim(engine, tool, seed=seed)
        state = sim.run()
        assert state.status == "completed", state.error
        sinks = [c for c in sim.issued if c.kind == "sink"]
        assert len(sinks) == 1
        seen = sinks[0].context.locals or {}
        assert (seen["n"], seen["loop"]["index"], seen["error"]["message"]) == (2, 1, "no 2")
        assert "result" not in seen
        result = state.steps["start"].result
        assert result[0] == {"v": 1} and result[2] == {"v": 3}
        assert result[1]["error"]["message"] == "no 2"
        assert state.variables == {"had_errors": True}
        assert started(sim, "after") == 1
        assert_replays(sim)


def test_call_error_rule_sink_that_fails_fails_the_loop() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then: {sink: {tool: {kind: event_log}, args: {n: "{{ n }}"}}}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.kind == "sink":
            return "error", {"message": "sink down"}
        return ("error", {"message": "bad"}) if item_of(command) == 1 else ("ok", 1)

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "failed"
    assert "sink down" in str(state.error)
    assert_replays(sim)


def test_loop_done_rule_sink_writes_the_whole_list_once_then_the_rule_applies() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n, mode: async}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'loop.done' }}"
              then:
                sink:
                  tool: {kind: postgres, table: t}
                  args: {rows: "{{ result }}", total: "{{ result.stats.total }}"}
                set: {written: "{{ result | length }}"}
                next: [{step: after}]
          next: [{step: not_taken}]
        - step: after
          tool: {kind: python, code: x}
        - step: not_taken
          tool: {kind: python, code: x}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return ("ok", {"rows": 3}) if command.kind == "sink" else ("ok", {"n": item_of(command)})

    for seed in SEEDS:
        sim = Sim(engine, tool, seed=seed)
        state = sim.run()
        assert state.status == "completed", state.error
        kinds = [(c.step, c.kind) for c in sim.issued]
        assert kinds.count(("start", "sink")) == 1
        assert kinds[-2:] == [("start", "sink"), ("after", "python")]
        sink = next(c for c in sim.issued if c.kind == "sink")
        assert list((sink.context.locals or {})["result"]) == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert sink.index is None
        assert state.variables == {"written": 3}
        assert state.steps["start"].result == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert "not_taken" not in state.steps and started(sim, "after") == 1
        assert_replays(sim)


def test_loop_done_rule_sink_that_fails_fails_the_step() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1], iterator: n}
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'loop.done' }}"
              then: {sink: {tool: {kind: event_log}}, set: {never: true}}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"message": "no db"}) if c.kind == "sink" else ("ok", 1))
    state = sim.run()
    assert state.status == "failed" and "no db" in str(state.error)
    assert state.variables == {}
    assert_replays(sim)


def test_a_retried_call_error_rule_sink_still_sees_the_error() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1], iterator: n}
          tool: {kind: python, code: x}
          retry: {max_attempts: 2, delay: 1, when: "{{ error.message == 'sink down' }}"}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then: {sink: {tool: {kind: event_log}, args: {why: "{{ error.message }}"}}}
    """)
    )
    sink_calls: list[int] = []

    def tool(command: CommandIssued) -> tuple[str, Any]:
        if command.kind == "sink":
            sink_calls.append(command.attempt)
            return ("error", {"message": "sink down"}) if command.attempt == 1 else ("ok", {})
        return "error", {"message": "bad item"}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert sink_calls == [1, 2]
    sinks = [c for c in sim.issued if c.kind == "sink"]
    assert [(c.context.locals or {})["error"]["message"] for c in sinks] == ["bad item"] * 2
    assert_replays(sim)


def test_validation_refuses_retry_on_loop_done_and_a_second_end_sink() -> None:
    text = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: demo}
workflow:
  - step: start
    loop: {in: [1, 2], iterator: n}
    tool: {kind: python, code: x}
    sink: {tool: {kind: event_log}}
    case:
      - when: "{{ event.name == 'loop.done' }}"
        then:
          retry: {max_attempts: 2}
          sink: {tool: {kind: event_log}}
      - when: "{{ event.name == 'call.error' }}"
        then: {retry: {max_attempts: 2}, sink: {tool: {kind: event_log}}}
"""
    report = check_text(text, filename="pb.yaml")
    assert [str(p) for p in report.errors] == [
        "pb.yaml:12:18: step `start` case[0]: `retry` on a `loop.done` rule is not supported "
        "(it would run the whole loop again); retry the items that fail with a `call.error` "
        "rule's `retry` or the step's `retry`",
        "pb.yaml:13:17: step `start` case[0]: a `loop.done` rule's `sink` and the step's own "
        "`sink` both write the list when the loop ends; keep one",
    ]
