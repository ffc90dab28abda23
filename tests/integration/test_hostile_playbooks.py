"""Hostile playbooks on a real mesh: each gets a clear error, leaves nothing running and
keeps the event table clean (`db check`)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import msgspec
import pytest

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import assert_db_clean
from tests.integration.conftest import fixture, run
from tests.support.playbooks import write_playbook as write


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small limits, so that hitting them is quick."""
    return msgspec.structs.replace(
        settings, max_depth=3, max_descendants=8, max_loop_items=100, python_memory_mb=256
    )


def recursive(tmp_path: Path, name: str, fanout: int = 2, leaf: str = "") -> Path:
    """A playbook that runs itself `fanout` times per level, `levels` deep (forever without
    a depth limit); with `leaf`, each execution then runs that step."""
    body = f"""
    - step: start
      loop:
        in: "{{{{ range({fanout}) | list if workload.n < workload.levels else [] }}}}"
        iterator: i
        mode: async
      tool:
        kind: playbook
        path: {name}
        args: {{n: "{{{{ workload.n + 1 }}}}", levels: "{{{{ workload.levels }}}}"}}
    """
    if leaf:
        body += "  next: [leaf]\n" + textwrap.indent(leaf, "    ")
    path = write(tmp_path, name, body)
    text = path.read_text().replace("workflow:", "workload: {n: 0, levels: 1000}\nworkflow:", 1)
    path.write_text(text)
    return path


async def assert_nothing_running(client: Client, seconds: float = 30) -> list[dict[str, object]]:
    """Every execution has ended within `seconds`; returns them all."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        rows = await client.store.list_executions(limit=1000)
        running = [r for r in rows if r["status"] == "running"]
        if not running or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not running, running
    return rows


async def test_self_recursion_stops_at_the_depth_limit(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    doc = await run(client, recursive(tmp_path, "recurse", fanout=1), {"levels": 1000})
    assert doc["status"] == "failed"
    rows = await assert_nothing_running(client)
    errors = [await client.store.describe(int(r["execution_id"])) for r in rows]
    depth = [e for e in errors if (e.get("error") or {}).get("type") == "depth"]
    assert depth, errors
    assert "deeper than the limit of 3 (NOETL_MAX_DEPTH)" in depth[0]["error"]["message"]
    # The top, three levels below it, then the refused fourth level.
    assert len(rows) == 5
    await assert_db_clean(client.store)


async def test_live_descendants_are_capped(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    # Within the depth limit, the full tree would have 2 + 4 + 8 descendants: over 8.
    nap = "- step: leaf\n  tool: {kind: python, code: 'import time; time.sleep(2)'}\n"
    doc = await run(client, recursive(tmp_path, "swarm", leaf=nap), {"levels": 3})
    assert doc["status"] == "failed"
    rows = await assert_nothing_running(client)
    described = [await client.store.describe(int(r["execution_id"])) for r in rows]
    capped = [d for d in described if (d.get("error") or {}).get("type") == "descendants"]
    assert capped, described
    assert "NOETL_MAX_DESCENDANTS=8" in capped[0]["error"]["message"]
    await assert_db_clean(client.store)


async def test_a_timed_out_parent_cancels_its_whole_subtree(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    nap = "- step: leaf\n  tool: {kind: python, code: 'import time; time.sleep(120)'}\n"
    await client.register(recursive(tmp_path, "tree", leaf=nap))
    top = write(
        tmp_path,
        "tree_top",
        """
    - step: start
      tool: {kind: playbook, path: tree, args: {n: 1, levels: 3}}
    """,
        metadata=", timeout: 3",
    )
    doc = await run(client, top)
    assert doc["status"] == "failed" and doc["error"]["type"] == "timeout", doc
    rows = await assert_nothing_running(client)
    # The top and up to 1 + 2 + 4 executions of the tree (fewer if the timeout came
    # first): every one of the subtree cancelled, or refused at its start once its parent
    # had ended.
    subtree = [
        await client.store.describe(int(r["execution_id"]))
        for r in rows
        if r["execution_id"] != doc["execution_id"]
    ]
    assert 1 <= len(subtree) <= 7
    for child in subtree:
        assert child["status"] == "cancelled" or child["error"]["type"] == "cancelled", child
    await assert_db_clean(client.store)


async def test_a_loop_over_too_many_items_fails_its_step(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "huge_loop",
        """
    - step: start
      loop: {in: "{{ range(100000) | list }}", iterator: i}
      tool: {kind: python, code: "result = 1"}
    """,
    )
    doc = await run(client, path)
    assert doc["status"] == "failed"
    assert (
        "100,000 items, more than the limit of 100 (NOETL_MAX_LOOP_ITEMS)"
        in (doc["error"]["message"])
    )
    events = await client.store.list_events(int(doc["execution_id"]))
    assert not [e for e in events if e["event_type"] == "command.issued"]
    await assert_db_clean(client.store)


async def test_a_200_mb_template_fails_its_step(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    huge = "{% for i in range(100000) %}{{ 'x' * 2000 }}{% endfor %}"
    path = write(
        tmp_path,
        "huge_text",
        f"""
    - step: start
      tool: {{kind: python, args: {{s: "{huge}"}}, code: "result = len(s)"}}
    """,
    )
    doc = await run(client, path)
    assert doc["status"] == "failed"
    assert "16,777,216" in doc["error"]["message"], doc["error"]
    await assert_db_clean(client.store)


# The step's timeout is what ends `spin`; the others must end by their own cause first,
# which load only delays: their timeout is set far past anything load stretches them to.
@pytest.mark.parametrize(
    ("code", "timeout", "reason"),
    [
        ("import os\\nos._exit(3)", 60, "exit code 3"),
        ("while True:\\n    pass", 3, "timeout"),
        ("x = []\\nwhile True:\\n    x.append(bytearray(2**24))", 60, "memory"),
    ],
    ids=["os_exit", "spin", "allocate"],
)
async def test_python_that_dies_fails_its_step_and_the_pool_recovers(
    client: Client, mesh: Mesh, tmp_path: Path, code: str, timeout: int, reason: str
) -> None:
    path = write(
        tmp_path,
        "dies",
        f"""
    - step: start
      timeout: {timeout}
      tool: {{kind: python, code: "{code}"}}
    """,
    )
    doc = await run(client, path)
    assert doc["status"] == "failed"
    error = doc["error"]
    assert reason in f"{error['type']} {error['message']}".lower(), error
    after = await run(client, fixture("hello_world"))
    assert after["status"] == "completed", after
    await assert_db_clean(client.store)
