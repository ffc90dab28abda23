"""A loop over ten million items costs the coordinator no more memory than the loop-size
limit: measured as the growth of the peak resident set (VmHWM) of a coordinator running in
its own process, whether the items come from a template or from a step's stored result.

The stored result is put in the store by the test, as a runner puts a large result, and the
step returns its reference: a python step building ten million items costs its runner a
minute under load, which is not what is measured here."""

from __future__ import annotations

from pathlib import Path

import msgspec

from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import assert_db_clean, kill_hard, register_when_up, start_mesh
from tests.integration.conftest import fixture, run
from tests.support.playbooks import write_playbook as write

# Ten million small ints are 80 MB of list alone; the coordinator may grow by far less.
MAX_GROWTH_MB = 40


def peak_mb(pid: int) -> float:
    """The peak resident set of process `pid`, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


async def test_ten_million_loop_items_fail_the_step_with_flat_coordinator_memory(
    settings: Settings, tmp_path: Path
) -> None:
    templated = write(
        tmp_path,
        "templated",
        """
    - step: start
      loop: {in: "{{ range(100000) | list * 100 }}", iterator: i}
      tool: {kind: python, code: "result = 1"}
    """,
    )
    client = await Client.connect(settings)
    ref = await client.store.put_blob(msgspec.json.encode([0] * 10_000_000))
    stored = write(
        tmp_path,
        "stored",
        f"""
    - step: start
      tool: {{kind: python, code: "result = {ref!r}"}}
      next: [big]
    - step: big
      loop: {{in: "{{{{ start }}}}", iterator: i}}
      tool: {{kind: python, code: "result = 1"}}
      next:
        - when: "{{{{ error is defined }}}}"
          then: [{{step: handled}}]
    - step: handled
      tool: {{kind: python, code: "result = {{'handled': True}}"}}
    """,
    )
    log = tmp_path / "mesh.log"
    coordinator = start_mesh(settings, log, "coordinator")
    others = start_mesh(settings, log, "catalog", "runner")
    try:
        await register_when_up(client, fixture("hello_world"))
        assert (await run(client, fixture("hello_world")))["status"] == "completed"
        before = peak_mb(coordinator.pid)
        docs = [await run(client, templated), await run(client, stored)]
        growth = peak_mb(coordinator.pid) - before
        print(f"coordinator peak RSS {before:.0f} MB, grew {growth:.1f} MB for 2 x 10M items")
        too_many = (
            "loop.in has 10,000,000 items, more than the limit of 100,000 (NOETL_MAX_LOOP_ITEMS)"
        )
        assert docs[0]["status"] == "failed" and docs[0]["error"]["type"] == "loop", docs[0]
        assert too_many in docs[0]["error"]["message"], docs[0]["error"]
        # The failed step routes as any failure does: here to its error handler.
        assert docs[1]["status"] == "completed" and docs[1]["result"] == {"handled": True}
        events = await client.store.list_events(int(docs[1]["execution_id"]))
        [failed] = [e for e in events if e["event_type"] == "step.failed"]
        assert failed["step"] == "big" and failed["error"]["type"] == "loop", failed
        assert f"{too_many}: a stored result, not loaded" in failed["error"]["message"]
        assert growth < MAX_GROWTH_MB, f"the coordinator grew by {growth:.0f} MB"
        await assert_db_clean(client.store)
    finally:
        kill_hard(coordinator)
        kill_hard(others)
        await client.close()
