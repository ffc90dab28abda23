"""`python -m tests.bench.cpu_per_step chain|throughput N`: CPU per step of each process.

Starts the bench's environment (embedded servers or `NOETL_NATS_URL`/`NOETL_PG_DSN`, a
scratch database, the mesh as separate processes) and runs either N 20-step chains (after a
warm-up) or the throughput workload with N executions, then prints the CPU milliseconds per
durable step that each of the bench's own processes spent (coordinator, runner, catalog,
nats-server, PostgreSQL, the python workers, this process). On a shared machine wall times
move 2 to 5 times between runs; CPU per step moves much less, so compare versions with it.

Only this process's descendants are counted (other meshes on the machine are not). The
python workers' figure counts the template processes, the workers alive at each reading and
those the templates reaped meanwhile (their children's CPU); a worker that started and
exited between the readings while its template was replaced is missed.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import psutil

from noetl.bench import playbooks
from noetl.bench.env import bench_env
from noetl.bench.throughput import throughput
from noetl.config import Settings

_ROLES = ("coordinator", "runner", "catalog")


def _kind(process: psutil.Process, me: int) -> str | None:
    """Which of the bench's parts a process is, None for anything else."""
    if process.pid == me:
        return "bench"
    command = " ".join(process.cmdline() or [process.name()])
    for role in _ROLES:
        if f"--role {role}" in command:
            return role
    if "nats-server" in command:
        return "nats"
    if command.startswith("postgres") or "bin/postgres" in command:
        return "pg"
    if "python" in command:
        return "worker"
    return None


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of this process and its descendants, by pid."""
    me = psutil.Process()
    found: dict[int, tuple[str, float]] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            kind = _kind(process, me.pid)
            times = process.cpu_times()
        except psutil.Error:
            continue
        if kind is not None:
            spent = times.user + times.system
            if kind == "worker":  # a template: its reaped workers too
                spent += times.children_user + times.children_system
            found[process.pid] = (kind, spent)
    return found


def per_kind(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two readings, summed by kind."""
    spent: dict[str, float] = {}
    for pid, (kind, seconds) in after.items():
        spent[kind] = spent.get(kind, 0.0) + seconds - before.get(pid, (kind, 0.0))[1]
    for pid, (kind, seconds) in before.items():
        if kind == "worker" and pid not in after:  # reaped: its template counts all of it
            spent[kind] = spent.get(kind, 0.0) - seconds
    return spent


async def main(workload: str, count: int) -> None:
    """Run the workload and print the figures."""
    async with bench_env(Settings.from_env(), lambda _: None) as env:
        if workload == "chain":
            reply = await env.client.register(playbooks.chain(env.home, 20))
            await env.run_execution(reply.path, reply.version)
            before, began = cpu_by_process(), time.perf_counter()
            walls = [(await env.run_execution(reply.path, reply.version))[0] for _ in range(count)]
            steps = count * 20
            print(f"chain p50 {statistics.median(walls) * 1000 / 20:.2f} ms per step")
        elif workload == "throughput":
            before, began = cpu_by_process(), time.perf_counter()
            print(await throughput(env, count))
            steps = count * 3
        else:
            raise SystemExit(f"unknown workload {workload!r}: chain or throughput")
        wall = time.perf_counter() - began
        spent = per_kind(before, cpu_by_process())
    figures = {kind: round(seconds * 1000 / steps, 3) for kind, seconds in sorted(spent.items())}
    total = round(sum(spent.values()) * 1000 / steps, 3)
    print(f"{steps} steps in {wall:.2f} s; CPU ms per step: {figures}; all {total}")
    print(f"load {psutil.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
