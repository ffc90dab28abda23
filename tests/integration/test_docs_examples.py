"""Every playbook in the reference documentation validates; those marked `# run:` run on
the mesh and end as the documentation says."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.mesh import Mesh
from noetl import dsl
from noetl.client import Client
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
