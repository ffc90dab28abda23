"""The pure engine on playbooks written for NoETL (issue 9's compatibility rules)."""

from __future__ import annotations

from typing import Any

from noetl.messages import CommandIssued
from tests.unit.engine_sim import (
    EXECUTION_ID,
    PAGED,
    Sim,
    assert_replays,
    engine_of,
    pages,
    playbook,
)


def echo(command: CommandIssued) -> tuple[str, Any]:
    return "ok", {"step": command.step}


# -- rule 6: a render error never hangs a run ---------------------------------------------


def test_python_code_is_not_a_template_even_when_jinja_cannot_parse_it() -> None:
    code = "# {{ vars.x }} and {{{ braces }}}\nresult = f'{{{1}}}'\n"
    engine = engine_of(
        playbook(
            f"""
        - step: start
          tool: {{kind: python, code: {code!r}}}
    """
        )
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "completed", state.error
    assert sim.issued[0].tool["code"] == code


def test_a_value_the_wire_cannot_carry_fails_the_step_and_routes_on_failure() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          vars: {big: "{{ 2 ** 100 }}"}
          next:
            - when: "{{ error is defined }}"
              then: [{step: recover}]
        - step: recover
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "completed"
    assert state.steps["start"].status == "failed"
    failed = next(e for e in sim.events if e.type == "step.failed")
    assert failed.error is not None
    assert "step `start` vars" in failed.error["message"]
    assert "cannot be sent" in failed.error["message"]
    assert state.steps["recover"].status == "completed"
    assert_replays(sim)


def test_an_unsendable_command_fails_its_step_instead_of_the_publish() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: "{{ [2 ** 100] }}", iterator: n}
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "failed"
    assert sim.issued == []
    assert "cannot be sent" in str(state.error)


def test_a_rule_that_cannot_be_applied_fails_its_step_with_the_reason() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'step.exit' }}"
              then: {collect: {path: data.missing, into: acc}}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "failed"
    assert state.steps["start"].status == "failed"
    assert state.error is not None
    assert "case[0].then.collect.path: missing `data`" in state.error["message"]


def test_any_error_while_deciding_fails_the_execution_instead_of_waiting() -> None:
    # A state whose pending command names a step this playbook lacks (as a corrupt or
    # mismatched history would): deciding raises, and the execution ends with the reason.
    def two_steps(second: str) -> str:
        return playbook(
            f"- step: start\n  next: [{{step: {second}}}]\n"
            f"- step: {second}\n  tool: {{kind: python, code: x}}\n"
        )

    first = Sim(engine_of(two_steps("work")), echo)
    first.start()
    command = first.inbox[0]
    other = engine_of(two_steps("elsewhere"))
    sim = Sim(other, echo)
    sim.state = first.state
    events = sim.send(first.outcome(command))
    assert [e.type for e in events][-1] == "execution.failed"
    assert sim.state.error is not None and sim.state.error["type"] == "decision"
    assert "KeyError" in sim.state.error["message"]


# -- rule 5: an undefined name tested for truth is false, with a warning ------------------


def warnings_of(sim: Sim) -> list[str]:
    return [
        w
        for e in sim.events
        if e.type == "step.warning" and e.payload
        for w in e.payload["warnings"]
    ]


def test_next_when_on_an_undefined_name_is_false_and_warned() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          next:
            - when: "{{ vars.ready and workload.go }}"
              then: [{step: yes}]
            - else: [{step: no}]
        - step: "yes"
          tool: {kind: python, code: x}
        - step: "no"
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "completed"
    assert "no" in state.steps and "yes" not in state.steps
    [warning] = warnings_of(sim)
    assert warning.startswith("step `start` next: 'ready' is undefined")
    assert warning.endswith("taken as false")
    assert_replays(sim)


def test_an_undefined_name_compared_still_fails_the_step() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          next:
            - when: "{{ nothing_here == 1 }}"
              then: [{step: end}]
        - step: end
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "failed"
    assert state.error is not None and "'nothing_here' is undefined" in state.error["message"]
    assert warnings_of(sim) == []


def test_case_rule_on_an_undefined_name_is_skipped_with_a_warning() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' and response.flagged }}"
              then: {next: [{step: flagged}]}
            - when: "{{ event.name == 'call.done' }}"
              then: {next: [{step: plain}]}
        - step: flagged
          tool: {kind: python, code: x}
        - step: plain
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "completed"
    assert "plain" in state.steps and "flagged" not in state.steps
    assert any("case[0].when: 'flagged' is undefined" in w for w in warnings_of(sim))


def test_retry_when_on_an_undefined_name_does_not_retry_and_warns() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: "http://api"}
          retry: {max_attempts: 3, delay: 0, when: "{{ error.retryable }}"}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"type": "http", "message": "boom"}))
    state = sim.run()
    assert state.status == "failed"
    assert len(sim.issued) == 1
    assert any("retry.when: 'retryable' is undefined" in w for w in warnings_of(sim))


def test_continue_while_on_an_undefined_name_stops_paging_and_warns() -> None:
    engine = engine_of(
        playbook(PAGED.replace("MAX", "5").replace("response.data.paging.hasMore", "response.more"))
    )
    sim = Sim(engine, pages(3))
    state = sim.run()
    assert state.status == "completed"
    assert state.result == [10, 11]
    assert any("continue_while: 'more' is undefined" in w for w in warnings_of(sim))
    assert_replays(sim)


