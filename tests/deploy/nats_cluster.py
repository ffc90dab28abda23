"""A three-node NATS JetStream cluster on loopback, from the embedded nats-server binary."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from noetl.bus import Bus
from noetl.servers.nats import nats_server_binary
from tests.support.services import free_port, stop_process

CLUSTER = "noetl-test"


@dataclass
class Node:
    """One server of the cluster: its ports, store and log stay across restarts."""

    name: str
    port: int
    cluster_port: int
    store: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every server, comma-separated, as NOETL_NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def start(self, node: Node) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n != node)
        argv = [
            str(nats_server_binary()),
            "--jetstream", "--store_dir", str(node.store),
            "--addr", "127.0.0.1", "--port", str(node.port),
            "--server_name", node.name,
            "--cluster_name", CLUSTER,
            "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
            "--routes", routes,
            "--log", str(node.log),
        ]  # fmt: skip
        node.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self, node: Node) -> None:
        """SIGKILL: no goodbye to its peers or clients."""
        assert node.process is not None
        stop_process(node.process, signal.SIGKILL)
        node.process = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                stop_process(node.process, signal.SIGKILL)
                node.process = None

    async def wait_ready(self, replicas: int, timeout: float = 90) -> None:
        """Until the cluster has a JetStream leader and the runtime's streams exist with
        `replicas` copies."""
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(Exception):
                    bus = await Bus.connect(self.url, replicas=replicas)
                    await bus.close()
                    return
                await asyncio.sleep(0.5)


def start_cluster(base: Path, size: int = 3) -> NatsCluster:
    cluster = NatsCluster()
    for i in range(size):
        store = base / f"n{i}"
        store.mkdir(parents=True)
        cluster.nodes.append(Node(f"n{i}", free_port(), free_port(), store, base / f"n{i}.log"))
    for node in cluster.nodes:
        cluster.start(node)
    return cluster
