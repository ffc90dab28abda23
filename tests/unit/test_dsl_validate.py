"""Validation rules: each one with a failing example and the exact position it reports."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from noetl.dsl import Graph, Problem, Report, check_text, load_text
from noetl.errors import PlaybookError

HEADER = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: demo
"""
# Lines of HEADER: the body passed to `check` starts on line 5.


def check(body: str, known_kinds: Collection[str] = ()) -> Report:
    return check_text(HEADER + body, filename="pb.yaml", known_kinds=known_kinds)


def errors(body: str, known_kinds: Collection[str] = ()) -> list[str]:
    return [str(p) for p in check(body, known_kinds).errors]


def warnings(body: str) -> list[str]:
    """The warnings of `body`, checking that `--strict` makes exactly them errors."""
    report = check(body)
    found = [str(p) for p in report.warnings]
    strict = report.strict()
    assert strict.playbook is None if found else strict.playbook is report.playbook
    assert [str(p) for p in strict.errors] == sorted(
        [str(p) for p in report.errors] + [w.replace("warning: ", "") for w in found],
        key=lambda text: tuple(int(n) for n in text.split(":")[1:3]),
    )
    return found


def test_problem_format() -> None:
    assert str(Problem("f.yaml", 3, 7, "bad")) == "f.yaml:3:7: bad"
    assert str(Problem("f.yaml", 3, 7, "odd", "warning")) == "f.yaml:3:7: warning: odd"


def test_valid_playbook() -> None:
    report = check("workflow:\n  - step: start\n")
    assert report.ok and report.playbook is not None
    assert report.errors == report.warnings == []


def test_yaml_syntax_error_has_a_position() -> None:
    report = check_text("a: [1, 2\nb: 3\n", filename="pb.yaml")
    assert report.playbook is None
    [problem] = report.errors
    assert str(problem).startswith("pb.yaml:2:2: YAML syntax error: ")


def test_duplicate_yaml_keys_warn_and_the_last_wins() -> None:
    body = "workload: {n: 1, n: 2}\nworkflow:\n  - step: start\n    desc: a\n    desc: b\n"
    report = check(body)
    assert report.errors == []
    assert [str(w) for w in report.warnings] == [
        "pb.yaml:5:12: warning: duplicate key `n`: this value is replaced by the one at line 5 "
        "(the last one wins)",
        "pb.yaml:8:5: warning: duplicate key `desc`: this value is replaced by the one at "
        "line 9 (the last one wins)",
    ]
    assert report.playbook is not None
    assert report.playbook.workload == {"n": 2}
    assert report.playbook.step("start").desc == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the document is empty"),
        ("- a\n", "a playbook must be a YAML mapping, got a list"),
    ],
)
def test_document_must_be_a_mapping(text: str, message: str) -> None:
    [problem] = check_text(text, filename="pb.yaml").errors
    assert (problem.line, problem.col) == (1, 1)
    assert message in problem.message


def test_api_version_v1_is_refused_alone() -> None:
    text = "# old\napiVersion: noetl.io/v1\nkind: Playbook\nname: x\nworkflow: []\n"
    [problem] = check_text(text, filename="pb.yaml").errors
    assert (problem.line, problem.col) == (2, 13)
    assert "noetl.io/v1 is not supported" in problem.message
    assert "migrate" in problem.message


def test_header_values() -> None:
    text = (
        "apiVersion: noetl.io/v3\nkind: Flow\nmetadata: {name: 9lives}\nworkflow: [{step: start}]\n"
    )
    assert [str(p) for p in check_text(text, filename="pb.yaml").errors] == [
        "pb.yaml:1:13: apiVersion must be `noetl.io/v2`, got `noetl.io/v3`",
        "pb.yaml:2:7: kind must be `Playbook`, got `Flow`",
        "pb.yaml:3:18: `metadata.name` must be an identifier (letters, digits, `_` and `-`, "
        "not starting with a digit), got `9lives`",
    ]


