"""A client and the mesh's actors in this process, as context managers that always close
what they opened (in the reverse order, as the fixtures do)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import ROLES, Settings

__all__ = ["connected", "running"]


@contextlib.asynccontextmanager
async def connected(settings: Settings, *, relaxed: bool = False) -> AsyncIterator[Client]:
    """A client on the services of `settings`, closed on exit."""
    client = await Client.connect(settings, relaxed=relaxed)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running(client: Client, roles: Iterable[str] = ROLES) -> AsyncIterator[Mesh]:
    """The actors of `roles` on `client`'s bus and store, stopped on exit."""
    mesh = Mesh(client.bus, client.store, client.settings, roles)
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()
