"""Prometheus metrics of this process: one registry, updated by whatever runs here.

The API counts the requests it serves and reads JetStream's consumer state when scraped;
actors running in the same process (`noetl-runtime up`) update the execution and step
series. Nothing is coordinated between processes and no series is labelled by execution
id, so the number of series stays bounded.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "COMMANDS_IN_FLIGHT",
    "CONSUMER_ACK_PENDING",
    "CONSUMER_PENDING",
    "CONSUMER_REDELIVERED",
    "EXECUTIONS_ENDED",
    "EXECUTIONS_STARTED",
    "HTTP_REQUESTS",
    "REGISTRY",
    "STEP_SECONDS",
]

REGISTRY: Final = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

EXECUTIONS_STARTED: Final = Counter(
    "noetl_executions_started",
    "Executions started, as committed by the coordinators of this process.",
    registry=REGISTRY,
)
EXECUTIONS_ENDED: Final = Counter(
    "noetl_executions_ended",
    "Executions ended, by final status, as committed by the coordinators of this process.",
    ["status"],
    registry=REGISTRY,
)
STEP_SECONDS: Final = Histogram(
    "noetl_step_duration_seconds",
    "Duration of the tool calls run by the runners of this process, by tool kind.",
    ["kind"],
    buckets=(0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 1800),
    registry=REGISTRY,
)
COMMANDS_IN_FLIGHT: Final = Gauge(
    "noetl_commands_in_flight",
    "Commands the runners of this process are running now.",
    registry=REGISTRY,
)
HTTP_REQUESTS: Final = Counter(
    "noetl_http_requests",
    "HTTP requests served by the API, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
CONSUMER_PENDING: Final = Gauge(
    "noetl_consumer_pending",
    "Messages of a JetStream consumer not yet delivered (read when scraped).",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING: Final = Gauge(
    "noetl_consumer_ack_pending",
    "Messages delivered and not yet acknowledged: on NOETL_CMD, commands in flight mesh-wide.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_REDELIVERED: Final = Gauge(
    "noetl_consumer_redelivered",
    "Messages of a JetStream consumer delivered more than once and not yet acknowledged.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
