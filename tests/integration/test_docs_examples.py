"""Every playbook in the reference documentation validates; those marked `# run:` run on
the mesh and end as the documentation says."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.mesh import Mesh
from noetl import dsl
from noetl.client import Client
from noetl.config import Settings
from plugins.registry import known_kinds

DOCS = Path(__file__).parent.parent.parent / "documentation" / "docs"
BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def playbooks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, block in enumerate(BLOCK.findall(page.read_text())):
            if "apiVersion:" in block:
                found.append((f"{page.relative_to(DOCS)}#{i}", block))
    return found


def runnable() -> list[tuple[str, str, str]]:
    return [
        (name, text, text.splitlines()[0].split(":", 1)[1].strip())
        for name, text in playbooks()
        if text.startswith("# run:")
    ]


def test_there_are_runnable_examples() -> None:
    assert len(runnable()) >= 3


@pytest.mark.parametrize(("name", "text"), playbooks(), ids=[n for n, _ in playbooks()])
def test_documented_playbooks_validate(name: str, text: str) -> None:
    report = dsl.check_text(text, filename=name, known_kinds=known_kinds())
    assert report.errors == [], [str(p) for p in report.errors]


def check_doc_loop(doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert doc["result"] == [
        {"city": "OSLO", "index": 0, "last": False},
        {"city": "LIMA", "index": 1, "last": False},
        {"city": "PUNE", "index": 2, "last": True},
    ]  # in input order, each item seeing `loop`
    assert doc["vars"] == {"names": ["OSLO", "LIMA", "PUNE"]}  # vars ran once, on the list
    assert sum(e["event_type"] == "step.item" for e in events) == 3


def check_doc_retry(doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert doc["result"] == {"ok": True}
    timers = [e["payload"]["action"] for e in events if e["event_type"] == "timer.scheduled"]
    assert timers == ["execution_timeout"]  # metadata.timeout armed; no retry was needed


def check_doc_case(doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert doc["result"] == {"hot": 31}  # the rule fired and routed to `hot` with its args
    assert "mild" not in doc["steps"]  # so `next` did not apply
    assert doc["vars"] == {"temp": 31}  # `set` stored the variable


def check_doc_python(doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert doc["result"] == {"greeting": "Ada, Bob", "as_json": '["ada", "bob"]'}
    completed = [e for e in events if e["event_type"] == "command.completed"]
    assert "got 2 names" in json.dumps(completed)  # printed output kept in the events


def check_doc_duckdb(doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert doc["result"] == [{"region": "north", "total": 17}, {"region": "south", "total": 5}]
    [step] = [e for e in events if e["event_type"] == "step.completed"]
    assert step["payload"]["sink"] == {"rows": 2}  # the event_log sink got both rows


#: What each `# run:` example must end with, beyond its status: every example has one.
OUTCOMES: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], None]] = {
    "doc_loop": check_doc_loop,
    "doc_retry": check_doc_retry,
    "doc_case": check_doc_case,
    "doc_python": check_doc_python,
    "doc_duckdb": check_doc_duckdb,
}


@pytest.mark.parametrize(
    ("name", "text", "expected"), runnable(), ids=[n for n, _, _ in runnable()]
)
async def test_documented_examples_run(
    module_client: Client, module_mesh: Mesh, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(text)
    reply = await module_client.register(path)
    assert reply.path in OUTCOMES, f"{name}: add the outcome of `{reply.path}` to OUTCOMES"
    doc = await module_client.wait(await module_client.start(reply.path), timeout=60)
    assert doc["status"] == expected, doc
    events = await module_client.store.list_events(int(doc["execution_id"]))
    OUTCOMES[reply.path](doc, events)


# --- the command lines of getting-started.md and cli.md ------------------------------------

ROOT = DOCS.parent.parent
SAMPLE_ID = "7399178312712503297"  # the id cli.md's examples use
#: Documented command lines the walk below does not run, by their start, and why.
NOT_RUN = {
    "make run": "creates .venv: the set-up this suite runs in",
    "make test": "the suite itself",
    "source .venv/bin/activate": "the CLI is called by its path",
    "export NOETL_NATS_URL": "servers of the reader's own",
    "export NOETL_PG_DSN": "servers of the reader's own",
    "export NOETL_SERVER_URL": "a remote API of the reader's own",
    "noetl-runtime db init": "test_cli.py::test_db_init_is_idempotent_and_validate_reports",
    "noetl-runtime up": "runs until stopped: tests/fault/test_up.py",
    "curl": "the API: test_api.py",
    "noetl-runtime execute examples/hello_world": (
        "starts the daemons: test_cli_daily.py::test_execute_starts_the_daemons_and_watch_follows"
    ),
    "noetl-runtime server": "daemons: test_cli_server.py",
    "noetl-runtime worker": "daemons: test_cli_server.py",
    "noetl-runtime execution": "a remote API: test_cli_server.py",
    "nats pub": "natscli is not installed here: the Python publisher below does the same",
    "export NATS_URL": "run below with the test's NATS URL",
}


def fenced(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text: (language, text)."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if not line.startswith("```"):
            lines.append(line)
        elif lang is None:
            lang, lines = line[3:].strip(), []
        else:
            blocks.append((lang, "\n".join(lines) + "\n"))
            lang = None
    return blocks


def command_lines(page: str) -> list[str]:
    """The commands of a page's `sh` blocks, comments dropped, continuation lines joined
    (a heredoc is one command)."""
    lines: list[str] = []
    for lang, block in fenced((DOCS / page).read_text()):
        if lang != "sh":
            continue
        if "<<'EOF'" in block:
            lines.append(block.strip())
            continue
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def test_every_documented_command_is_run_or_says_why_not() -> None:
    commands = command_lines("getting-started.md") + command_lines("cli.md")
    others = [c for c in commands if not c.startswith(("noetl-runtime", ".venv/bin/python"))]
    assert [c for c in others if not c.startswith(tuple(NOT_RUN))] == []
    assert [k for k in NOT_RUN if not any(c.startswith(k) for c in commands)] == []


async def test_the_documented_commands_run_as_shown(
    settings: Settings, client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    # Run as a reader would with `noetl-runtime up` running (here: `mesh`).
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env.update(
        NOETL_NATS_URL=str(settings.nats_url),
        NOETL_PG_DSN=str(settings.pg_dsn),
        NOETL_HOME=str(settings.home),
        NATS_URL=str(settings.nats_url),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    shown: dict[str, subprocess.CompletedProcess[str]] = {}
    eid = ""
    for page in ("getting-started.md", "cli.md"):
        for command in command_lines(page):
            if command.startswith(tuple(NOT_RUN)):
                continue
            line = re.sub(r" ID( |$)", rf" {eid}\1", command).replace(SAMPLE_ID, eid)
            line = line.replace(".venv/bin/python", sys.executable, 1)
            done = await asyncio.to_thread(
                subprocess.run,
                ["bash", "-o", "pipefail", "-c", line],
                cwd=tmp_path if "catalog get" in line else ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, (page, line, done.stderr)
            shown[command] = done
            if command.startswith("noetl-runtime run ") and "--json" in command:
                eid = json.loads(done.stdout)["execution_id"]
    hello = "noetl-runtime run tests/fixtures/playbooks/hello_world/hello_world.yaml"
    bonjour = shown[f"{hello} --set message=Bonjour"]
    assert json.loads(bonjour.stdout[bonjour.stdout.index("{") :])["final"] == "Bonjour!"
    printed = (bonjour.stderr + bonjour.stdout).splitlines()
    # `make run`'s output as getting-started shows it, ids and times aside.
    text = (DOCS / "getting-started.md").read_text()
    [sample] = [b for lang, b in fenced(text) if not lang and "▶ start" in b]
    for expected in sample.splitlines():
        if expected.startswith(("execution", "  ▶", "  ✓", "completed")):
            pattern = re.sub(r"\d+(\\\.\d+)?", r"\\d+(\\.\\d+)?", re.escape(expected))
            pattern = pattern.replace("…", ".*").replace(r"\ ms", r"\ m?s")  # 31 ms, 1.2 s
            assert any(re.fullmatch(pattern, p) for p in printed), (expected, printed)
    assert json.loads(sample[sample.index("{") :]) == {"final": "Hello World!", "length": 12}
    # The execution document has the fields cli.md shows, in its order.
    blocks = fenced((DOCS / "cli.md").read_text())
    [documented] = [json.loads(b) for lang, b in blocks if lang == "json" and "execution_id" in b]
    assert list(json.loads(shown[f"{hello} --json"].stdout)) == list(documented)
    piped = f"noetl-runtime result {SAMPLE_ID} --step start | jq .data"
    assert json.loads(shown[piped].stdout) == {"greeting": "Hello World!"}
    assert "start started python (attempt 1)" in shown["noetl-runtime logs ID --step start"].stdout
    assert "examples/hello_world" in (tmp_path / "hello_world.yaml").read_text()
    # The start getting-started publishes from Python ran once, with its workload.
    rows = await client.store.list_executions(limit=20)
    results = [
        (await client.wait(int(r["execution_id"]), timeout=60))["result"]
        for r in rows
        if r["path"] == "examples/hello_world"
    ]
    assert results.count({"final": "Hi!", "length": 3}) == 1
