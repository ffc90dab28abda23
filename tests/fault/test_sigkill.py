"""Kill -9 the whole mesh in the middle of a run; a restarted mesh finishes it, and every
step completes exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import (
    assert_db_clean,
    count_events,
    events_of,
    kill_hard,
    register_when_up,
    start_mesh,
    stop_gracefully,
    wait_until,
)
from tests.support.playbooks import CHAIN_STEPS, slow_chain


async def in_flight(client: Client, execution_id: int) -> set[str]:
    """Commands whose tool call has started and has no recorded outcome."""
    rows = await events_of(client, execution_id)
    started = {r["command_id"] for r in rows if r["event_type"] == "command.started"}
    ended = {
        r["command_id"] for r in rows if r["event_type"] in ("command.completed", "command.failed")
    }
    return started - ended


async def test_sigkill_mid_run_then_restart_completes_each_step_once(
    settings: Settings, tmp_path: Path
) -> None:
    client = await Client.connect(settings)
    log = tmp_path / "mesh.log"
    mesh = start_mesh(settings, log)
    try:
        reply = await register_when_up(client, slow_chain(tmp_path))
        eid = await client.start(reply.path, version=reply.version)
        # Kill twice, each time while a step's tool call is running (started, no outcome).
        interrupted: set[str] = set()
        for threshold in (2, 5):

            async def running_after(threshold: int = threshold) -> bool:
                done = await count_events(client, eid, "step.completed")
                return sum(done.values()) >= threshold and bool(await in_flight(client, eid))

            await wait_until(running_after)
            kill_hard(mesh)
            caught = await in_flight(client, eid)  # read after the kill: what it interrupted
            assert caught, "the kill landed between two commands"
            interrupted |= caught
            mesh = start_mesh(settings, log)
        doc = await client.wait(eid, timeout=90)
        assert doc["status"] == "completed", (doc, log.read_text()[-3000:])
        assert doc["result"] == {"done": True}
        assert doc["steps"][f"s{CHAIN_STEPS - 1}"] == {"n": CHAIN_STEPS}
        counts = await count_events(client, eid, "step.completed")
        expected = {"start": 1, "end": 1, **{f"s{i}": 1 for i in range(1, CHAIN_STEPS)}}
        assert counts == expected
        rows = await events_of(client, eid)
        outcomes = Counter(
            r["command_id"]
            for r in rows
            if r["event_type"] in ("command.completed", "command.failed")
        )
        assert set(outcomes.values()) == {1}
        # Each interrupted command was run again after the restart and completed once.
        completed = {r["command_id"] for r in rows if r["event_type"] == "command.completed"}
        assert len(interrupted) == 2 and interrupted <= completed
        await assert_db_clean(client.store)
        # A graceful stop drains and exits cleanly.
        assert stop_gracefully(mesh) == 0, log.read_text()[-3000:]
    finally:
        kill_hard(mesh)
        await client.close()