def test_required_fields() -> None:
    text = "kind: Playbook\nmetadata:\n  path: x\n"
    assert [str(p) for p in check_text(text, filename="pb.yaml").errors] == [
        "pb.yaml:1:1: the playbook is missing required field `apiVersion`",
        "pb.yaml:1:1: the playbook is missing required field `workflow`",
        "pb.yaml:2:1: `metadata` is missing required field `name`",
    ]


def test_missing_start() -> None:
    assert errors("workflow:\n  - step: begin\n") == [
        "pb.yaml:5:1: the workflow has no step named `start`, where every execution begins",
    ]


def test_missing_start_suggests_a_close_name() -> None:
    assert errors("workflow:\n  - step: strat\n") == [
        "pb.yaml:5:1: the workflow has no step named `start`, where every execution begins "
        "(did you mean `strat`?)",
    ]


def test_duplicate_step_names_warn_and_the_first_is_used() -> None:
    body = (
        "workflow:\n  - step: start\n    next: [a]\n  - step: a\n    desc: first\n"
        "  - step: a\n    desc: second\n    next: [start]\n"
    )
    assert warnings(body) == [
        "pb.yaml:10:11: warning: duplicate step name `a`: this definition is ignored, the first "
        "(line 8) is used",
    ]
    playbook = check(body).playbook
    assert playbook is not None and playbook.step("a").desc == "first"
    # The ignored definition's routes are not in the graph either.
    assert Graph.of(playbook).successors("a") == ()


def test_unknown_step_in_every_routing_form() -> None:
    body = """\
workflow:
  - step: start
    next:
      - finsh
      - when: "{{ x }}"
        then: [{step: finis}]
      - else: [nowhere]
    case:
      - when: "{{ y }}"
        then: {next: [fnish]}
  - step: finish
"""
    assert errors(body) == [
        "pb.yaml:8:9: `next` names unknown step `finsh` (did you mean `finish`?)",
        "pb.yaml:10:23: `then` names unknown step `finis` (did you mean `finish`?)",
        "pb.yaml:11:16: `else` names unknown step `nowhere`",
        "pb.yaml:14:23: case `next` names unknown step `fnish` (did you mean `finish`?)",
    ]


def test_bad_next_entries() -> None:
    body = """\
workflow:
  - step: start
    next:
      - {go: a}
      - 7
      - when: "{{ x }}"
      - else: [3]
"""
    assert errors(body) == [
        "pb.yaml:8:9: a `next` entry needs `step`, `when` or `else`",
        "pb.yaml:9:9: a `next` entry must be a step name or a mapping, got an integer",
        "pb.yaml:10:9: a `when` entry is missing required field `then`",
        "pb.yaml:11:16: an entry of `else` must be a step name or a `{step, args}` mapping, "
        "got an integer",
    ]


def test_unknown_workbook_task() -> None:
    body = """\
workbook:
  - name: compute
    tool: {kind: python, code: "result = 1"}
workflow:
  - step: start
    tool: {kind: workbook, name: compte}
"""
    assert errors(body) == [
        "pb.yaml:10:34: the workbook has no task `compte` (did you mean `compute`?)",
    ]


def test_duplicate_workbook_task() -> None:
    body = """\
workbook:
  - {name: t, tool: {kind: python, code: x}}
  - {name: t, tool: {kind: python, code: y}}
workflow: [{step: start}]
"""
    assert warnings(body) == [
        "pb.yaml:7:12: warning: duplicate workbook task `t`: this definition is ignored, the "
        "first (line 6) is used",
    ]
    playbook = check(body).playbook
    assert playbook is not None and playbook.task("t").tool["code"] == "x"


def test_unknown_tool_kind() -> None:
    body = "workflow:\n  - step: start\n    tool: {kind: pyhton, code: x}\n"
    assert errors(body) == ["pb.yaml:7:18: unknown tool kind `pyhton` (did you mean `python`?)"]


def test_plugin_kinds_are_known_and_not_field_checked() -> None:
    body = "workflow:\n  - step: start\n    tool: {kind: kafka, topic: t, anything: 1}\n"
    assert errors(body) == ["pb.yaml:7:18: unknown tool kind `kafka`"]
    assert errors(body, known_kinds={"kafka"}) == []


