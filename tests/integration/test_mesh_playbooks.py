"""The reference playbooks run end to end on the mesh, with their results asserted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import (
    fixture,
    run,
)
from tests.integration.shared_mesh import shared_client, shared_mesh  # noqa: F401


async def step_completions(client: Client, execution_id: str) -> Counter[str]:
    rows = await client.store.list_events(int(execution_id))
    return Counter(r["step"] for r in rows if r["event_type"] == "step.completed")


async def test_hello_world(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("hello_world"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"final": "Hello World!", "length": 12}
    assert doc["vars"] == {"greeting": "Hello World!"}
    assert doc["steps"]["start"]["data"]["greeting"] == "Hello World!"
    assert doc["path"] == "examples/hello_world"
    assert await step_completions(client, doc["execution_id"]) == {"start": 1, "end": 1}


async def test_hello_world_with_workload_override(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("hello_world"), {"message": "Bonjour"})
    assert doc["result"] == {"final": "Bonjour!", "length": 8}


async def test_control_flow_workbook_hot(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("control_flow_workbook"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"ran": ["A", "B"]}
    counts = await step_completions(client, doc["execution_id"])
    assert counts["end"] == 1 and "cold" not in counts


async def test_control_flow_workbook_cold(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("control_flow_workbook"), {"temperature_c": 3})
    assert doc["result"] == {"ran": ["C"]}


async def test_error_routing(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("error_routing"))
    assert doc["status"] == "completed", doc
    assert doc["result"]["recovered"] is True
    assert "boom" in doc["result"]["reason"]
    events = await client.store.list_events(int(doc["execution_id"]))
    failed = [e for e in events if e["event_type"] == "command.failed"]
    assert len(failed) == 1
    error = failed[0]["error"]
    assert error["exception"] == "ValueError"
    assert "boom" in error["message"]
    assert "Traceback" in error["traceback"] or "line" in error["traceback"]


async def test_failing_step_fails_execution_and_runner_carries_on(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    broken = tmp_path / "fails.yaml"
    broken.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: fails}\nworkflow:\n"
        "  - step: start\n    tool: {kind: python, code: 'result = 1 / 0'}\n"
    )
    doc = await run(client, broken)
    assert doc["status"] == "failed"
    assert doc["error"]["step"] == "start"
    assert "ZeroDivisionError" in doc["error"]["message"]
    again = await run(client, fixture("hello_world"))
    assert again["status"] == "completed"
