"""Kill -9 the whole mesh in the middle of a run; a restarted mesh finishes it, and every
step completes exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from noetl.client import Client
from noetl.config import Settings
from noetl.errors import ExecutionNotFound
from noetl.messages import CatalogReply

CLI = str(Path(sys.executable).parent / "noetl-runtime")
STEPS = 8


def chain(tmp_path: Path) -> Path:
    """A chain of python steps, each taking a moment, each adding one to a counter."""
    lines = [
        "apiVersion: noetl.io/v2",
        "kind: Playbook",
        "metadata: {name: slow_chain}",
        "workflow:",
    ]
    for i in range(STEPS):
        name = "start" if i == 0 else f"s{i}"
        following = "end" if i == STEPS - 1 else f"s{i + 1}"
        previous = "0" if i == 0 else f"{{{{ {'start' if i == 1 else f's{i - 1}'}.n }}}}"
        lines += [
            f"  - step: {name}",
            "    tool:",
            "      kind: python",
            f'      args: {{n: "{previous}"}}',
            "      code: |",
            "        import time",
            "        time.sleep(0.4)",
            "        result = {'n': int(n) + 1}",
            f"    next: [{following}]",
        ]
    lines += ["  - step: end", "    tool: {kind: python, code: 'result = {\"done\": True}'}"]
    path = tmp_path / "slow_chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_mesh(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env.update(
        NOETL_NATS_URL=str(settings.nats_url),
        NOETL_PG_DSN=str(settings.pg_dsn),
        NOETL_HOME=str(settings.home),
        NOETL_ACK_WAIT="2",
        NOETL_RECONCILE_EVERY="1",
    )
    # Its own session, so the kill takes the python worker processes with it.
    return subprocess.Popen(
        [CLI, "up"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def completed_steps(client: Client, execution_id: int) -> Counter[str]:
    try:
        rows = await client.store.list_events(execution_id)
    except ExecutionNotFound:  # not started yet
        return Counter()
    return Counter(r["step"] for r in rows if r["event_type"] == "step.completed")


async def test_sigkill_mid_run_then_restart_completes_each_step_once(
    settings: Settings, tmp_path: Path
) -> None:
    client = await Client.connect(settings)
    log = tmp_path / "mesh.log"
    mesh = start_mesh(settings, log)
    try:
        reply = await _register_when_up(client, chain(tmp_path))
        eid = await client.start(reply.path, version=reply.version)
        # Kill twice: once while a step runs, once again later in the chain.
        for threshold in (2, 5):
            async with asyncio.timeout(60):
                while sum((await completed_steps(client, eid)).values()) < threshold:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # land inside the next step's tool call
            kill_hard(mesh)
            mesh = start_mesh(settings, log)
        doc = await client.wait(eid, timeout=90)
        assert doc["status"] == "completed", (doc, log.read_text()[-3000:])
        assert doc["result"] == {"done": True}
        assert doc["steps"][f"s{STEPS - 1}"] == {"n": STEPS}
        counts = await completed_steps(client, eid)
        expected = {"start": 1, "end": 1, **{f"s{i}": 1 for i in range(1, STEPS)}}
        assert counts == expected
        rows = await client.store.list_events(eid)
        outcomes = Counter(
            r["command_id"]
            for r in rows
            if r["event_type"] in ("command.completed", "command.failed")
        )
        assert set(outcomes.values()) == {1}
        # A graceful stop drains and exits cleanly.
        mesh.send_signal(signal.SIGTERM)
        assert mesh.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if mesh.poll() is None:
            mesh.send_signal(signal.SIGTERM)
            try:
                mesh.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_hard(mesh)
        await client.close()


async def _register_when_up(client: Client, path: Path) -> CatalogReply:
    async with asyncio.timeout(60):
        while True:
            try:
                return await client.register(path)
            except Exception:
                await asyncio.sleep(0.2)
