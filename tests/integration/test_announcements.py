"""What the coordinator announces on core NATS: every committed batch on the execution's
events subject (watchers), and only its start, end and failed steps on the milestones
subject, which `up` logs (so an `up` does not receive every step of every execution)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from actors.mesh import Mesh
from noetl.bus import events_subject, milestones_subject
from noetl.client import Client
from tests.support.playbooks import write_playbook as write

CHAIN = """
- step: start
  tool: {kind: python, code: "result = 1"}
  next: [second]
- step: second
  tool: {kind: python, code: "result = 2"}
  next: [broken]
- step: broken
  tool: {kind: python, code: "raise ValueError('no')"}
"""


async def test_milestones_carry_starts_ends_and_failed_steps_only(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    seen: dict[str, list[list[dict[str, Any]]]] = {"events": [], "milestones": []}

    def collect(key: str) -> Any:
        async def on_msg(msg: Any) -> None:
            seen[key].append(msgspec.json.decode(msg.data))

        return on_msg

    nc = client.bus.nc
    every = await nc.subscribe(events_subject(0).replace(".0", ".*"), cb=collect("events"))
    some = await nc.subscribe(milestones_subject(0).replace(".0", ".*"), cb=collect("milestones"))
    try:
        reply = await client.register(write(tmp_path, "announced", CHAIN))
        done = await client.wait(await client.start(reply.path), timeout=60)
        assert done["status"] == "failed", done
        await asyncio.sleep(0.2)  # core NATS: the last announcements may still be in flight
    finally:
        await every.unsubscribe()
        await some.unsubscribe()
    kinds = {e["type"] for batch in seen["milestones"] for e in batch}
    assert {"execution.started", "step.failed", "execution.failed"} <= kinds
    assert len(seen["milestones"]) < len(seen["events"])
    # Every milestone batch is one of the batches announced to watchers.
    assert all(batch in seen["events"] for batch in seen["milestones"])
    assert all(
        any(
            e["type"] in ("execution.started", "step.failed") or e["type"].startswith("execution.")
            for e in batch
        )
        for batch in seen["milestones"]
    )
