"""Scaling: the throughput of concurrent 3-step executions as runner processes (1, 2, 3)
and coordinator hosts (1, 2) are added, every one a separate `up --role` process.

The processes are added and removed between measurements rather than the mesh restarted,
so each point pays only for its own burst; the first point is measured after a warm run.
"""

from __future__ import annotations

from typing import Final

from noetl.bench import playbooks
from noetl.bench.env import BenchEnv
from noetl.bench.model import Scaling
from noetl.bench.throughput import STEPS, burst

RUNNERS: Final = (1, 2, 3)
COORDINATORS: Final = (1, 2)
# Executions run after each change of the mesh, before measuring.
WARM: Final = 10


def point(coordinators: int, runners: int) -> str:
    """The key of one measurement in `Scaling.executions_per_s`."""
    return f"coordinators_{coordinators}_runners_{runners}"


async def scaling(env: BenchEnv, executions: int) -> Scaling:
    """Executions per second at every (coordinators, runners) point, `executions` each."""
    reply = await env.client.register(playbooks.chain(env.home, STEPS))
    await env.run_execution(reply.path, reply.version)  # warm: engine cached, workers up
    rates: dict[str, float] = {}
    for coordinators in COORDINATORS:
        await env.scale("coordinator", coordinators)
        # Up with one host, back down with two: one process started or stopped per point.
        for runners in RUNNERS if coordinators == COORDINATORS[0] else RUNNERS[::-1]:
            await env.scale("runner", runners)
            await burst(env, reply.path, reply.version, WARM)  # new processes warm up
            took = await burst(env, reply.path, reply.version, executions)
            rates[point(coordinators, runners)] = round(executions / took, 2)
    return Scaling(executions=executions, steps=STEPS, executions_per_s=rates)