# -- rule 3: names NoETL provides -----------------------------------------------------------


def test_loop_index_and_job_are_defined() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [a, b], iterator: letter}
          tool: {kind: python, code: x}
          vars: {where: "{{ job.path }}@{{ job.version }}", eid: "{{ job.execution_id }}"}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "completed"
    assert [c.context.locals["loop_index"] for c in sim.issued if c.context.locals] == [0, 1]
    assert state.variables == {"where": "t@1", "eid": str(EXECUTION_ID)}


def test_python_code_reading_context_carries_every_step_result() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          next: [{step: other}]
        - step: other
          tool: {kind: python, code: x}
          next: [{step: reads}]
        - step: reads
          tool: {kind: python, code: "result = context['start']"}
    """)
    )
    sim = Sim(engine, echo)
    assert sim.run().status == "completed"
    assert sorted(sim.issued[2].context.steps or {}) == ["other", "start"]
    assert sim.issued[1].context.steps == {}


# -- rule 4: NoETL's loop result shape beside the list ------------------------------------


def test_loop_result_answers_results_and_stats_and_stays_a_list() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          loop: {in: [1, 2, 3], iterator: n, continue_on_error: true}
          tool: {kind: python, code: x}
          next: [{step: after}]
        - step: after
          vars:
            total: "{{ start.stats.total }}"
            failed: "{{ start.stats.failed }}"
            count: "{{ start.results | length }}"
            length: "{{ start | length }}"
            first: "{{ start[0].n }}"
            each: "{{ start.results | map(attribute='n', default=0) | list }}"
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        n = (command.context.locals or {})["n"]
        return ("error", {"type": "python", "message": "no"}) if n == 2 else ("ok", {"n": n})

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.variables == {
        "total": 3,
        "failed": 1,
        "count": 3,
        "length": 3,
        "first": 1,
        "each": [1, 0, 3],
    }
    assert isinstance(state.steps["start"].result, list)


# -- rule 2: `case` as NoETL wrote it ----------------------------------------------------


def test_case_retry_honours_max_attempts_on_success() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: "http://api", params: {page: 1}}
          case:
            - when: "{{ event.name == 'call.done' and response.more }}"
              then:
                collect: {into: pages, path: page}
                retry:
                  max_attempts: 3
                  args: {params: {page: "{{ response.page + 1 }}"}}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        page = command.overrides.get("params", {}).get("page", 1)
        return "ok", {"page": page, "more": True}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert len(sim.issued) == 3
    assert [c.overrides for c in sim.issued] == [
        {},
        {"params": {"page": 2}},
        {"params": {"page": 3}},
    ]
    assert state.variables["pages"] == [1, 2, 3]
    assert_replays(sim)


def test_case_retry_on_error_stops_at_max_attempts_and_fails_the_step() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: "http://api"}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then: {retry: {max_attempts: 3, delay: 1}}
    """)
    )
    sim = Sim(engine, lambda c: ("error", {"type": "http", "message": "down"}))
    state = sim.run()
    assert state.status == "failed"
    assert len(sim.issued) == 3
    assert all(c.overrides == {} for c in sim.issued)


def test_a_call_error_rule_collects_from_the_error_on_a_plain_step() -> None:
    """As on a loop item: a failed call gave an error, not a result, so `collect` reads it."""
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: "http://api"}
          case:
            - when: "{{ event.name == 'call.error' }}"
              then:
                collect: {into: failures, path: message}
                next: [{step: after}]
        - step: after
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(
        engine,
        lambda c: (
            ("error", {"type": "http", "message": "down"}) if c.step == "start" else ("ok", {})
        ),
    )
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.variables["failures"] == ["down"]


def test_case_then_as_a_list_of_action_maps_is_one_rule() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then:
                - set: {first: "{{ response.step }}"}
                - set: [{name: second, value: "{{ response.step }}-2"}]
                - next: [{step: after}]
        - step: after
          tool: {kind: python, code: x}
    """)
    )
    sim = Sim(engine, echo)
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.variables == {"first": "start", "second": "start-2"}
    assert "after" in state.steps and state.steps["after"].status == "completed"


def test_case_then_result_sets_the_step_result() -> None:
    engine = engine_of(
        playbook("""
        - step: start
          tool: {kind: http, url: "http://api", params: {page: 1}}
          case:
            - when: "{{ event.name == 'call.done' and response.page < 2 }}"
              then:
                collect: {into: pages, path: page}
                retry: {args: {params: {page: 2}}}
            - when: "{{ event.name == 'call.done' }}"
              then:
                - collect: {into: pages, path: page}
                - result: {from: pages}
                  next: [{step: literal}]
        - step: literal
          tool: {kind: python, code: x}
          case:
            - when: "{{ event.name == 'call.done' }}"
              then: {result: {fetched: "{{ start | length }}"}}
    """)
    )

    def tool(command: CommandIssued) -> tuple[str, Any]:
        return "ok", {"page": command.overrides.get("params", {}).get("page", 1)}

    sim = Sim(engine, tool)
    state = sim.run()
    assert state.status == "completed", state.error
    assert state.steps["start"].result == [1, 2]
    assert state.result == {"fetched": 2}
    assert_replays(sim)
