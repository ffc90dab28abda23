"""Checks real API traffic against the OpenAPI document: a middleware records each request
and answer, and `violations` validates them with jsonschema (draft 2020-12)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from jsonschema import Draft202012Validator


@dataclass
class Exchange:
    method: str
    route: str
    content_type: str
    request: bytes
    status: int
    response_type: str
    response: bytes


@dataclass
class Recorder:
    """An aiohttp middleware keeping every exchange with a JSON body on either side."""

    seen: list[Exchange] = field(default_factory=list)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        try:
            sent = await request.read()  # what the handler read (cached), if it read it
        except web.HTTPException:
            sent = b""  # over the size cap: the handler answered 413
        resource = request.match_info.route.resource
        if resource is not None and isinstance(response, web.Response):
            body = response.body if isinstance(response.body, bytes) else b""
            self.seen.append(
                Exchange(
                    request.method.lower(),
                    resource.canonical,
                    request.content_type,
                    sent,
                    response.status,
                    response.content_type,
                    body,
                )
            )
        return response

    def install(self, app: web.Application) -> web.Application:
        app.middlewares.insert(0, self.middleware)
        return app


def _errors(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    validator = Draft202012Validator({**schema, "components": spec["components"]})
    return [e.message for e in validator.iter_errors(value)]


def violations(spec: dict[str, Any], seen: list[Exchange]) -> list[str]:
    """Every way the recorded exchanges depart from `spec` (empty when they conform)."""
    found: list[str] = []
    for x in seen:
        where = f"{x.method.upper()} {x.route} -> {x.status}"
        operation = spec["paths"].get(x.route, {}).get(x.method)
        if operation is None:
            found.append(f"{where}: not in the document")
            continue
        if x.request.strip() and x.content_type == "application/json" and x.status < 300:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            found += [
                f"{where}: request: {m}" for m in _errors(spec, schema, json.loads(x.request))
            ]
        answer = operation["responses"].get(str(x.status))
        if answer is None:
            found.append(f"{where}: status not documented")
            continue
        if x.response_type != "application/json":
            continue
        schema = answer.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            found.append(f"{where}: a JSON body where none is documented")
            continue
        found += [f"{where}: response: {m}" for m in _errors(spec, schema, json.loads(x.response))]
    return found