def test_tool_needs_a_kind() -> None:
    body = "workflow:\n  - step: start\n    tool: {code: x}\n"
    assert errors(body) == ["pb.yaml:7:5: the tool is missing required field `kind`"]


def test_tool_block_required_fields() -> None:
    body = """\
workflow:
  - step: start
    tool: {kind: python}
    next: [a]
  - step: a
    tool: {kind: playbook, version: 2}
"""
    assert errors(body) == [
        "pb.yaml:7:5: the `python` tool needs `code` or `code_b64` or `script`",
        "pb.yaml:10:5: the `playbook` tool needs `path`",
    ]


@pytest.mark.parametrize(
    ("tool", "field", "message"),
    [
        (
            "{kind: python, code: x, lib: {}}",
            "lib",
            "unknown field `lib` in the `python` tool is passed to the plugin as is "
            "(did you mean `libs`?)",
        ),
        (
            "{kind: http, url: x, header: {}}",
            "header",
            "unknown field `header` in the `http` tool is passed to the plugin as is "
            "(did you mean `headers`?)",
        ),
        (
            "{kind: postgres, querry: x}",
            "querry",
            "unknown field `querry` in the `postgres` tool is passed to the plugin as is "
            "(did you mean `query`?)",
        ),
        (
            "{kind: duckdb, query: x, mode: upsert}",
            "mode",
            "unknown field `mode` in the `duckdb` tool is passed to the plugin as is",
        ),
        (
            "{kind: snowflake, comand: x}",
            "comand",
            "unknown field `comand` in the `snowflake` tool is passed to the plugin as is "
            "(did you mean `command`?)",
        ),
        (
            "{kind: playbook, path: p, return: s}",
            "return",
            "unknown field `return` in the `playbook` tool is passed to the plugin as is "
            "(did you mean `return_step`?)",
        ),
        (
            "{kind: workbook, name: t, arg: {}}",
            "arg",
            "unknown field `arg` in the `workbook` tool is passed to the plugin as is "
            "(did you mean `args`?)",
        ),
        (
            "{kind: iterator, collection: [], elem: x}",
            "elem",
            "unknown field `elem` in the `iterator` tool is passed to the plugin as is "
            "(did you mean `element`?)",
        ),
    ],
)
def test_tool_fields_of_builtin_kinds(tool: str, field: str, message: str) -> None:
    body = (
        "workbook: [{name: t, tool: {kind: python, code: x}}]\n"
        f"workflow:\n  - step: start\n    tool: {tool}\n"
    )
    col = len("    tool: ") + tool.index(f" {field}:") + 2  # the key, 1-based
    assert warnings(body) == [f"pb.yaml:8:{col}: warning: {message}"]
    playbook = check(body).playbook
    assert playbook is not None
    assert field in (playbook.step("start").tool or {})  # kept for the plugin


def test_tool_field_types_accept_templates() -> None:
    body = """\
workflow:
  - step: start
    tool:
      kind: http
      url: 42
      timeout: "{{ workload.timeout }}"
      verify_ssl: "no"
      headers: [a]
"""
    assert errors(body) == [
        "pb.yaml:9:12: `url` must be a string, got an integer",
        "pb.yaml:11:19: `verify_ssl` must be a boolean, got a string",
        "pb.yaml:12:16: `headers` must be a mapping, got a list",
    ]


def test_iterator_task_is_a_tool_block() -> None:
    body = """\
workflow:
  - step: start
    tool:
      kind: iterator
      collection: "{{ workload.items }}"
      element: item
      task: {kind: http, url: "http://x", bogus: 1}
"""
    assert warnings(body) == [
        "pb.yaml:11:43: warning: unknown field `bogus` in the `http` tool is passed to the "
        "plugin as is",
    ]


