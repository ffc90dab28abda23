"""The OpenAPI 3.1 document of the API, generated from the route table and the msgspec
types the handlers decode and encode with (`msgspec.json.schema_components`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec
from aiohttp import web

from noetl.api.common import Route, json_response
from noetl.api.schemas import ErrorBody

__all__ = ["OpenApi", "build_document"]

_REF: Final = "#/components/schemas/{name}"
_PATTERN: Final = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_ERROR_REF: Final = {"$ref": _REF.format(name="ErrorBody")}
_TEXT: Final = {"type": "string"}
# Path parameters that are ids: anything else is refused with 400 (documented as such).
_PATH_SCHEMAS: Final = {
    name: {"type": "string", "pattern": "^[0-9]{1,19}$"} for name in ("id", "execution_id")
}
_STATUS_TEXT: Final = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad request",
    401: "Missing or wrong bearer token",
    403: "Refused",
    404: "Not found",
    409: "Conflict",
    413: "Body over 1 MiB",
    415: "Unsupported media type",
    422: "Invalid playbook",
    500: "Server error",
    503: "Unavailable",
    504: "Timed out",
}


def _operation_id(route: Route) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", _PATTERN.sub(r"by_\1", route.path).lower()).strip("_")
    return f"{route.method.lower()}_{words}"


def _types(routes: Iterable[Route]) -> list[Any]:
    found: list[Any] = [ErrorBody]
    for route in routes:
        for answer in (route.body, *route.responses.values()):
            for kind in answer if isinstance(answer, tuple) else (answer,):
                if kind is not None and kind not in found:
                    found.append(kind)
    return found


def build_document(routes: list[Route], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `routes`."""
    kinds = _types(routes)
    schemas, components = msgspec.json.schema_components(kinds, ref_template=_REF)
    schema_of = dict(zip(map(id, kinds), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = _PATTERN.sub(r"{\1}", route.path)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(name, _TEXT)}
            for name in _PATTERN.findall(route.path)
        ]
        for where, params in (("query", route.query), ("header", route.headers)):
            parameters += [
                {
                    "name": p.name,
                    "in": where,
                    "required": p.required,
                    "schema": p.schema,
                    "description": p.description,
                }
                for p in params
            ]
        responses: dict[str, Any] = {}
        for status, kind in sorted(route.responses.items()):
            answer: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "")}
            if isinstance(kind, tuple):  # one of several bodies
                either = {"anyOf": [schema_of[id(k)] for k in kind]}
                answer["content"] = {"application/json": {"schema": either}}
            elif kind is not None:
                answer["content"] = {"application/json": {"schema": schema_of[id(kind)]}}
            elif status < 300 and status != 204:
                json_doc = route.media == "application/json"
                answer["content"] = {
                    route.media: {"schema": {"type": "object"} if json_doc else _TEXT}
                }
            responses[str(status)] = answer
        operation: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "tags": [route.tag],
            "parameters": parameters,
            "responses": responses,
        }
        if route.body is not None:
            content = {"application/json": {"schema": schema_of[id(route.body)]}}
            content.update({media: {"schema": _TEXT} for media in route.text_body})
            operation["requestBody"] = {"required": not route.body_optional, "content": content}
            responses.setdefault("413", {"description": _STATUS_TEXT[413]})
            responses["413"]["content"] = {"application/json": {"schema": _ERROR_REF}}
        if not route.public:
            operation["security"] = [{"bearer": []}]
            responses["401"] = {
                "description": _STATUS_TEXT[401],
                "content": {"application/json": {"schema": _ERROR_REF}},
            }
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "noetl-runtime's native routes and NoETL's, side by side. Ids are "
            "63-bit integers written as strings of digits.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


class OpenApi:
    """Serves the document, built once from the final route table."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {}

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/openapi.json",
                self.serve,
                "This document (OpenAPI 3.1)",
                "meta",
                {200: None},
                public=True,
            )
        ]

    def build(self, routes: list[Route], version: str) -> None:
        self.document = build_document(routes, title="noetl-runtime API", version=version)

    async def serve(self, request: web.Request) -> web.Response:
        return json_response(self.document)
