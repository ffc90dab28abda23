"""What the figures were measured on."""

from __future__ import annotations

import os
import platform

from noetl.bench.env import BenchEnv
from noetl.bench.model import Machine


async def machine(env: BenchEnv) -> Machine:
    """Cores, Python, server versions and the current load."""
    postgres = await env.client.store.pool.fetchval("SHOW server_version")
    nats = env.client.bus.nc.connected_server_version
    return Machine(
        cores=os.cpu_count() or 1,
        python=platform.python_version(),
        nats=f"{nats.major}.{nats.minor}.{nats.patch}",
        postgres=str(postgres).split()[0],
        load_avg=round(os.getloadavg()[0], 2),
    )
