"""The example playbooks: every valid one loads, every broken one fails as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from noetl.dsl import Graph, check_file, load_file
from noetl.errors import PlaybookError

PLAYBOOKS = Path(__file__).parents[1] / "fixtures" / "playbooks"
VALID = sorted(p for p in PLAYBOOKS.glob("*/*.yaml") if p.parent.name != "broken")
BROKEN = PLAYBOOKS / "broken"


def test_fixtures_are_present() -> None:
    assert len(VALID) >= 9
    assert {p.name for p in BROKEN.glob("*.yaml")} == {
        "bad_template.yaml",
        "missing_start.yaml",
        "unknown_next.yaml",
    }


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_fixture_loads_without_problems(path: Path) -> None:
    report = check_file(path)
    assert report.errors == []
    assert report.warnings == []
    playbook = load_file(path)
    assert playbook.metadata.name
    assert playbook.step("start").step == "start"
    assert Graph.of(playbook).unreachable() == set()


def test_bad_template() -> None:
    report = check_file(BROKEN / "bad_template.yaml")
    assert report.playbook is None
    [problem] = report.errors
    assert problem.line == 8
    assert "Jinja2 syntax error" in problem.message
    assert str(problem).startswith(f"{BROKEN / 'bad_template.yaml'}:8:")


def test_missing_start() -> None:
    [problem] = check_file(BROKEN / "missing_start.yaml").errors
    assert (problem.line, problem.col) == (6, 1)
    assert "`start`" in problem.message


def test_unknown_next() -> None:
    report = check_file(BROKEN / "unknown_next.yaml")
    [problem] = report.errors
    assert str(problem) == (
        f"{BROKEN / 'unknown_next.yaml'}:10:15: "
        "`next` names unknown step `finsh` (did you mean `finish`?)"
    )
    # `finish` is then unreachable, which is only a warning.
    assert [str(w).split(": ", 1)[1] for w in report.warnings] == [
        "warning: step `finish` is not reachable from `start`"
    ]


def test_load_file_raises_with_every_problem() -> None:
    with pytest.raises(PlaybookError) as caught:
        load_file(BROKEN / "unknown_next.yaml")
    assert caught.value.problems == [
        f"{BROKEN / 'unknown_next.yaml'}:10:15: "
        "`next` names unknown step `finsh` (did you mean `finish`?)"
    ]


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    [problem] = check_file(missing).errors
    assert (problem.file, problem.line, problem.col) == (str(missing), 1, 1)
    assert "cannot read" in problem.message


def test_control_flow_workbook_model() -> None:
    playbook = load_file(PLAYBOOKS / "control_flow_workbook" / "control_flow_workbook.yaml")
    assert playbook.task("compute_flag").tool["kind"] == "python"
    assert playbook.step("eval_flag").args == {"temperature_c": "{{ workload.temperature_c }}"}
    assert playbook.catalog_path == "examples/control_flow_workbook"
    assert playbook.has_end