def test_wrong_types() -> None:
    body = """\
workload: [1]
workflow:
  - step: start
    desc: 5
    args: [x]
    timeout: soon
    retry: {max_attempts: 0, jitter: "yes"}
    loop: {in: [1], mode: parallel, max_concurrency: 2.5}
    next: [end]
  - step: end
    timeout: -1
    case: {when: x}
"""
    assert errors(body) == [
        "pb.yaml:5:11: `workload` must be a mapping, got a list",
        "pb.yaml:8:11: `desc` must be a string, got an integer",
        "pb.yaml:9:11: `args` must be a mapping, got a list",
        "pb.yaml:10:14: `timeout` must be a number, got a string",
        "pb.yaml:11:27: `max_attempts` must be at least 1, got 0",
        "pb.yaml:11:38: `jitter` must be a boolean, got a string",
        "pb.yaml:12:27: `mode` must be one of `async`, `sequential`, got `parallel`",
        "pb.yaml:12:54: `max_concurrency` must be an integer, got a number",
        "pb.yaml:15:14: `timeout` must be greater than 0, got -1",
        "pb.yaml:16:11: `case` must be a list, got a mapping",
    ]


def test_step_must_be_a_mapping() -> None:
    assert errors("workflow:\n  - step: start\n  - just_a_name\n") == [
        "pb.yaml:7:5: a step must be a mapping, got a string",
    ]


def test_unknown_fields_at_every_level() -> None:
    body = """\
metadata_x: 1
workflow:
  - step: start
    nxt: [a]
    loop:
      in: [1]
      iter: x
      pagination: {continue_while: x, next_page: {}, max_iter: 2}
    retry: {max_attempt: 2}
    next:
      - {step: a, arg: {}}
      - when: x
        than: [a]
      - {else: [a], extra: 1}
    case:
      - when: x
        then: {nex: [a]}
        hwen: y
      - when: x
        then: {collect: {strategy: append, intoo: p}, set: [{name: a, val: 1}]}
  - step: a
"""
    assert errors(body) == ["pb.yaml:16:9: a `when` entry is missing required field `then`"]
    ignored = "is ignored"
    assert [w.replace("warning: ", "") for w in warnings(body)] == [
        f"pb.yaml:5:1: unknown field `metadata_x` in the playbook {ignored} "
        "(did you mean `metadata`?)",
        f"pb.yaml:8:5: unknown field `nxt` in step `start` {ignored} (did you mean `next`?)",
        f"pb.yaml:11:7: unknown field `iter` in `loop` {ignored} (did you mean `iterator`?)",
        f"pb.yaml:12:54: unknown field `max_iter` in `pagination` {ignored} "
        "(did you mean `max_iterations`?)",
        f"pb.yaml:13:13: unknown field `max_attempt` in `retry` {ignored} "
        "(did you mean `max_attempts`?)",
        f"pb.yaml:15:19: unknown field `arg` in a route {ignored} (did you mean `args`?)",
        f"pb.yaml:17:9: unknown field `than` in a `when` entry {ignored} (did you mean `then`?)",
        f"pb.yaml:18:21: unknown field `extra` in an `else` entry {ignored}",
        f"pb.yaml:21:16: unknown field `nex` in the `then` of a `case` rule {ignored} "
        "(did you mean `next`?)",
        f"pb.yaml:22:9: unknown field `hwen` in a `case` rule {ignored} (did you mean `when`?)",
        f"pb.yaml:24:44: unknown field `intoo` in `collect` {ignored} (did you mean `into`?)",
        f"pb.yaml:24:71: unknown field `val` in a `set` item {ignored} (did you mean `value`?)",
    ]


def test_loop_needs_items_or_pagination() -> None:
    body = "workflow:\n  - step: start\n    loop: {iterator: x}\n"
    assert errors(body) == ["pb.yaml:7:5: `loop` needs `in` (the items) or `pagination`"]


def test_template_syntax_errors() -> None:
    body = """\
workload:
  greeting: "{{ name }"
workflow:
  - step: start
    tool:
      kind: postgres
      query: |
        SELECT 1
        WHERE x = {{ workload.x
    next:
      - when: "{% if x %}"
        then: [start]
"""
    assert errors(body) == [
        "pb.yaml:6:13: Jinja2 syntax error in template: unexpected '}'",
        "pb.yaml:13:9: Jinja2 syntax error in template: unexpected end of template, "
        "expected 'end of print statement'.",
        "pb.yaml:15:15: Jinja2 syntax error in template: Unexpected end of template. Jinja "
        "was looking for the following tags: 'elif' or 'else' or 'endif'. The innermost "
        "block that needs to be closed is 'if'.",
    ]


