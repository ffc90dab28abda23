"""What every fault drill shares: a mix of playbooks kept running while faults are
injected, the check that each execution ended as its playbook says, and the figures.

The mix: a chain of python steps, an async loop, sub-playbooks in a loop (fan-out and join),
pagination against the local HTTP API, and a step that fails once then succeeds on retry.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from noetl.client import Client
from noetl.config import Settings
from tests.fault.harness import kill_hard, register_when_up, start_mesh
from tests.integration.conftest import fixture
from tests.support.http_api import ITEM_COUNT, HttpApi
from tests.support.playbooks import slow_chain

RETRY = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: retried}
workflow:
  - step: start
    tool:
      kind: python
      args: {marker: "{{ workload.marker }}"}
      code: |
        import os
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        result = {"ok": True}
    retry: {max_attempts: 5, delay: 0.2}
"""


# The mesh's processes by name.
Procs = dict[str, subprocess.Popen[bytes]]

# Each its own process: name -> role.
ROLES: Final = {
    "catalog": "catalog",
    "coordinator": "coordinator",
    "runner-a": "runner",
    "runner-b": "runner",
}


def start_roles(settings: Settings, log: Path) -> Procs:
    """The mesh as one process per entry of ROLES, logging to `log`."""
    return {name: start_mesh(settings, log, role) for name, role in ROLES.items()}


async def until_up(procs: Procs, log: Path) -> None:
    """Until every process of `procs` says its actors are up (faults are meant for a running
    mesh: a process still starting under load would die of one, which no drill tests)."""
    async with asyncio.timeout(180):
        while True:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            if text.count("noetl: mesh up (") >= len(procs):
                return
            dead = [name for name, proc in procs.items() if proc.poll() is not None]
            assert not dead, f"{dead} exited while starting:\n{text[-3000:]}"
            await asyncio.sleep(0.2)


@asynccontextmanager
async def drill_mesh(settings: Settings, log: Path) -> AsyncIterator[tuple[Client, Procs]]:
    """A client, and the mesh as one process per role of ROLES logging to `log`, once every
    process is up; at the end each process in the dict (a drill may replace them) is killed
    and the client closed."""
    client = await Client.connect(settings)
    procs = start_roles(settings, log)
    try:
        await until_up(procs, log)
        yield client, procs
    finally:
        for proc in procs.values():
            kill_hard(proc)
        await client.close()


class Drill(msgspec.Struct, kw_only=True):
    """The figures a drill prints: executions run, faults injected, and for each
    coordinator kill the seconds from the kill to the next step completed by its
    successor."""

    name: str
    executions: int = 0
    faults: list[str] = []
    recoveries: list[float] = []
    seconds: float = 0.0

    def report(self) -> str:
        recovery = (
            f"; recovery after a coordinator kill {min(self.recoveries):.1f}-"
            f"{max(self.recoveries):.1f} s ({len(self.recoveries)})"
            if self.recoveries
            else ""
        )
        return (
            f"drill {self.name}: {self.executions} executions, {len(self.faults)} faults "
            f"injected ({', '.join(self.faults)}){recovery}, {self.seconds:.0f} s"
        )


class Mix:
    """Registers the mix's playbooks once, then starts waves of executions and knows what
    each must end with."""

    def __init__(self, client: Client, api: HttpApi, tmp_path: Path, shared: Path) -> None:
        self.client, self.api, self.tmp_path, self.shared = client, api, tmp_path, shared
        self.expected: dict[int, dict[str, Any] | None] = {}

    async def register(self) -> None:
        retried = self.tmp_path / "retried.yaml"
        retried.write_text(RETRY)
        for path in (
            slow_chain(self.tmp_path),
            fixture("loop_async"),
            fixture("composition_child"),
            fixture("composition_parent"),
            fixture("http_pagination"),
            retried,
        ):
            await register_when_up(self.client, path)

    async def wave(self) -> None:
        """Start one execution of every playbook of the mix."""
        marker = str(self.shared / f"retry-{len(self.expected)}")
        starts: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = [
            ("slow_chain", None, {"done": True}),
            ("examples/loop_async", None, {"sum_of_squares": 385, "count": 10}),
            ("examples/composition_parent", None, {"ada": 72, "bob": 50}),
            (
                "examples/http_pagination",
                {"api_url": self.api.url},
                {"count": ITEM_COUNT, "first": 0, "last": ITEM_COUNT - 1},
            ),
            ("retried", {"marker": marker}, {"ok": True}),
        ]
        for path, workload, result in starts:
            eid = await self.client.start(path, workload=workload)
            self.expected[eid] = result

    async def assert_all_ended_as_expected(self, timeout: float = 240) -> None:
        """Every execution started completed with its playbook's result."""
        for eid, result in self.expected.items():
            doc = await self.client.wait(eid, timeout=timeout)
            assert doc["status"] == "completed", doc
            assert doc["result"] == result, (doc["path"], doc["result"])


async def recovery_after(client: Client, killed_at: datetime, timeout: float = 120) -> float:
    """Seconds from `killed_at` to the first step completed after it."""
    async with asyncio.timeout(timeout):
        while True:
            first = await client.store.pool.fetchval(
                "SELECT min(created_at) FROM noetl.event "
                "WHERE event_type = 'step.completed' AND created_at > $1",
                killed_at,
            )
            if first is not None:
                return float((first - killed_at).total_seconds())
            await asyncio.sleep(0.1)


def now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def timed(drill: Drill) -> Iterator[Drill]:
    """Time the drill and print its figures at the end, even when it fails."""
    began = time.monotonic()
    try:
        yield drill
    finally:
        drill.seconds = time.monotonic() - began
        print(drill.report())
