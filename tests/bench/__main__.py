"""`make bench`: what a step costs, next to the floors it is built from.

Floors, measured on the same embedded servers: one asyncpg INSERT+COMMIT, and one
JetStream publish acknowledged by the server. Then the wall time of a 20-step python chain
divided by 20 (median of 5 runs) on an in-process mesh.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import nats
import psutil
from rich.console import Console
from rich.table import Table

from actors.mesh import Mesh
from noetl import local
from noetl.client import Client
from noetl.config import Settings

CHAIN = 20
RUNS = 5
FLOOR_SAMPLES = 500
LOOP_ITEMS = 10_000
CLI = str(Path(sys.executable).parent / "noetl-runtime")

console = Console()


def chain_playbook(directory: Path) -> Path:
    """A chain of CHAIN trivial python steps."""
    lines = [
        "apiVersion: noetl.io/v2",
        "kind: Playbook",
        "metadata: {name: bench_chain}",
        "workflow:",
    ]
    for i in range(CHAIN):
        name = "start" if i == 0 else f"s{i}"
        lines += [
            f"  - step: {name}",
            f"    tool: {{kind: python, code: 'result = {{\"i\": {i}}}'}}",
        ]
        if i < CHAIN - 1:
            lines.append(f"    next: [s{i + 1}]")
    path = directory / "bench_chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def pg_floor(dsn: str) -> float:
    """Median seconds of one INSERT committed on its own."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TEMP TABLE bench_floor (id bigint, body jsonb)")
        samples = []
        for i in range(FLOOR_SAMPLES):
            began = time.perf_counter()
            await conn.execute("INSERT INTO bench_floor VALUES ($1, '{\"a\": 1}')", i)
            samples.append(time.perf_counter() - began)
        return statistics.median(samples)
    finally:
        await conn.close()


async def nats_floor(url: str) -> float:
    """Median seconds of one JetStream publish with its ack."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCH_FLOOR", subjects=["bench.floor"])
        samples = []
        for i in range(FLOOR_SAMPLES):
            began = time.perf_counter()
            await js.publish("bench.floor", b"x" * 200, headers={"Nats-Msg-Id": str(i)})
            samples.append(time.perf_counter() - began)
        await js.delete_stream("BENCH_FLOOR")
        return statistics.median(samples)
    finally:
        await nc.close()


async def chain_cost(settings: Settings, directory: Path) -> tuple[float, list[float]]:
    """Median wall seconds per step of the chain, and each run's total."""
    client = await Client.connect(settings, relaxed=True)
    mesh = Mesh(client.bus, client.store, client.settings)
    await mesh.start()
    try:
        reply = await client.register(chain_playbook(directory))
        warm = await client.start(reply.path, version=reply.version)
        await client.wait(warm, timeout=120)
        totals = []
        for _ in range(RUNS):
            began = time.perf_counter()
            eid = await client.start(reply.path, version=reply.version)
            doc = await client.wait(eid, timeout=120)
            totals.append(time.perf_counter() - began)
            assert doc["status"] == "completed", doc
        return statistics.median(totals) / CHAIN, totals
    finally:
        await mesh.stop()
        await client.close()


def loop_playbook(directory: Path) -> Path:
    """An async loop of LOOP_ITEMS trivial python steps."""
    path = directory / "bench_loop.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: bench_loop}\nworkflow:\n"
        "  - step: start\n"
        f'    loop: {{in: "{{{{ range({LOOP_ITEMS}) | list }}}}", iterator: n, mode: async}}\n'
        "    tool: {kind: python, args: {n: '{{ n }}'}, code: 'result = n'}\n"
    )
    return path


def role(settings: Settings, *roles: str) -> subprocess.Popen[bytes]:
    """`noetl-runtime up` with only `roles`, in its own process."""
    env = {
        **os.environ,
        "NOETL_NATS_URL": str(settings.nats_url),
        "NOETL_PG_DSN": str(settings.pg_dsn),
        "NOETL_HOME": str(settings.home),
        "NOETL_API_PORT": "0",
    }
    args = [CLI, "up", *(a for r in roles for a in ("--role", r))]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def loop_cost(settings: Settings, directory: Path) -> tuple[float, float, float]:
    """Wall seconds of the loop, and the coordinator process's RSS (MiB) before and at its
    peak, with the coordinator and the runner each in a process of their own."""
    coordinator = role(settings, "catalog", "coordinator")
    runner = role(settings, "runner")
    client = await Client.connect(settings)
    try:
        reply = None
        while reply is None:
            try:
                reply = await client.register(loop_playbook(directory))
            except Exception:
                await asyncio.sleep(0.2)
        watched = psutil.Process(coordinator.pid)
        baseline = watched.memory_info().rss
        peak = baseline
        began = time.perf_counter()
        eid = await client.start(reply.path, version=reply.version)
        waiting = asyncio.ensure_future(client.wait(eid, timeout=1800))
        while not waiting.done():
            peak = max(peak, watched.memory_info().rss)
            await asyncio.sleep(0.05)
        doc = waiting.result()
        took = time.perf_counter() - began
        assert doc["status"] == "completed", doc["error"]
        assert len(doc["steps"]["start"]) == LOOP_ITEMS
        return took, baseline / 2**20, peak / 2**20
    finally:
        await client.close()
        for proc in (coordinator, runner):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="noetl-bench-") as tmp:
        home = Path(tmp)
        services = local.ensure_local(home, announce=console.print)
        try:
            settings = Settings(nats_url=services.nats_url, pg_dsn=services.pg_dsn, home=home)
            pg = await pg_floor(services.pg_dsn)
            pub = await nats_floor(services.nats_url)
            per_step, totals = await chain_cost(settings, home)
            loop_wall, rss_before, rss_peak = await loop_cost(settings, home)
        finally:
            local.stop_local(home)
    table = Table("measure", "milliseconds", "ratio to floor sum")
    floor = pg + pub
    table.add_row("floor: asyncpg INSERT+COMMIT (median)", f"{pg * 1000:.3f}", "")
    table.add_row("floor: JetStream publish+ack (median)", f"{pub * 1000:.3f}", "")
    table.add_row(
        f"step of a {CHAIN}-step python chain (median of {RUNS})",
        f"{per_step * 1000:.3f}",
        f"{per_step / floor:.1f}x",
    )
    table.add_row(
        f"{LOOP_ITEMS}-item async loop, wall",
        f"{loop_wall * 1000:.0f}",
        f"{loop_wall / LOOP_ITEMS * 1000:.3f} ms/item",
    )
    table.add_row("  coordinator RSS before / peak (MiB)", f"{rss_before:.0f} / {rss_peak:.0f}", "")
    console.print(table)
    console.print(f"chain totals (s): {', '.join(f'{t:.3f}' for t in totals)}")


if __name__ == "__main__":
    asyncio.run(main())
