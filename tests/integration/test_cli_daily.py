"""Living with executions from the command line: what `run` shows and does on Ctrl-C, the
views (`logs`, `watch`, `status`, `result`, `list`, `playbooks`), `execute` starting the
daemons it needs, and clean errors. Real subprocesses (a pseudo-terminal where a person
would press keys) against real NATS and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pexpect

from noetl.config import Settings
from noetl.local import free_port
from tests.integration.conftest import fixture
from tests.support.cli import CLI, cli, cli_env

# `run` names its execution in bold.
EXECUTION = r"execution (?:\x1b\[1m)?(\d+)"

SLOW = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: {name}, path: tests/{name}}}
workflow:
  - step: start
    tool:
      kind: python
      code: |
        import time
        time.sleep({seconds})
        result = {seconds}
"""

VIEW = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: view, path: tests/view}
workload: {items: [1, 2, 3, 4, 5, 6, 7, 8]}
workflow:
  - step: start
    loop: {in: "{{ workload.items }}", iterator: n, mode: async, max_concurrency: 4}
    tool:
      kind: python
      args: {n: "{{ n }}"}
      code: |
        print("item", n)
        result = n * 10
    next: [flaky]
  - step: flaky
    retry: {max_attempts: 3, delay: 0.2}
    tool:
      kind: python
      code: |
        def explode():
            raise RuntimeError("always fails")
        explode()
