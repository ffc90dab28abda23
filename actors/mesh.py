"""The mesh: the actors of the chosen roles, started and drained together in one process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import nats

from actors.base import Actor
from actors.catalog import CatalogActor
from actors.coordinator import CoordinatorHost
from actors.runner import Runner
from noetl.bus import PING_PREFIX, Bus
from noetl.config import ROLES, Settings
from noetl.store import Store

log = logging.getLogger("noetl.mesh")


class Mesh:
    """Starts the actors of `roles` on a shared bus connection and store pool."""

    def __init__(
        self, bus: Bus, store: Store, settings: Settings, roles: Iterable[str] = ROLES
    ) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self.roles = tuple(r for r in ROLES if r in set(roles))
        self.actors: list[Actor] = []

    async def start(self) -> None:
        """Start every role's actor."""
        for role in self.roles:
            actor: Actor
            if role == "catalog":
                actor = CatalogActor(self.bus, self.store, self.settings)
            elif role == "coordinator":
                actor = CoordinatorHost(self.bus, self.store, self.settings)
            else:
                actor = Runner(self.bus, self.store, self.settings)
            await actor.start()
            self.actors.append(actor)
        log.info("mesh up: %s", ", ".join(self.roles))

    async def stop(self) -> None:
        """Drain: stop taking messages, let the work in hand finish, release resources."""
        await self.bus.stop_consuming()
        for actor in reversed(self.actors):
            await actor.stop()
        self.actors.clear()


async def missing_roles(bus: Bus, roles: Iterable[str] = ROLES, timeout: float = 0.5) -> list[str]:
    """The roles no running process answers for (asked over core NATS)."""

    async def alive(role: str) -> bool:
        try:
            await bus.nc.request(f"{PING_PREFIX}.{role}", b"", timeout=timeout)
        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False
        return True

    wanted = list(roles)
    answers = await asyncio.gather(*(alive(r) for r in wanted))
    return [r for r, ok in zip(wanted, answers, strict=True) if not ok]
