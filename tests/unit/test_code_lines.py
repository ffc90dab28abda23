"""Where python code's lines sit in the playbook file, in every YAML scalar style, and the
worker's errors naming those lines (issue 11)."""

from __future__ import annotations

import pytest

from noetl import dsl
from noetl.engine.plan import compile_plan
from noetl.messages import CodeLines
from plugins.base import ToolContext
from plugins.python import PythonTool
from plugins.python_worker import Origin, Request, run

HEAD = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: t, path: t}
workflow:
  - step: start
    tool:
      kind: python
"""

# Each style holds the same three lines of code; the third raises.
STYLES = {
    "literal": "      code: |\n        x = 1\n        y = 2\n        z = 1 / 0\n",
    "literal_strip_indent": "      code: |2-\n        x = 1\n        y = 2\n        z = 1 / 0\n",
    "folded": "      code: >\n        x = 1\n\n        y = 2\n\n        z = 1 / 0\n",
    "folded_more_indented": (
        "      code: >-\n        if True:\n          y = 2\n        z = 1 / 0\n"
    ),
    "double_quoted_one_line": '      code: "x = 1\\ny = 2\\nz = 1 / 0"\n',
    "double_quoted_escaped_breaks": (
        '      code: "x = 1\\n\\\n        y = 2\\n\\\n        z = 1 / 0"\n'
    ),
    "single_quoted": "      code: 'x = 1\n\n        y = 2\n\n        z = 1 / 0'\n",
    "plain": "      code: x = 1\n\n        y = 2\n\n        z = 1 / 0\n",
    "value_on_next_line": '      code:\n        "x = 1\\ny = 2\\nz = 1 / 0"\n',
}


def lines_of(text: str) -> tuple[str, CodeLines]:
    playbook, found = dsl.load_with_lines(text, filename="pb.yaml")
    tool = playbook.workflow[0].tool
    assert tool is not None
    return tool["code"], found[("workflow", 0, "tool", "code")]


@pytest.mark.parametrize("style", STYLES)
def test_every_code_line_maps_to_the_file_line_holding_it(style: str) -> None:
    text = HEAD + STYLES[style]
    code, where = lines_of(text)
    file_lines = text.splitlines()
    code_lines = code.splitlines()
    assert len(code_lines) == 3 and code_lines[-1].strip() == "z = 1 / 0"
    assert where.file == "pb.yaml"
    for n, line in enumerate(code_lines, 1):
        assert line.strip() in file_lines[where.line_of(n) - 1], (n, where)
    assert where.line_of(3) == next(
        i for i, line in enumerate(file_lines, 1) if "z = 1 / 0" in line
    )


def test_a_literal_block_maps_linearly_without_a_list() -> None:
    _, where = lines_of(HEAD + STYLES["literal"])
    assert where == CodeLines(file="pb.yaml", first=9)


def test_a_flow_mapping_falls_back_to_the_value_line() -> None:
    text = HEAD.replace("    tool:\n      kind: python\n", "") + (
        '    tool: {kind: python, code: "x = 1\\nz = 1 / 0"}\n'
    )
    _, where = lines_of(text)
    assert where.line_of(2) == 6


def test_workbook_and_iterator_tasks_carry_their_own_lines() -> None:
    text = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: t, path: t}
workbook:
  - name: other
    tool: {kind: python, code: "result = 0"}
  - name: task
    tool:
      kind: python
      code: |
        x = 1
        raise ValueError(x)
workflow:
  - step: start
    tool: {kind: workbook, name: task}
    next: [each]
  - step: each
    tool:
      kind: iterator
      collection: [1, 2]
      element: n
      task:
        kind: python
        code: |
          result = n
"""
    playbook, found = dsl.load_with_lines(text, filename="pb.yaml")
    plan = compile_plan(playbook, 1, {}, found)
    start, each = plan.steps["start"].call, plan.steps["each"].call
    assert start is not None and each is not None
    assert start.code_lines == CodeLines(file="pb.yaml", first=11)
    assert each.code_lines == CodeLines(file="pb.yaml", first=25)


def test_validate_names_the_file_line_of_a_syntax_error_in_folded_code() -> None:
    body = "      code: >\n        x = 1\n\n        y = (\n"
    report = dsl.check_text(HEAD + body, filename="pb.yaml")
    assert [(p.line, p.message) for p in report.errors] == [
        (11, "Python syntax error in `code`: '(' was never closed")
    ]


def test_the_worker_names_file_lines_in_the_traceback() -> None:
    code = "x = 1\ndef f():\n    return 1 / 0\nf()\n"
    reply = run(Request(code=code, args={}, libs={}, origin=Origin("pb.yaml", 9)))
    assert not reply.ok and reply.where == "pb.yaml:11"
    assert 'File "pb.yaml", line 12, in <module>\n    f()' in reply.traceback
    assert 'File "pb.yaml", line 11, in f\n    return 1 / 0' in reply.traceback
    assert "<step code>" not in reply.traceback


def test_the_worker_maps_folded_lines_and_chained_exceptions() -> None:
    code = "x = 1\ntry:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('no') from e\n"
    origin = Origin("pb.yaml", 8, [8, 9, 10, 12, 13])
    reply = run(Request(code=code, args={}, libs={}, origin=origin))
    assert reply.where == "pb.yaml:13"
    assert "File \"pb.yaml\", line 10, in <module>\n    {}['k']" in reply.traceback
    assert 'File "pb.yaml", line 13, in <module>' in reply.traceback


def test_the_worker_names_a_script_line_of_a_syntax_error() -> None:
    reply = run(Request(code="x = 1\ny = (\n", args={}, libs={}, origin=Origin("lib/t.py")))
    assert reply.where == "lib/t.py:2"
    assert 'File "lib/t.py", line 2' in reply.traceback


async def test_the_tool_error_names_the_playbook_line_or_the_script() -> None:
    tool = PythonTool(1)
    try:
        ctx = ToolContext(execution_id=1, command_id="c", step="s", timeout=30)
        ctx.code_lines = CodeLines(file="pb.yaml", first=20)
        with pytest.raises(Exception, match=r"ZeroDivisionError: .* \(at pb\.yaml:22\)$") as inline:
            await tool.run(ctx, {"code": "x = 1\ny = 2\nz = 1 / 0\n"})
        assert inline.value.details["at"] == "pb.yaml:22"  # type: ignore[attr-defined]
        ctx = ToolContext(execution_id=1, command_id="c", step="s", timeout=30)
        ctx.code_lines = CodeLines(file="pb.yaml", first=20)
        ctx.files = {"lib/t.py": "x = 1\n\nraise KeyError(x)\n"}
        with pytest.raises(Exception, match=r"\(at lib/t\.py:3\)$"):
            await tool.run(ctx, {"script": {"uri": "lib/t.py"}})
    finally:
        await tool.aclose()
