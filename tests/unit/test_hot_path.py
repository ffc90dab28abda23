"""What decides whether a decision or a tool block is rendered in a thread: work that runs
no template is done on the event loop (no thread hop), anything else in a thread."""

from __future__ import annotations

import pytest

from actors.command_render import renders
from noetl.bench.playbooks import chain_text
from noetl.messages import CommandCompleted, CommandIssued, StartExecution
from noetl.render import may_run_long
from plugins.python import PythonTool
from tests.unit.engine_sim import engine_of

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p}\nworkflow:\n"
DONE = CommandCompleted(execution_id=1, dedup_id="d", command_id="c", step="start", result=1)


def start(workload: dict[str, object]) -> StartExecution:
    return StartExecution(execution_id=1, dedup_id="s", path="p", workload=workload)


def test_a_playbook_without_templates_decides_on_the_loop() -> None:
    engine = engine_of(chain_text(3))
    assert not engine.plan.templated
    assert not engine.renders(DONE) and not engine.renders(start({"n": 1}))
    # ... unless its start brings a template in the workload, which the start renders.
    assert engine.renders(start({"n": ["{{ 1 }}"]}))
    assert engine.renders(start({"n": {"m": "{% if 1 %}1{% endif %}"}}))


@pytest.mark.parametrize(
    "body",
    [
        "  - step: start\n    next: [{when: '{{ 1 }}', then: [b]}]\n  - step: b\n",
        "  - step: start\n    vars: {x: '{{ 1 }}'}\n",
        "workload: {x: '{{ 1 }}'}\nworkflow:\n  - step: start\n",
        # `then.result: {from: NAME}` is evaluated as a template made from a plain name.
        "  - step: start\n    tool: {kind: python, code: 'result = 1'}\n"
        "    case: [{when: 'true', then: {result: {from: start}}}]\n",
    ],
)
def test_any_template_or_case_rule_decides_in_a_thread(body: str) -> None:
    text = HEAD + body if body.startswith("  ") else HEAD.replace("workflow:\n", "") + body
    engine = engine_of(text)
    assert engine.plan.templated and engine.renders(DONE)


@pytest.mark.parametrize(
    ("text", "long"),
    [
        ("plain text", False),
        ("{{ name }}", False),
        ("  {{ a.b[0]['c'] }}  ", False),
        ("{{ workload.items }}", False),
        ("{{ a[b] }}", True),  # a subscript read from the context
        ("{{ a | length }}", True),
        ("{{ a.upper() }}", True),
        ("{{ 1 }}", True),
        ("x {{ a }}", True),  # printed, not a lone lookup
        ("{% for i in a %}{% endfor %}", True),
        ("{{ a", False),  # does not parse: fails at once
        ({"k": ["{{ a }}", ("{{ b | list }}",)]}, True),
        ({"k": ["{{ a }}", ("{{ b.c }}",)]}, False),
    ],
)
def test_only_templates_beyond_a_plain_lookup_may_run_long(text: object, long: bool) -> None:
    assert may_run_long(text) is long


def test_a_playbook_of_plain_lookups_decides_on_the_loop() -> None:
    body = (
        "  - step: start\n"
        "    loop: {in: '{{ workload.items }}', iterator: n}\n"
        "    tool: {kind: python, args: {n: '{{ n }}'}, code: 'result = n'}\n"
        "    next: [{when: '{{ workload.flag }}', then: [b]}]\n"
        "  - step: b\n"
    )
    engine = engine_of(HEAD + body)
    assert not engine.plan.templated and not engine.renders(DONE)
    assert not engine.renders(start({"items": "{{ vars.x }}"}))
    assert engine.renders(start({"items": "{{ range(9) | list }}"}))


def command(tool: dict[str, object], args: dict[str, object]) -> CommandIssued:
    return CommandIssued(
        execution_id=1, dedup_id="c", command_id="c", step="s", kind="python", tool=tool, args=args
    )


def test_a_tool_block_is_rendered_in_a_thread_only_when_it_has_a_template() -> None:
    python = PythonTool()
    raw_code = {"kind": "python", "code": "result = '{{ kept as written }}'"}
    assert not renders(command(raw_code, {"n": 1}), python)
    assert renders(command(raw_code, {"n": ["{{ 1 }}"]}), python)
    assert renders(command({**raw_code, "timeout": "{{ 5 }}"}, {}), python)
