"""NoETL's execution routes: `/api/execute` (alias `/api/run/playbook`),
`/api/executions/{id}/status`, `/api/vars/{execution_id}` and `/api/events`."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from aiohttp import web

from noetl.api.common import (
    MAX_ID,
    MAX_LIST,
    ApiError,
    Param,
    Route,
    RouteGroup,
    body,
    execution_id,
    int_query,
    json_response,
    parse_id,
)
from noetl.api.noetl_catalog import catalog_id, find_by_catalog_id
from noetl.api.schemas import (
    ErrorBody,
    EventItem,
    EventPage,
    ExecuteAccepted,
    ExecuteBody,
    ExecutionStatusView,
    Variable,
    Variables,
)
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import ExecutionNotFound

__all__ = ["NoetlExecutions", "idempotent_execution_id"]

_KEY_HEADER: Final = "Idempotency-Key"
_MAX_KEY: Final = 255
_DEFAULT_PAGE: Final = 100


def idempotent_execution_id(key: str) -> int:
    """The execution id an `Idempotency-Key` stands for: every retry of a request names the
    same execution, so the start is deduplicated like any redelivered message (by JetStream
    within its window, then by the event table's dedup key), across gateways."""
    digest = hashlib.blake2b(b"noetl.idempotency:" + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _id_of(value: str | int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        if value > MAX_ID:
            raise ApiError(400, f"{what} is a 63-bit integer, got {value}")
        return value
    return parse_id(value, what)


def _workload(sent: ExecuteBody) -> dict[str, Any] | None:
    given = [w for w in (sent.payload, sent.workload, sent.args) if w is not None]
    if len(given) > 1:
        raise ApiError(400, "give the workload once: `payload`, `workload` or `args`")
    return given[0] if given else None


class NoetlExecutions(RouteGroup):
    """NoETL's start and inspection routes, over the same client as the native ones."""

    def routes(self) -> list[Route]:
        tag = "noetl"
        key = Param(
            _KEY_HEADER,
            {"type": "string", "minLength": 1, "maxLength": _MAX_KEY},
            "a retried request with the same key starts one execution, not two",
        )
        started = {200: ExecuteAccepted, 400: ErrorBody, 404: ErrorBody, 409: ErrorBody}
        return [
            Route(
                "POST",
                "/api/execute",
                self.execute,
                "Start an execution (NoETL)",
                tag,
                started,
                body=ExecuteBody,
                headers=(key,),
            ),
            Route(
                "POST",
                "/api/run/playbook",
                self.execute,
                "Start an execution (NoETL alias of /api/execute)",
                tag,
                started,
                body=ExecuteBody,
                headers=(key,),
            ),
            Route(
                "GET",
                "/api/executions/{id}/status",
                self.status,
                "An execution's status (NoETL)",
                tag,
                {200: ExecutionStatusView, 400: ErrorBody, 404: ErrorBody},
            ),
            Route(
                "GET",
                "/api/vars/{execution_id}",
                self.variables,
                "Every variable of an execution with the step that set it (NoETL)",
                tag,
                {200: Variables, 400: ErrorBody, 404: ErrorBody},
            ),
            Route(
                "GET",
                "/api/events",
                self.events,
                "Events paged by event id, oldest first (NoETL)",
                tag,
                {200: EventPage, 400: ErrorBody},
                query=(
                    Param("execution_id", {"type": "string", "pattern": "^[0-9]{1,19}$"}),
                    Param(
                        "after",
                        {"type": "string", "pattern": "^[0-9]{1,19}$"},
                        "the `next_after` of the previous page",
                    ),
                    Param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIST},
                        f"page size (default {_DEFAULT_PAGE})",
                    ),
                ),
            ),
        ]

    async def execute(self, request: web.Request) -> web.Response:
        """Start an execution of a catalog entry and answer at once."""
        sent = await body(request, ExecuteBody)
        entry = _id_of(sent.catalog_id, "`catalog_id`")
        if entry is not None:
            path, version = await find_by_catalog_id(self.client, entry)
            if sent.path is not None and sent.path != path:
                raise ApiError(400, f"catalog entry {entry} is `{path}`, not `{sent.path}`")
        elif sent.path is None:
            raise ApiError(400, "give the playbook's `path` (and `version`) or its `catalog_id`")
        else:
            path = sent.path
            wanted = None if sent.version == "latest" else int(sent.version)
            if wanted == 0:
                raise ApiError(400, "`version` starts at 1")
            version, _ = await self.client.store.get_playbook(path, wanted)
        workload = _workload(sent)
        parent = _id_of(sent.parent_execution_id, "`parent_execution_id`")
        eid = await self._start(request, path, version, workload, parent)
        return json_response(
            ExecuteAccepted(
                execution_id=str(eid),
                status="started",
                path=path,
                version=version,
                catalog_id=str(catalog_id(path, version)),
            )
        )

    async def _start(
        self,
        request: web.Request,
        path: str,
        version: int,
        workload: dict[str, Any] | None,
        parent: int | None,
    ) -> int:
        key = request.headers.get(_KEY_HEADER)
        if key is None:
            return await self.client.start(
                path, version=version, workload=workload, parent_execution_id=parent
            )
        if not 0 < len(key) <= _MAX_KEY:
            raise ApiError(400, f"`{_KEY_HEADER}` has 1 to {_MAX_KEY} characters")
        eid = idempotent_execution_id(key)
        try:
            row = await self.client.store.get_execution(eid)
        except ExecutionNotFound:
            return await self.client.start(
                path,
                version=version,
                workload=workload,
                execution_id=eid,
                parent_execution_id=parent,
            )
        if (row["path"], row["version"]) != (path, version):
            raise ApiError(
                409,
                f"`{_KEY_HEADER}` was used for another request: execution {eid} runs {row['path']}",
            )
        return eid

    async def status(self, request: web.Request) -> web.Response:
        """The execution's status without its results."""
        eid = execution_id(request)
        row = await self.client.store.get_execution(eid)
        return json_response(
            ExecutionStatusView(
                execution_id=str(eid),
                path=row["path"],
                version=row["version"],
                status=row["status"],
                completed=row["status"] in TERMINAL_STATUSES,
                failed=row["status"] == "failed",
                error=row["error"],
                started_at=row["started_at"].isoformat(),
                ended_at=row["ended_at"].isoformat() if row["ended_at"] else None,
            )
        )

    async def variables(self, request: web.Request) -> web.Response:
        """Each variable's latest value and the step that set it (null: kept by a restart)."""
        eid = execution_id(request, "execution_id")
        await self.client.store.get_execution(eid)
        rows = await self.client.store.pool.fetch(
            "SELECT event_type, step, payload, created_at FROM noetl.event "
            "WHERE execution_id = $1 AND event_type IN ('execution.started', 'step.completed') "
            "ORDER BY version",
            eid,
        )
        found: dict[str, Variable] = {}
        for row in rows:
            payload = row["payload"] or {}
            at = row["created_at"].isoformat()
            if row["event_type"] == "execution.started":
                kept = (payload.get("restore") or {}).get("vars") or {}
                found.update(
                    {k: Variable(value=v, source_step=None, set_at=at) for k, v in kept.items()}
                )
            else:
                values = payload.get("vars") or {}
                found.update(
                    {
                        k: Variable(value=v, source_step=row["step"], set_at=at)
                        for k, v in values.items()
                    }
                )
        return json_response(Variables(execution_id=str(eid), variables=found, count=len(found)))

    async def events(self, request: web.Request) -> web.Response:
        """A page of events after event id `after`; `next_after` continues."""
        text = request.query.get("execution_id")
        eid = None if text is None else parse_id(text)
        after_text = request.query.get("after")
        after = 0 if after_text is None else parse_id(after_text, "`after`")
        limit = int_query(request, "limit", maximum=MAX_LIST) or _DEFAULT_PAGE
        rows = await self.client.store.pool.fetch(
            "SELECT event_id, execution_id, event_type, step, command_id, status, payload, "
            "error, created_at FROM noetl.event "
            "WHERE ($1::bigint IS NULL OR execution_id = $1) AND event_id > $2 "
            "ORDER BY event_id LIMIT $3",
            eid,
            after,
            limit + 1,
        )
        items = [
            EventItem(
                event_id=str(r["event_id"]),
                execution_id=str(r["execution_id"]),
                event_type=r["event_type"],
                step=r["step"],
                command_id=r["command_id"],
                status=r["status"],
                payload=r["payload"],
                error=r["error"],
                created_at=r["created_at"].isoformat(),
            )
            for r in rows[:limit]
        ]
        # Without new events the cursor stays where it was, so a follower can poll with it.
        last = items[-1].event_id if items else after_text
        return json_response(EventPage(items=items, has_more=len(rows) > limit, next_after=last))
