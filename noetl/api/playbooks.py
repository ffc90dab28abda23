"""Native playbook routes: list, read and register playbooks (`/api/playbooks`)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from noetl.api.common import (
    MAX_VERSION,
    ApiError,
    Param,
    Route,
    RouteGroup,
    body,
    int_query,
    json_response,
)
from noetl.api.schemas import ErrorBody, PlaybookBody, PlaybookContent, PlaybookSummary, Registered
from noetl.errors import CatalogUnavailable

__all__ = ["YAML_TYPES", "Playbooks", "registration_refused"]

YAML_TYPES: Final = (
    "text/yaml",
    "application/x-yaml",
    "application/yaml",
    "text/x-yaml",
    "text/plain",
)
VERSION_QUERY: Final = Param(
    "version",
    {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
    "catalog version (default: the latest)",
)


def registration_refused(exc: CatalogUnavailable) -> ApiError:
    """The refusal for a registration no catalog actor took: 504 when one was too slow."""
    return ApiError(504 if exc.timed_out else 503, str(exc))


class Playbooks(RouteGroup):
    """Routes over the catalog."""

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/playbooks",
                self.list_playbooks,
                "Every registered path with its latest version",
                "playbooks",
                {200: list[PlaybookSummary]},
            ),
            Route(
                "POST",
                "/api/playbooks",
                self.register_playbook,
                "Validate and register a playbook (YAML text, or JSON with script files)",
                "playbooks",
                {
                    200: Registered,
                    201: Registered,
                    400: ErrorBody,
                    415: ErrorBody,
                    422: ErrorBody,
                    503: ErrorBody,
                    504: ErrorBody,
                },
                body=PlaybookBody,
                text_body=YAML_TYPES,
            ),
            Route(
                "GET",
                "/api/playbooks/{path:.+}",
                self.get_playbook,
                "A playbook's content at a version, or its latest",
                "playbooks",
                {200: PlaybookContent, 400: ErrorBody, 404: ErrorBody},
                query=(VERSION_QUERY,),
            ),
        ]

    async def list_playbooks(self, request: web.Request) -> web.Response:
        """Every registered path with its latest version."""
        rows = await self.client.store.list_playbooks()
        return json_response([PlaybookSummary(**row) for row in rows])

    async def get_playbook(self, request: web.Request) -> web.Response:
        """A playbook's content at `?version=N`, or its latest version."""
        path = request.match_info["path"]
        version = int_query(request, "version", maximum=MAX_VERSION)
        found, content = await self.client.store.get_playbook(path, version)
        return json_response(PlaybookContent(path=path, version=found, content=content))

    async def register_playbook(self, request: web.Request) -> web.Response:
        """Validate and register a playbook through the catalog actor."""
        if request.content_type == "application/json":
            sent = await body(request, PlaybookBody)
            content, files = sent.content, sent.files
        elif request.content_type in YAML_TYPES:
            try:
                content = await request.text()
            except UnicodeDecodeError:
                raise ApiError(400, "the playbook is not valid UTF-8 text") from None
            files = {}
        else:
            raise ApiError(
                415,
                "send the playbook as YAML (Content-Type: text/yaml) or as "
                'JSON {"content": ...} (Content-Type: application/json)',
            )
        if not content.strip():
            raise ApiError(400, "the playbook is empty")
        try:
            reply = await self.client.register_content(content, files=files)
        except CatalogUnavailable as exc:
            raise registration_refused(exc) from None
        return json_response(
            Registered(path=reply.path, version=reply.version, created=reply.created),
            status=201 if reply.created else 200,
        )
