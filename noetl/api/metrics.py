"""`/metrics`: this process's Prometheus series, with JetStream's consumer state read when
scraped. Public like the probes: it holds no secret and no execution id."""

from __future__ import annotations

import logging
from typing import Final

import nats.errors
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from noetl.api.common import Route, RouteGroup
from noetl.bus import CMD_STREAM, DEAD_STREAM, EXEC_STREAM, START_STREAM
from noetl.metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING, CONSUMER_REDELIVERED, REGISTRY

__all__ = ["Metrics"]

log = logging.getLogger("noetl.api")

_STREAMS: Final = (START_STREAM, EXEC_STREAM, CMD_STREAM, DEAD_STREAM)


class Metrics(RouteGroup):
    """Serves the registry of `noetl.metrics`."""

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/metrics",
                self.metrics,
                "Prometheus metrics of this process (text format)",
                "metrics",
                {200: None},
                public=True,
                media="text/plain",
            )
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        """The text exposition; consumers that vanished since the last scrape are dropped."""
        await self._read_consumers()
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _read_consumers(self) -> None:
        for gauge in (CONSUMER_PENDING, CONSUMER_ACK_PENDING, CONSUMER_REDELIVERED):
            gauge.clear()
        for stream in _STREAMS:
            try:
                consumers = await self.client.bus.js.consumers_info(stream)
            except (nats.errors.Error, TimeoutError) as exc:
                # A scrape still answers with what this process counts itself.
                log.warning("metrics: cannot read consumers of %s: %r", stream, exc)
                continue
            for info in consumers:
                name = info.name or ""
                CONSUMER_PENDING.labels(stream, name).set(info.num_pending or 0)
                CONSUMER_ACK_PENDING.labels(stream, name).set(info.num_ack_pending or 0)
                CONSUMER_REDELIVERED.labels(stream, name).set(info.num_redelivered or 0)
