"""The REST API application: every route module's routes, the middlewares, the OpenAPI
document built from the same table.

Every route answers JSON (but the event stream and `/metrics`); errors are
`{"error": message}`. Execution ids are 63-bit integers, sent as strings of digits so that
JSON readers in any language keep every digit.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from aiohttp import web
from aiohttp.typedefs import Middleware

from noetl.api import middleware
from noetl.api.common import Route
from noetl.api.console import ConsoleRoutes, setup_console
from noetl.api.credentials import Credentials
from noetl.api.executions import Executions
from noetl.api.health import Probes
from noetl.api.metrics import Metrics
from noetl.api.noetl_catalog import NoetlCatalog
from noetl.api.noetl_compat import NoetlExecutions
from noetl.api.openapi import OpenApi
from noetl.api.playbooks import Playbooks
from noetl.api.sql import SqlEndpoint
from noetl.api.stream import Streams
from noetl.client import Client

__all__ = ["make_app", "route_table"]


def _version() -> str:
    try:
        return package_version("noetl-runtime")
    except PackageNotFoundError:
        return "0"


def route_table(
    client: Client,
    *,
    token: str | None,
    sql: bool,
    sql_timeout: float = 30.0,
    sql_rows: int = 1000,
) -> tuple[list[Route], Streams, OpenApi]:
    """Every route of the API (with the stream registry and the OpenAPI server, which the
    application needs too)."""
    streams = Streams(client)
    spec = OpenApi()
    routes: list[Route] = [
        *Probes(client).routes(),
        *Metrics(client).routes(),
        *spec.routes(),
        *Playbooks(client).routes(),
        *NoetlExecutions(client).routes(),
        *Executions(client).routes(),
        *streams.routes(),
        *Credentials(client).routes(),
        *NoetlCatalog(client).routes(),
        *ConsoleRoutes(client).routes(),
        *SqlEndpoint(
            client, enabled=sql, has_token=bool(token), timeout=sql_timeout, row_cap=sql_rows
        ).routes(),
    ]
    spec.build(routes, _version())
    return routes, streams, spec


def make_app(
    client: Client,
    *,
    token: str | None = None,
    sql: bool | None = None,
    sql_timeout: float = 30.0,
    sql_rows: int = 1000,
    allowed_hosts: frozenset[str] = frozenset(),
    read_timeout: float = 30.0,
) -> web.Application:
    """The API application over `client`. With `token`, every `/api` route but the probes and
    the OpenAPI document requires `Authorization: Bearer <token>` (`/health` and `/metrics`
    never do). Requests a web page could forge are refused (`middleware.guard`), and with
    `allowed_hosts`, so are requests naming another host. `sql` turns `/api/postgres/execute`
    on (default: `NOETL_API_SQL=on`); it still needs the token; each statement runs at most
    `sql_timeout` seconds and answers at most `sql_rows` rows. A request's body must arrive
    within `read_timeout` seconds (`middleware.read_body`)."""
    if sql is None:
        sql = os.environ.get("NOETL_API_SQL", "off").strip().lower() == "on"
    routes, streams, _ = route_table(
        client, token=token, sql=sql, sql_timeout=sql_timeout, sql_rows=sql_rows
    )
    public = frozenset(r.path for r in routes if r.public)
    middlewares: list[Middleware] = [
        middleware.count_requests,
        middleware.errors,
        middleware.guard(allowed_hosts),
    ]
    if token:
        middlewares.append(middleware.auth(token, public))
    middlewares.append(middleware.read_body(read_timeout))
    app = web.Application(middlewares=middlewares)
    app.add_routes(web.route(r.method, r.path, r.handler) for r in routes)
    app.on_shutdown.append(streams.close_streams)
    setup_console(app)
    return app
