"""`python -m tests.bench.api_bench`: requests/s and latency of `GET /api/executions/{id}`
with 100 concurrent clients on loopback.

Bounded: embedded NATS and PostgreSQL in a temporary NOETL_HOME, one execution run, then
CLIENTS keep-alive clients issue REQUESTS requests in all (plus a warm-up), and everything
is stopped. Client and server share this process and the machine's cores, so the figure
is a floor of what a dedicated gateway does.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from actors.mesh import Mesh
from noetl import local
from noetl.api import ApiServer
from noetl.client import Client
from noetl.config import Settings

CLIENTS = 100
REQUESTS = 5_000
WARM_UP = 500
HELLO = Path(__file__).parent.parent / "fixtures" / "playbooks" / "hello_world" / "hello_world.yaml"


async def load(url: str, total: int) -> tuple[float, list[float]]:
    """(wall seconds, each request's latency) of `total` GETs by CLIENTS clients."""
    left = total
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                began = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return time.perf_counter() - began, latencies


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="noetl-api-bench-") as tmp:
        home = Path(tmp)
        services = local.ensure_local(home, announce=print)
        try:
            settings = Settings(nats_url=services.nats_url, pg_dsn=services.pg_dsn, home=home)
            client = await Client.connect(settings, relaxed=True)
            mesh = Mesh(client.bus, client.store, client.settings)
            await mesh.start()
            api = ApiServer(client, host="127.0.0.1", port=0)
            await api.start()
            try:
                reply = await client.register(HELLO)
                eid = await client.start(reply.path, version=reply.version)
                await client.wait(eid, timeout=60)
                url = f"http://127.0.0.1:{api.port}/api/executions/{eid}"
                await load(url, WARM_UP)
                wall, latencies = await load(url, REQUESTS)
            finally:
                await api.stop()
                await mesh.stop()
                await client.close()
        finally:
            local.stop_local(home)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    p50 = statistics.median(latencies) * 1000
    rate = len(latencies) / wall
    print(
        f"GET /api/executions/{{id}}, {CLIENTS} clients, {len(latencies)} requests: "
        f"{rate:.0f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