"""


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return cli_env(settings, NO_COLOR="1", **extra)


def terminal(settings: Settings, *args: str, **extra: str) -> pexpect.spawn:
    return pexpect.spawn(
        CLI, list(args), env=env_of(settings, **extra), encoding="utf-8", timeout=90
    )


def slow(tmp_path: Path, name: str, seconds: float) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SLOW.format(name=name, seconds=seconds))
    return path


def test_ctrl_c_cancels_the_execution(settings: Settings, tmp_path: Path) -> None:
    child = terminal(settings, "run", str(slow(tmp_path, "slow", 120)))
    child.expect(EXECUTION)
    eid = child.match.group(1)
    child.expect("▶ start")
    child.sendintr()
    child.expect("cancelling execution")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "cancelled" in str(child.before)
    done = cli(settings, "status", eid, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "cancelled"


def test_second_ctrl_c_detaches_at_once(settings: Settings, tmp_path: Path) -> None:
    # A mesh of its own runs the execution; stopped, it cannot act on the cancellation, so
    # only a detach can end `run`.
    mesh = subprocess.Popen(
        [CLI, "up", "--role", "catalog", "--role", "coordinator", "--role", "runner"],
        env=env_of(settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert mesh.stderr is not None
        while "mesh up" not in mesh.stderr.readline():
            assert mesh.poll() is None
        child = terminal(settings, "run", str(slow(tmp_path, "held", 120)))
        child.expect(EXECUTION)
        eid = child.match.group(1)
        child.expect("▶ start")
        mesh.send_signal(signal.SIGSTOP)
        child.sendintr()
        child.expect("cancelling execution")
        child.sendintr()
        child.expect("detached from execution")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 130
        assert f"noetl-runtime restart {eid}" in str(child.before)
        mesh.send_signal(signal.SIGCONT)
        # The recorded cancellation is acted on once a coordinator runs again.
        ended = cli(settings, "cancel", eid, "--json")
        assert json.loads(ended.stdout)["status"] == "cancelled"
    finally:
        mesh.send_signal(signal.SIGCONT)
        mesh.terminate()
        mesh.wait(60)


def test_run_view_logs_status_and_results(settings: Settings, tmp_path: Path) -> None:
    playbook = tmp_path / "view.yaml"
    playbook.write_text(VIEW)
    done = cli(settings, "run", str(playbook))
    assert done.returncode == 1
    assert "▶ start 8 items" in done.stderr
    assert "✓ start 8/8" in done.stderr
    assert "retry 2/3 in 0.2 s" in done.stderr and "retry 3/3" in done.stderr
    eid = json.loads(cli(settings, "list", "--json").stdout)[0]["execution_id"]

    logs = cli(settings, "logs", eid, "--step", "start")
    assert logs.returncode == 1
    assert "start | item 3" in logs.stdout
    failed = cli(settings, "logs", eid, "--step", "flaky").stdout
    assert "started python (attempt 3)" in failed
    assert 'raise RuntimeError("always fails")' in failed and "in explode" in failed
    assert "retry: attempt 2" in failed and "| item" not in failed

    status = cli(settings, "status", eid)
    assert status.returncode == 1
    rows = [line.split("\t") for line in status.stdout.splitlines() if "\t" in line]
    assert rows[0] == ["step", "status", "progress", "duration", "ran", "retries", "result"]
    by_step = {row[0]: row for row in rows[1:]}
    assert by_step["start"][1:3] == ["completed", "8/8"]
    assert by_step["flaky"][1] == "failed" and by_step["flaky"][5] == "2"
    states = json.loads(cli(settings, "status", eid, "--json").stdout)["step_states"]
    assert [s["step"] for s in states] == ["start", "flaky"]

    result = cli(settings, "result", eid, "--step", "start")
    assert json.loads(result.stdout) == [10, 20, 30, 40, 50, 60, 70, 80]
    missing = cli(settings, "result", eid, "--step", "nope")
    assert missing.returncode == 1 and "steps with one: start" in missing.stderr

    assert cli(settings, "run", str(fixture("hello_world"))).returncode == 0
    only = json.loads(cli(settings, "list", "--status", "failed", "--json").stdout)
    assert [r["execution_id"] for r in only] == [eid]
    assert only[0]["duration_seconds"] > 0
    listed = cli(settings, "list", "--path", "examples/*").stdout.splitlines()
    assert listed[0].split("\t")[:5] == ["execution_id", "path", "version", "status", "duration"]
    assert [line.split("\t")[1] for line in listed[1:]] == ["examples/hello_world"]
    books = cli(settings, "playbooks").stdout.splitlines()
    assert [line.split("\t")[0] for line in books[1:]] == ["examples/hello_world", "tests/view"]


def test_run_view_shows_child_executions(settings: Settings) -> None:
    assert cli(settings, "register", str(fixture("composition_child"))).returncode == 0
    done = cli(settings, "run", str(fixture("composition_parent")))
    assert done.returncode == 0, done.stderr
    children = [line for line in done.stderr.splitlines() if "↳ child execution" in line]
    assert any("examples/lib/score_user" in c and "completed" in c for c in children)


def test_run_leaves_an_orphaned_execution_to_the_next_mesh(
    settings: Settings, tmp_path: Path
) -> None:
    orphan = terminal(settings, "run", str(slow(tmp_path, "orphan", 60)))
    orphan.expect(EXECUTION)
    orphaned = orphan.match.group(1)
    orphan.expect("▶ start")
    orphan.kill(signal.SIGKILL)
    orphan.close(force=True)
    began = time.monotonic()
    # Long enough for the orphan's command to be delivered again (ack wait 2 s) meanwhile.
    done = cli(settings, "run", str(slow(tmp_path, "mine", 8)))
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert f"also running commands of execution {orphaned}" in done.stderr
    assert f"leaving the commands of execution {orphaned}" in done.stderr
    assert took < 45, "it waited for the orphan's 60 s step"


def test_execute_starts_the_daemons_and_watch_follows(settings: Settings, tmp_path: Path) -> None:
    port = str(free_port())
    assert cli(settings, "register", str(slow(tmp_path, "watched", 3))).returncode == 0
    try:
        started = subprocess.run(
            [CLI, "execute", "tests/watched", "--json"],
            env=env_of(settings, NOETL_API_PORT=port),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert started.returncode == 0, started.stderr
        assert "started the noetl server" in started.stderr
        assert "started noetl worker default" in started.stderr
        doc = json.loads(started.stdout)
        assert doc["status"] == "started"
        watch = terminal(settings, "watch", doc["execution_id"])
        watch.expect("✓ start")
        watch.expect("completed tests/watched")
        watch.expect(pexpect.EOF)
        watch.close()
        assert watch.exitstatus == 0
        assert cli(settings, "status", doc["execution_id"]).returncode == 0
    finally:
        cli(settings, "worker", "stop", "--force")
        cli(settings, "server", "stop", "--force")


def test_clean_edges(settings: Settings) -> None:
    huge = str(2**64)
    for args in (
        ("status", huge),
        ("events", huge),
        ("cancel", huge),
        ("restart", huge),
        ("logs", "12ab"),
        ("list", "--limit", "-1"),
    ):
        done = cli(settings, *args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    ran = json.loads(cli(settings, "run", str(fixture("hello_world")), "--json").stdout)
    events = json.loads(cli(settings, "events", ran["execution_id"], "--json").stdout)
    assert all(isinstance(e["event_id"], str) and int(e["event_id"]) > 2**53 for e in events)
    table = cli(settings, "events", ran["execution_id"]).stdout.splitlines()
    assert [line.split("\t")[0] for line in table[1:]] == [e["event_id"] for e in events]
    # Started with no mesh running (NoETL's `execution start` returns at once): queued.
    started = json.loads(
        cli(settings, "execution", "start", "examples/hello_world", "--json").stdout
    )
    waiting = cli(settings, "status", started["execution_id"], "--json")
    assert waiting.returncode == 0, waiting.stderr
    assert json.loads(waiting.stdout)["status"] == "queued"


BOOM = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: boom, path: tests/boom}
workflow:
  - step: start
    tool:
      kind: python
      code: |
        total = 0
        for n in range(3):
            total += 10 / (n - 2)
        result = total
"""


def test_a_python_error_names_the_playbook_line(settings: Settings, tmp_path: Path) -> None:
    playbook = tmp_path / "boom.yaml"
    playbook.write_text(BOOM)
    done = cli(settings, "run", str(playbook))
    assert done.returncode == 1
    where = "(at tests/boom@1:11)"  # the code's 3rd line is the file's 11th
    assert f"ZeroDivisionError: division by zero {where}" in done.stderr
    eid = json.loads(cli(settings, "list", "--json", "--path", "tests/boom").stdout)[0]
    status = cli(settings, "status", eid["execution_id"])
    assert status.returncode == 1 and where in status.stdout + status.stderr
    logs = cli(settings, "logs", eid["execution_id"]).stdout
    assert 'File "tests/boom@1", line 11, in <module>' in logs
    assert "total += 10 / (n - 2)" in logs and "<step code>" not in logs
