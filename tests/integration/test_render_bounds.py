"""Templates written to spin, on a real mesh: each fails its step as `render_timeout` once
NOETL_RENDER_TIMEOUT has passed, and another execution on the same mesh makes progress
meanwhile (the coordinator decides, and the runner renders tool blocks, off the loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from actors.coordinator import CoordinatorHost
from actors.mesh import Mesh
from actors.runner import Runner
from noetl.client import Client
from noetl.config import Settings
from noetl.errors import ExecutionNotFound
from noetl.render_limits import DEFAULT_TIME_LIMIT, set_time_limit
from tests.support.playbooks import write_playbook as write

# About 10**10 loop iterations: hours, without a deadline.
SPIN = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
CLOSED_PORT = "http://127.0.0.1:9/never"  # never reached: the step fails before its call
HOSTILE = {
    # where the template is: the playbook's steps
    "when": f"""
    - step: start
      next:
        - when: "{SPIN}"
          then: [{{step: after}}]
    - step: after
    """,
    "vars": f"""
    - step: start
      vars: {{x: "{SPIN}"}}
    """,
    "args": f"""
    - step: start
      tool: {{kind: http, url: "{CLOSED_PORT}", args: {{x: "{SPIN}"}}}}
    """,
    "loop_in": f"""
    - step: start
      loop: {{in: "{SPIN}", iterator: i}}
      tool: {{kind: http, url: "{CLOSED_PORT}"}}
    """,
    "tool_block": f"""
    - step: start
      tool: {{kind: http, url: "{SPIN}"}}
    """,
}
# Long enough that, on a loaded machine where six spinning threads share the GIL with the
# event loop, the calm execution still ends before any spinning template is stopped.
TIMEOUT = 20.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, render_timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def _default_time_limit_after() -> object:
    yield None
    set_time_limit(DEFAULT_TIME_LIMIT)


async def status(client: Client, execution_id: str) -> str:
    """The execution's status; `deciding` while its first decision is not committed."""
    try:
        return str((await client.store.describe(int(execution_id)))["status"])
    except ExecutionNotFound:
        return "deciding"


async def start(client: Client, path: Path) -> str:
    reply = await client.register(path)
    return await client.start(reply.path, version=reply.version)


async def test_spinning_templates_fail_their_step_and_others_progress(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    hostile = {
        where: await start(client, write(tmp_path, f"spin_{where}", body))
        for where, body in HOSTILE.items()
    }
    # A playbook without a template decides on the loop, unless its start brings one.
    plain = await client.register(write(tmp_path, "spin_workload", "- step: start\n"))
    hostile["workload"] = await client.start(plain.path, workload={"x": SPIN})
    await asyncio.sleep(0.3)  # the hostile decisions and renders are under way
    calm = write(tmp_path, "calm", "- step: start\n  next: [{step: second}]\n- step: second\n")
    done = await client.wait(await start(client, calm), timeout=60)
    assert done["status"] == "completed", done
    # Progress while the templates spin: none of them has ended yet (with the decisions on
    # the coordinator's loop, the calm one would wait for all but the runner's to end).
    still = {where: await status(client, eid) for where, eid in hostile.items()}
    assert set(still.values()) <= {"running", "deciding"}, still
    for where, eid in hostile.items():
        doc = await client.wait(eid, timeout=120)
        assert doc["status"] == "failed", (where, doc)
        error = doc["error"]
        assert error["type"] == "render_timeout", (where, error)
        assert f"ran longer than {TIMEOUT:g} s (NOETL_RENDER_TIMEOUT)" in error["message"]


async def test_work_without_templates_is_done_on_the_loop(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    coordinator = next(a for a in mesh.actors if isinstance(a, CoordinatorHost))
    runner = next(a for a in mesh.actors if isinstance(a, Runner))
    chain = """
    - step: start
      tool: {kind: python, code: "result = 1"}
      next: [second]
    - step: second
      tool: {kind: python, code: "result = 2"}
    """
    done = await client.wait(await start(client, write(tmp_path, "plain", chain)), timeout=60)
    assert done["status"] == "completed", done["error"]
    assert done["steps"] == {"start": 1, "second": 2}
    assert (coordinator.deciding.hops, runner.render_hops) == (0, 0)
    # Plain lookups cannot spin: the coordinator decides them on the loop too.
    lookups = """
    - step: start
      tool: {kind: python, args: {n: "{{ workload.n }}"}, code: "result = n * 2"}
    """
    reply = await client.register(write(tmp_path, "lookups", lookups))
    eid = await client.start(reply.path, version=reply.version, workload={"n": 5})
    done = await client.wait(eid, timeout=60)
    assert done["status"] == "completed" and done["steps"]["start"] == 10, done
    assert coordinator.deciding.hops == 0
    rendered = runner.render_hops  # the runner renders that tool block in a thread
    # A template anywhere in the playbook (here a tool's args): every decision and that
    # tool block go through a thread.
    templated = """
    - step: start
      tool: {kind: python, args: {n: "{{ 20 + 1 }}"}, code: "result = n * 2"}
    """
    done = await client.wait(await start(client, write(tmp_path, "tmpl", templated)), timeout=60)
    assert done["status"] == "completed" and done["steps"]["start"] == 42, done
    assert coordinator.deciding.hops >= 2 and runner.render_hops == rendered + 1
