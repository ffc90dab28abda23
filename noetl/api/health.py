"""Probes: liveness (`/health`, `/api/health`) and readiness (`/api/ready`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import web

from noetl.api.common import Route, RouteGroup, json_response
from noetl.api.schemas import Health, Readiness

__all__ = ["Probes"]

log = logging.getLogger("noetl.api")

# Seconds each readiness check may take: a probe must answer even when a service hangs.
CHECK_SECONDS: Final = 3


class Probes(RouteGroup):
    """Liveness says the server answers; readiness says it can do its work."""

    def routes(self) -> list[Route]:
        live = "The server answers (liveness)"
        return [
            Route("GET", "/health", self.health, live, "health", {200: Health}, public=True),
            Route("GET", "/api/health", self.health, live, "health", {200: Health}, public=True),
            Route(
                "GET",
                "/api/ready",
                self.ready,
                "NATS, PostgreSQL and the schema answer (readiness)",
                "health",
                {200: Readiness, 503: Readiness},
                public=True,
            ),
        ]

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the server answers."""
        return json_response(Health())

    async def ready(self, request: web.Request) -> web.Response:
        """200 when NATS and PostgreSQL answer and the schema is current, else 503 saying
        what is missing (details of a failure go to the log, not to the probe)."""
        nats_state, (pg_state, schema_state) = await asyncio.gather(self._nats(), self._pg())
        checks = {"nats": nats_state, "postgres": pg_state, "schema": schema_state}
        missing = [name for name, state in checks.items() if state != "ok"]
        ready = not missing
        return json_response(
            Readiness(status="ready" if ready else "not ready", checks=checks, missing=missing),
            status=200 if ready else 503,
        )

    async def _nats(self) -> str:
        nc = self.client.bus.nc
        if not nc.is_connected:
            return "disconnected"
        try:
            await nc.flush(timeout=CHECK_SECONDS)  # a round trip to the server
        except Exception as exc:
            log.warning("readiness: NATS does not answer: %r", exc)
            return "no answer"
        return "ok"

    async def _pg(self) -> tuple[str, str]:
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                problems = await self.client.store.check_schema()
        except Exception as exc:
            log.warning("readiness: PostgreSQL does not answer: %r", exc)
            return "no answer", "unknown"
        if problems:
            log.warning("readiness: schema not current: %s", "; ".join(problems))
            return "ok", "not current"
        return "ok", "ok"
