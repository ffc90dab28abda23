"""Models built from YAML: normalisation of `next` and `case`, defaults, helpers."""

from __future__ import annotations

import msgspec
import pytest

from noetl.dsl import (
    CaseThen,
    Edge,
    Else,
    Loop,
    Metadata,
    Pagination,
    Playbook,
    Retry,
    Step,
    When,
    load_text,
)

HEADER = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: demo
"""


def load(body: str) -> Playbook:
    return load_text(HEADER + body)


def test_next_forms_are_normalised() -> None:
    playbook = load("""\
workflow:
  - step: start
    next:
      - a
      - step: b
        args: {x: "{{ result }}"}
      - when: "{{ result.big }}"
        then:
          - c
          - {step: d, args: {n: 1}}
      - when: "{{ result.small }}"
        then: e
      - else:
          - f
  - step: a
  - step: b
  - step: c
  - step: d
  - step: e
  - step: f
""")
    assert playbook.step("start").next == [
        Edge("a"),
        Edge("b", {"x": "{{ result }}"}),
        When("{{ result.big }}", [Edge("c"), Edge("d", {"n": 1})]),
        When("{{ result.small }}", [Edge("e")]),
        Else([Edge("f")]),
    ]


def test_single_next_without_list() -> None:
    playbook = load("""\
workflow:
  - step: start
    next: end
  - step: end
    next:
""")
    assert playbook.step("start").next == [Edge("end")]
    assert playbook.step("end").next == []


def test_defaults() -> None:
    playbook = load("""\
workflow:
  - step: start
    tool: {kind: python, code: "result = 1"}
    loop: {in: [1, 2]}
    retry: {}
""")
    step = playbook.step("start")
    assert step.loop == Loop(
        in_=[1, 2],
        iterator="item",
        mode="sequential",
        max_concurrency=16,
        continue_on_error=False,
        pagination=None,
    )
    assert step.retry == Retry(
        max_attempts=3, delay=1.0, backoff=2.0, max_delay=60.0, jitter=False, when=None
    )
    assert (step.args, step.vars, step.next, step.case, step.credentials) == ({}, {}, [], [], {})
    assert (step.desc, step.sink, step.timeout) == (None, None, None)
    assert playbook.workload == {} and playbook.workbook == []
    assert playbook.catalog_path == "demo"
    assert playbook.metadata == Metadata(name="demo")
    assert not playbook.has_end


def test_pagination_and_numbers() -> None:
    playbook = load("""\
workflow:
  - step: start
    timeout: 30
    tool: {kind: http, url: "http://x"}
    loop:
      pagination:
        continue_while: "{{ response.data.more }}"
        next_page: {params: {page: 2}}
        merge_path: data.items
""")
    step = playbook.step("start")
    assert step.timeout == 30.0 and isinstance(step.timeout, float)
    assert step.loop is not None
    assert step.loop.pagination == Pagination(
        continue_while="{{ response.data.more }}",
        next_page={"params": {"page": 2}},
        type="response_based",
        merge_strategy="append",
        merge_path="data.items",
        max_iterations=100,
    )


def test_case_rules() -> None:
    playbook = load("""\
workflow:
  - step: start
    tool: {kind: http, url: "http://x"}
    case:
      - when: "{{ event.name == 'call.done' }}"
        then:
          set: [{name: temp, value: "{{ response.temp }}"}]
          next: [{step: hot}]
          collect: {path: data, into: pages}
      - when: "{{ event.name == 'step.exit' }}"
        then:
          set: {flag: true}
          next: cold
  - step: hot
  - step: cold
""")
    first, second = playbook.step("start").case
    assert first.then.set == {"temp": "{{ response.temp }}"}
    assert first.then.next == [Edge("hot")]
    assert first.then.collect is not None and first.then.collect.into == "pages"
    assert second.then == CaseThen(set={"flag": True}, next=[Edge("cold")])


def test_python_code_is_kept_verbatim() -> None:
    playbook = load("""\
workflow:
  - step: start
    tool:
      kind: python
      code: |
        x = "{{ not a template"
        result = x
""")
    tool = playbook.step("start").tool
    assert tool is not None
    assert tool["code"] == 'x = "{{ not a template"\nresult = x\n'
    assert type(tool["code"]) is str


def test_yaml_scalars_become_builtin_types() -> None:
    playbook = load("""\
workload:
  hex: 0x1f
  ratio: 1.5
  flag: &f true
  again: *f
  text: >
    folded
workflow:
  - step: start
""")
    assert playbook.workload == {
        "hex": 31,
        "ratio": 1.5,
        "flag": True,
        "again": True,
        "text": "folded\n",
    }
    assert [type(v) for v in playbook.workload.values()] == [int, float, bool, bool, str]


def test_lookups_and_round_trip() -> None:
    playbook = load("""\
workbook:
  - name: task
    tool: {kind: python, code: "result = 1"}
workflow:
  - step: start
    tool: {kind: workbook, name: task}
    next:
      - when: "{{ result }}"
        then: [end]
      - else: [end]
  - step: end
""")
    assert playbook.step("end").step == "end"
    assert playbook.task("task").name == "task"
    assert playbook.has_end
    with pytest.raises(KeyError):
        playbook.step("missing")
    with pytest.raises(KeyError):
        playbook.task("missing")
    data = msgspec.to_builtins(playbook)
    assert data["apiVersion"] == "noetl.io/v2"
    assert msgspec.convert(data, Playbook) == playbook


def test_models_can_be_built_directly() -> None:
    step = Step(step="start", next=[Edge("end")])
    playbook = Playbook(
        api_version="noetl.io/v2",
        kind="Playbook",
        metadata=Metadata(name="x", path="lib/x"),
        workflow=[step],
    )
    assert playbook.catalog_path == "lib/x"
    assert playbook.step("start") is step
