"""A client and the mesh's actors in this process, as context managers that always close
what they opened (in the reverse order, as the fixtures do), and the client's credentials."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import ROLES, Settings
from noetl.crypto import load_key
from noetl.store.credentials import CredentialStore

__all__ = ["connected", "credential_store", "running"]


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


def credential_store(client: Client) -> CredentialStore:
    """The credential store of `client`'s database, with the key of its settings (as the
    mesh's runners decrypt with)."""
    return CredentialStore(client.store.pool, load_key(client.settings))
