"""Drill: a runner SIGSTOPped beyond `ack_wait` while its tool runs, then resumed. The
command runs again on the other runner; the outcome recorded first counts, once, and the
other run's outcome is refused without harm."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import psutil

from noetl.config import Settings
from tests.fault.drills import Drill, drill_mesh, timed
from tests.fault.harness import assert_db_clean, events_of, register_when_up


def playbook(tmp_path: Path, shared: Path) -> Path:
    """A python step that notes its pid when it starts and when it ends, 4 s later."""
    path = tmp_path / "frozen.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: frozen}\nworkflow:\n"
        "  - step: start\n    tool:\n      kind: python\n      code: |\n"
        "        import os, time\n"
        f"        open(f'{shared}/began-{{os.getpid()}}', 'w').close()\n"
        "        time.sleep(4)\n"
        f"        open(f'{shared}/ended-{{os.getpid()}}', 'w').close()\n"
        "        result = {'pid': os.getpid()}\n"
        "    next: [end]\n"
        "  - step: end\n    tool: {kind: python, code: 'result = 1'}\n"
    )
    return path


def pids(shared: Path, prefix: str) -> list[int]:
    return [int(p.name.split("-")[1]) for p in shared.glob(f"{prefix}-*")]


def signal_tree(proc: psutil.Process, sig: signal.Signals) -> None:
    for each in [proc, *proc.children(recursive=True)]:
        os.kill(each.pid, sig)


async def test_a_frozen_runner_loses_its_command_cleanly(
    settings: Settings, tmp_path: Path, shared_path: Path
) -> None:
    drill = Drill(name="sigstop runner")
    frozen: psutil.Process | None = None
    async with drill_mesh(settings, tmp_path / "mesh.log") as (client, procs):
        try:
            with timed(drill):
                reply = await register_when_up(client, playbook(tmp_path, shared_path))
                eid = await client.start(reply.path, version=reply.version)
                # Bounds on waits for what must happen, far past what load stretches them to.
                async with asyncio.timeout(180):
                    while not pids(shared_path, "began"):
                        await asyncio.sleep(0.05)
                [tool_pid] = pids(shared_path, "began")
                runners = [psutil.Process(procs[n].pid) for n in ("runner-a", "runner-b")]
                [frozen] = [
                    r for r in runners if tool_pid in {c.pid for c in r.children(recursive=True)}
                ]
                signal_tree(frozen, signal.SIGSTOP)
                stopped = asyncio.get_running_loop().time()
                # Frozen until the command has run elsewhere: JetStream redelivers it every
                # `ack_wait` to a member of the runners' queue group, the frozen one included.
                async with asyncio.timeout(180):
                    while len(pids(shared_path, "began")) < 2:
                        await asyncio.sleep(0.1)
                await asyncio.sleep(settings.ack_wait)
                signal_tree(frozen, signal.SIGCONT)
                frozen_for = asyncio.get_running_loop().time() - stopped
                drill.faults.append(f"runner stopped {frozen_for:.1f} s")
                doc = await client.wait(eid, timeout=180)
                assert doc["status"] == "completed", doc
                # Both runs' tools end (the frozen one's had at most 4 s left), then the
                # late outcome is given the time the drill always gave it to be handled.
                async with asyncio.timeout(180):
                    while len(pids(shared_path, "ended")) < 2:
                        await asyncio.sleep(0.1)
                await asyncio.sleep(8)
                # It ran twice; whichever run recorded its outcome first counts.
                ran = pids(shared_path, "began")
                assert len(ran) == 2 and doc["steps"]["start"]["pid"] in ran
                rows = await events_of(client, eid)
                outcomes = Counter(
                    r["command_id"]
                    for r in rows
                    if r["event_type"] in ("command.completed", "command.failed")
                )
                assert set(outcomes.values()) == {1}, outcomes
                drill.executions = 1
                await assert_db_clean(client.store)
                log = (tmp_path / "mesh.log").read_text()[-3000:]
                assert all(p.poll() is None for p in procs.values()), log
        finally:
            if frozen is not None:
                signal_tree(frozen, signal.SIGCONT)
