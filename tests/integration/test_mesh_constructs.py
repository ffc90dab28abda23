"""Loops, retries, timeouts, sub-playbooks and cancellation on a real mesh."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import (
    fixture,
    run,
)
from tests.integration.shared_mesh import shared_client, shared_mesh  # noqa: F401
from tests.support.playbooks import write_playbook as write


async def event_types(client: Client, execution_id: str) -> Counter[str]:
    rows = await client.store.list_events(int(execution_id))
    return Counter(r["event_type"] for r in rows)


async def test_loop_async_fixture(client: Client, mesh: Mesh) -> None:
    doc = await run(client, fixture("loop_async"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"sum_of_squares": 385, "count": 10}
    assert [r["n"] for r in doc["steps"]["start"]] == list(range(1, 11))
    assert [r["index"] for r in doc["steps"]["start"]] == list(range(10))
    counts = await event_types(client, doc["execution_id"])
    assert counts["step.item"] == 10 and counts["command.completed"] == 11


async def test_composition_parent_and_child(client: Client, mesh: Mesh) -> None:
    await client.register(fixture("composition_child"))
    doc = await run(client, fixture("composition_parent"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"ada": 72, "bob": 50}
    children = [
        r for r in await client.store.list_executions() if r["path"] == "examples/lib/score_user"
    ]
    assert len(children) == 2
    for child in children:
        described = await client.store.describe(int(child["execution_id"]))
        assert described["parent_execution_id"] == doc["execution_id"]


async def test_child_failure_fails_the_parent_step(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    await client.register(
        write(
            tmp_path,
            "broken_child",
            """
        - step: start
          tool: {kind: python, code: 'raise RuntimeError("child broke")'}
    """,
        )
    )
    doc = await run(
        client,
        write(
            tmp_path,
            "parent",
            """
        - step: start
          tool: {kind: playbook, path: broken_child}
    """,
        ),
    )
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "child"
    assert "child broke" in doc["error"]["child_error"]["message"]


async def test_retry_with_backoff_on_the_mesh(
    client: Client, mesh: Mesh, tmp_path: Path, shared_path: Path
) -> None:
    counter = shared_path / "attempts"
    doc = await run(
        client,
        write(
            tmp_path,
            "flaky",
            f"""
        - step: start
          tool:
            kind: python
            code: |
              from pathlib import Path
              p = Path({str(counter)!r})
              n = int(p.read_text()) + 1 if p.exists() else 1
              p.write_text(str(n))
              if n < 3:
                  raise RuntimeError(f"attempt {{n}} failed")
              result = {{"attempts": n}}
          retry: {{max_attempts: 3, delay: 0.2, backoff: 2}}
    """,
        ),
    )
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"attempts": 3}
    counts = await event_types(client, doc["execution_id"])
    assert counts["timer.scheduled"] == 2 and counts["timer.fired"] == 2
    assert counts["command.failed"] == 2


async def test_step_timeout_is_an_error_of_type_timeout(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    doc = await run(
        client,
        write(
            tmp_path,
            "slow",
            """
        - step: start
          timeout: 0.5
          tool: {kind: python, code: "import time\\ntime.sleep(30)"}
    """,
        ),
    )
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "timeout"


async def test_execution_timeout_stops_the_run(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "too_long",
        """
        - step: start
          tool: {kind: python, code: "import time\\ntime.sleep(30)"}
    """,
        metadata=", timeout: 1",
    )
    began = asyncio.get_running_loop().time()
    doc = await run(client, path)
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "timeout"
    assert asyncio.get_running_loop().time() - began < 15


async def test_cancel_stops_a_running_execution(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    reply = await client.register(
        write(
            tmp_path,
            "sleepy",
            """
        - step: start
          tool: {kind: python, code: "import time\\ntime.sleep(30)"}
          next: [after]
        - step: after
          tool: {kind: python, code: "result = 1"}
    """,
        )
    )
    eid = await client.start(reply.path)
    async with asyncio.timeout(20):
        while True:
            rows = await client.store.list_events(eid) if await _exists(client, eid) else []
            if any(r["event_type"] == "command.started" for r in rows):
                break
            await asyncio.sleep(0.05)
    await client.cancel(eid, "enough")
    doc = await client.wait(eid, timeout=20)
    assert doc["status"] == "cancelled"
    assert doc["error"]["message"] == "enough"
    assert "after" not in doc["steps"]
    # The running command was told to stop, so its outcome is recorded as cancelled soon.
    async with asyncio.timeout(10):
        while True:
            rows = await client.store.list_events(eid)
            failed = [r for r in rows if r["event_type"] == "command.failed"]
            if failed:
                assert failed[0]["error"]["type"] == "cancelled"
                break
            await asyncio.sleep(0.1)


async def _exists(client: Client, eid: int) -> bool:
    return bool(
        await client.store.pool.fetchval(
            "SELECT count(*) FROM noetl.execution WHERE execution_id = $1", eid
        )
    )


async def test_restart_from_the_failed_step(
    client: Client, mesh: Mesh, tmp_path: Path, shared_path: Path
) -> None:
    ran = shared_path / "start_runs"
    flag = shared_path / "fixed"
    doc = await run(
        client,
        write(
            tmp_path,
            "fragile",
            f"""
        - step: start
          tool:
            kind: python
            code: |
              from pathlib import Path
              p = Path({str(ran)!r})
              p.write_text(p.read_text() + "x" if p.exists() else "x")
              result = {{"value": 21}}
          next: [double]
        - step: double
          tool:
            kind: python
            args: {{value: "{{{{ start.value }}}}"}}
            code: |
              from pathlib import Path
              if not Path({str(flag)!r}).exists():
                  raise RuntimeError("not fixed yet")
              result = value * 2
    """,
        ),
    )
    assert doc["status"] == "failed"
    flag.write_text("yes")
    new_id = await client.restart(int(doc["execution_id"]))
    again = await client.wait(new_id, timeout=60)
    assert again["status"] == "completed", again
    assert again["result"] == 42
    assert again["restarted_from"] == doc["execution_id"]
    assert again["steps"]["start"] == {"value": 21}
    assert ran.read_text() == "x"  # start did not run again


async def test_large_results_are_stored_once_and_referenced(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    doc = await run(
        client,
        write(
            tmp_path,
            "big",
            """
        - step: start
          tool: {kind: python, code: "result = {'blob': 'x' * 3_000_000, 'n': 1}"}
          next: [measure]
        - step: measure
          tool:
            kind: python
            args: {big: "{{ start }}"}
            code: "result = {'length': len(big['blob']), 'n': big['n']}"
    """,
        ),
    )
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"length": 3_000_000, "n": 1}
    assert len(doc["steps"]["start"]["blob"]) == 3_000_000  # resolved for the reader
    assert await client.store.pool.fetchval("SELECT count(*) FROM noetl.blob") == 1
    largest = await client.store.pool.fetchval(
        "SELECT max(length(payload::text)) FROM noetl.event WHERE execution_id = $1",
        int(doc["execution_id"]),
    )
    assert largest < 10_000  # events hold references, not the value
