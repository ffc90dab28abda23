"""The command line as a user runs it: a real subprocess against real services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noetl.config import Settings
from tests.integration.conftest import FIXTURES, fixture
from tests.support.cli import cli


def test_run_json_prints_the_execution_document(settings: Settings) -> None:
    done = cli(settings, "run", str(fixture("hello_world")), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "completed"
    assert doc["result"] == {"final": "Hello World!", "length": 12}
    assert set(doc) >= {
        "execution_id",
        "path",
        "version",
        "status",
        "result",
        "steps",
        "vars",
        "error",
        "started_at",
        "ended_at",
    }
    assert doc["vars"] == {"greeting": "Hello World!"}

    status = cli(settings, "status", doc["execution_id"], "--json")
    assert json.loads(status.stdout)["result"] == doc["result"]
    events = json.loads(cli(settings, "events", doc["execution_id"], "--json").stdout)
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "execution.started" and kinds[-1] == "execution.completed"
    assert set(events[0]) == {
        "event_id",
        "event_type",
        "step",
        "command_id",
        "status",
        "payload",
        "error",
        "created_at",
    }
    listed = json.loads(cli(settings, "list", "--json").stdout)
    assert [r["execution_id"] for r in listed] == [doc["execution_id"]]


def test_run_shows_steps_and_exit_code_of_failure(settings: Settings, tmp_path: Path) -> None:
    done = cli(settings, "run", str(fixture("hello_world")), "--set", "message=Hey")
    assert done.returncode == 0, done.stderr
    assert "start" in done.stderr and "end" in done.stderr
    assert "Hey!" in done.stdout
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: failing}\nworkflow:\n"
        "  - step: start\n    tool: {kind: python, code: 'raise RuntimeError(\"nope\")'}\n"
    )
    failed = cli(settings, "run", str(failing), "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "failed"


def test_register_then_execute_wait(settings: Settings) -> None:
    registered = cli(settings, "register", str(fixture("hello_world")), "--json")
    assert registered.returncode == 0, registered.stderr
    entry = json.loads(registered.stdout)
    assert entry == {"path": "examples/hello_world", "version": 1, "created": True}
    again = json.loads(cli(settings, "register", str(fixture("hello_world")), "--json").stdout)
    assert again["version"] == 1 and again["created"] is False
    done = cli(
        settings,
        "execute",
        "examples/hello_world",
        "--wait",
        "--json",
        "--workload",
        '{"message": "Yo"}',
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["final"] == "Yo!"


@pytest.mark.parametrize(
    "name,where,words",
    [
        ("bad_template", ":8:", "Jinja2"),
        ("missing_start", "", "start"),
        ("unknown_next", ":10:", "did you mean `finish`"),
    ],
)
def test_broken_playbooks_never_reach_the_mesh(
    settings: Settings, name: str, where: str, words: str
) -> None:
    path = FIXTURES / "broken" / f"{name}.yaml"
    validated = cli(settings, "validate", str(path))
    assert validated.returncode == 2
    assert str(path) + where in validated.stderr
    assert words in validated.stderr
    ran = cli(settings, "run", str(path))
    assert ran.returncode == 2
    assert words in ran.stderr


def test_validate_accepts_the_good_fixtures_even_strictly(settings: Settings) -> None:
    files = sorted(str(p) for p in FIXTURES.glob("*/*.yaml") if p.parent.name != "broken")
    assert len(files) == 9
    done = cli(settings, "validate", "--strict", *files)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [f"{file}: valid" for file in files]


def test_db_init_is_idempotent_and_validate_reports(settings: Settings) -> None:
    first = cli(settings, "db", "init")
    assert first.returncode == 0, first.stderr
    second = cli(settings, "db", "init")
    assert "up to date" in second.stderr
    assert cli(settings, "db", "validate").returncode == 0


def test_usage_errors_exit_2(settings: Settings) -> None:
    assert cli(settings, "status", "not-a-number").returncode == 2
    assert cli(settings, "run", str(fixture("hello_world")), "--workload", "[1]").returncode == 2


LOOSE = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loose, labels: {team: data}}
workflow:
  - step: start
    desc: first
    desc: second
    assert: {expected: 1}
    tool: {kind: python, code: "result = 1", pool: big}
"""


def test_validate_lists_findings_in_file_order_then_a_count(
    settings: Settings, tmp_path: Path
) -> None:
    playbook = tmp_path / "loose.yaml"
    playbook.write_text(LOOSE)
    done = cli(settings, "validate", str(playbook))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line.split(":")[1] for line in lines[:-1]] == ["6", "8", "9"]
    assert all(": warning: " in line for line in lines[:-1])
    assert lines[-1] == f"{playbook}: valid, 3 warnings"

    strict = cli(settings, "validate", "--strict", str(playbook))
    assert strict.returncode == 2
    lines = strict.stderr.strip().splitlines()
    assert lines[-1] == f"{playbook}: 3 errors"
    assert not any("warning:" in line for line in lines)


def test_validate_reports_python_syntax_errors_at_their_file_line(
    settings: Settings, tmp_path: Path
) -> None:
    playbook = tmp_path / "broken_code.yaml"
    playbook.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: b}\nworkflow:\n"
        "  - step: start\n    tool:\n      kind: python\n      code: |\n"
        "        x = 1\n        if x\n            result = 2\n"
    )
    done = cli(settings, "validate", str(playbook))
    assert done.returncode == 2
    assert f"{playbook}:10:13: Python syntax error in `code`: expected ':'" in done.stderr


def test_warnings_never_stop_a_run(settings: Settings, tmp_path: Path) -> None:
    playbook = tmp_path / "loose.yaml"
    playbook.write_text(LOOSE)
    done = cli(settings, "run", str(playbook), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == 1
    first = done.stderr.strip().splitlines()[0]
    assert first == f"{playbook}: valid, 3 warnings (it runs; `validate --strict` would refuse it)"
