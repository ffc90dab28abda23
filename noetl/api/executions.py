"""Native execution routes: start, list, read, cancel and restart (`/api/executions`)."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from noetl.api.common import MAX_LIST, Param, Route, RouteGroup, body, execution_id, int_query
from noetl.api.common import json_response as respond
from noetl.api.schemas import (
    CancelBody,
    ErrorBody,
    EventRow,
    ExecutionDocument,
    ExecutionSummary,
    RestartBody,
    Restarted,
    StartBody,
    Started,
)
from noetl.pool_wait import waiting_for_pools

__all__ = ["Executions", "document"]

_NOT_FOUND: Final = {400: ErrorBody, 404: ErrorBody}
LIMIT_QUERY: Final = Param(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}, "how many (default 50)"
)


def document(doc: dict[str, Any]) -> ExecutionDocument:
    """The store's execution document as its response type."""
    return msgspec.convert(doc, ExecutionDocument)


class Executions(RouteGroup):
    """Routes over the executions: the store for reads, the bus for starts and cancels."""

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/executions",
                self.list_executions,
                "The most recent executions, newest first",
                "executions",
                {200: list[ExecutionSummary], 400: ErrorBody},
                query=(LIMIT_QUERY,),
            ),
            Route(
                "POST",
                "/api/executions",
                self.start_execution,
                "Start an execution of a registered playbook",
                "executions",
                {202: Started, 400: ErrorBody, 404: ErrorBody},
                body=StartBody,
            ),
            Route(
                "GET",
                "/api/executions/{id}",
                self.get_execution,
                "The execution document: status, result, each step's result, vars",
                "executions",
                {200: ExecutionDocument, **_NOT_FOUND},
            ),
            Route(
                "GET",
                "/api/executions/{id}/events",
                self.list_events,
                "Every event of the execution, oldest first",
                "executions",
                {200: list[EventRow], **_NOT_FOUND},
            ),
            Route(
                "POST",
                "/api/executions/{id}/cancel",
                self.cancel_execution,
                "Cancel the execution",
                "executions",
                {202: Started, **_NOT_FOUND},
                body=CancelBody,
                body_optional=True,
            ),
            Route(
                "POST",
                "/api/executions/{id}/restart",
                self.restart_execution,
                "Start a new execution that keeps what this one decided before a step",
                "executions",
                {202: Restarted, **_NOT_FOUND},
                body=RestartBody,
                body_optional=True,
            ),
        ]

    async def list_executions(self, request: web.Request) -> web.Response:
        """The most recent executions, newest first (`?limit=`, default 50)."""
        limit = int_query(request, "limit", maximum=MAX_LIST)
        rows = await self.client.store.list_executions(50 if limit is None else limit)
        return respond(msgspec.convert(rows, list[ExecutionSummary]))

    async def start_execution(self, request: web.Request) -> web.Response:
        """Start an execution of a registered playbook; it runs asynchronously."""
        sent = await body(request, StartBody)
        eid = await self.client.start(
            sent.path, version=sent.version, workload=sent.workload, timeout=sent.timeout
        )
        return respond(
            Started(execution_id=str(eid)),
            status=202,
            headers={"Location": f"/api/executions/{eid}"},
        )

    async def get_execution(self, request: web.Request) -> web.Response:
        """The execution document: status, result, each step's result, vars."""
        eid = execution_id(request)
        doc = await self.client.store.describe(eid)
        doc["waiting_for_pool"] = await waiting_for_pools(
            self.client.store.pool, self.client.bus, eid, doc["status"]
        )
        return respond(document(doc))

    async def list_events(self, request: web.Request) -> web.Response:
        """Every event of the execution, oldest first."""
        rows = await self.client.store.list_events(execution_id(request))
        # Event ids are 64-bit like execution ids: strings, for the same reason.
        return respond(
            [msgspec.convert({**row, "event_id": str(row["event_id"])}, EventRow) for row in rows]
        )

    async def cancel_execution(self, request: web.Request) -> web.Response:
        """Ask the execution's coordinator to cancel it."""
        eid = execution_id(request)
        sent = await body(request, CancelBody, optional=True)
        await self.client.cancel(eid, sent.reason)
        return respond(Started(execution_id=str(eid)), status=202)

    async def restart_execution(self, request: web.Request) -> web.Response:
        """Start a new execution that keeps what this one decided before a step."""
        eid = execution_id(request)
        sent = await body(request, RestartBody, optional=True)
        new_id = await self.client.restart(eid, from_step=sent.from_step, workload=sent.workload)
        return respond(
            Restarted(execution_id=str(new_id), restarted_from=str(eid)),
            status=202,
            headers={"Location": f"/api/executions/{new_id}"},
        )
