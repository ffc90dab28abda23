"""`cancel`, `restart --from` and `--timeout` as a user runs them: the real command line in a
subprocess, against one mesh shared by the module."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import Settings
from tests.integration.conftest import events_by_type, run
from tests.support.cli import cli
from tests.support.playbooks import write_playbook

SLEEPY = """
    - step: start
      tool: {kind: python, code: "import time\\ntime.sleep(60)"}
      next: [after]
    - step: after
      tool: {kind: python, code: "result = 1"}
"""


async def noetl(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread, so the mesh in this process keeps running meanwhile."""
    return await asyncio.to_thread(cli, settings, *args)


async def test_cancel_a_running_execution(
    module_settings: Settings, module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    await module_client.register(write_playbook(tmp_path, "sleepy_cancel", SLEEPY))
    started = await noetl(module_settings, "execute", "sleepy_cancel", "--json")
    assert started.returncode == 0, started.stderr
    eid = json.loads(started.stdout)["execution_id"]
    async with asyncio.timeout(30):
        while "command.started" not in await events_by_type(module_client, eid):
            await asyncio.sleep(0.1)
    cancelled = await noetl(module_settings, "cancel", eid, "--reason", "wrong input", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    doc = json.loads(cancelled.stdout)
    assert doc["status"] == "cancelled"
    assert doc["error"]["message"] == "wrong input"
    assert "after" not in doc["steps"]


async def test_restart_from_a_step_with_a_changed_workload(
    module_settings: Settings,
    module_client: Client,
    module_mesh: Mesh,
    tmp_path: Path,
    shared_path: Path,
) -> None:
    runs = shared_path / "start_runs"
    path = write_playbook(
        tmp_path,
        "fragile_cli",
        f"""
        - step: start
          tool:
            kind: python
            code: |
              from pathlib import Path
              p = Path({str(runs)!r})
              p.write_text(p.read_text() + "x" if p.exists() else "x")
              result = {{"value": 21}}
          next: [scale]
        - step: scale
          tool:
            kind: python
            args: {{value: "{{{{ start.value }}}}", factor: "{{{{ workload.factor }}}}"}}
            code: |
              if factor is None:
                  raise RuntimeError("no factor")
              result = value * int(factor)
    """,
        workload="{factor: null}",
    )
    failed = await run(module_client, path)
    assert failed["status"] == "failed"
    eid = failed["execution_id"]

    again = await noetl(module_settings, "restart", eid, "--from", "scale", "--set", "factor=3")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("63")
    assert runs.read_text() == "x"  # `start` was kept, not run again

    whole = await noetl(
        module_settings, "restart", eid, "--from", "start", "--set", "factor=2", "--json"
    )
    assert whole.returncode == 0, whole.stderr
    doc = json.loads(whole.stdout)
    assert (doc["status"], doc["result"], doc["restarted_from"]) == ("completed", 42, eid)
    assert runs.read_text() == "xx"  # run again from `start`

    unknown = await noetl(module_settings, "restart", eid, "--from", "nope")
    assert unknown.returncode != 0 and "nope" in unknown.stderr


async def test_timeout_bounds_the_whole_execution(
    module_settings: Settings, module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    path = write_playbook(tmp_path, "sleepy_timeout", SLEEPY)
    ran = await noetl(module_settings, "run", str(path), "--timeout", "1", "--json")
    await assert_timed_out(module_client, ran)
    executed = await noetl(
        module_settings, "execute", "sleepy_timeout", "--wait", "--timeout", "1", "--json"
    )
    await assert_timed_out(module_client, executed)


async def assert_timed_out(client: Client, shown: subprocess.CompletedProcess[str]) -> None:
    """The CLI exited 1 with a timeout, and the execution's own timer ended it: failed,
    `after` never started. The CLI shows that end when it comes within the few seconds it
    waits past `--timeout`; a loaded machine can delay the timer past them, and then the
    CLI says it stopped waiting, and the end is read from the store."""
    assert shown.returncode == 1, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["error"]["type"] == "timeout", doc
    if doc["status"] != "failed":
        assert doc["status"] == "running" and "stopped waiting" in doc["error"]["message"], doc
        doc = await client.wait(int(doc["execution_id"]), timeout=120)
    assert doc["status"] == "failed" and doc["error"]["type"] == "timeout", doc
    assert "after" not in doc["steps"]