def test_python_code_is_not_a_template() -> None:
    body = """\
workflow:
  - step: start
    tool:
      kind: python
      code: |
        print("{{ not jinja")
      code_b64: "{{ also not"
      args: {x: "{{ bad }"}
"""
    assert errors(body) == ["pb.yaml:12:17: Jinja2 syntax error in template: unexpected '}'"]


def test_unreachable_steps_are_warnings() -> None:
    report = check("workflow:\n  - step: start\n  - step: island\n    next: [start]\n")
    assert report.ok and report.playbook is not None
    assert [str(w) for w in report.warnings] == [
        "pb.yaml:7:11: warning: step `island` is not reachable from `start`",
    ]
    assert report.warnings[0].severity == "warning"


def test_implicit_end_counts_for_reachability() -> None:
    report = check("workflow:\n  - step: start\n  - step: end\n")
    assert report.warnings == []


def test_empty_tool_only_routes() -> None:
    playbook = check("workflow:\n  - step: start\n    tool:\n").playbook
    assert playbook is not None and playbook.step("start").tool is None


def test_credentials_are_accepted() -> None:
    body = "workflow:\n  - step: start\n    credentials: {src: {key: pg_a}}\n"
    playbook = check(body).playbook
    assert playbook is not None
    assert playbook.step("start").credentials == {"src": {"key": "pg_a"}}


def test_every_problem_is_reported_at_once() -> None:
    body = """\
workflow:
  - step: begin
    tool: {kind: nope}
    next: [nowhere]
    timeout: x
"""
    assert len(check(body).errors) == 4


def test_load_text_raises_playbook_error() -> None:
    with pytest.raises(PlaybookError) as caught:
        load_text(HEADER + "workflow:\n  - step: begin\n", filename="pb.yaml")
    assert caught.value.problems == [
        "pb.yaml:5:1: the workflow has no step named `start`, where every execution begins",
    ]


def test_keychain_kinds_this_runtime_cannot_fill_are_refused_with_what_to_use() -> None:
    body = (
        "keychain:\n  - {name: token, kind: oauth2}\n  - {name: gated, when: x}\n"
        "workflow:\n  - step: start\n"
    )
    assert errors(body) == [
        "pb.yaml:6:25: keychain entry `token`: kind `oauth2` is not supported by this runtime "
        "(it fills `credential` entries, from a stored credential); store the value as a "
        "credential (`noetl-runtime credential set`) and name it in a `credential` entry, a "
        "tool's `auth` or `{{ secret.NAME }}`",
        "pb.yaml:7:19: keychain entry `gated`: `when` is not supported (entries here name one "
        "stored credential each)",
    ]
    with pytest.raises(PlaybookError, match="kind `oauth2` is not supported"):
        load_text(HEADER + body)


def test_keychain_credential_entries_are_accepted() -> None:
    body = (
        "keychain:\n  - {name: api, kind: credential, credential: stored_api}\n"
        "  - {name: pg, kind: postgres_credential}\n"
        "workflow:\n  - step: start\n"
        "    tool: {kind: http, url: 'http://x', headers: {A: '{{ keychain.api.token }}'}}\n"
    )
    assert errors(body) == []
    playbook = load_text(HEADER + body)
    assert [(e.name, e.credential) for e in playbook.keychain] == [
        ("api", "stored_api"),
        ("pg", None),
    ]


def test_tool_args_as_a_template_string_is_an_error() -> None:
    # Layered over the step's args when it runs, a string could only crash the engine.
    body = (
        'workflow:\n  - step: start\n    tool: {kind: python, args: "{{ workload.a }}", code: x}\n'
    )
    assert errors(body) == ["pb.yaml:7:32: `args` must be a mapping, got a string"]
