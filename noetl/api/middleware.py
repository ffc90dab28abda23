"""The middlewares: errors as JSON, the bearer token, and request counting."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Final

import nats.errors
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from noetl.api.common import ApiError, json_response
from noetl.api.schemas import ErrorBody
from noetl.errors import CatalogError, ExecutionNotFound, NoetlError, PlaybookError, StoreError
from noetl.metrics import HTTP_REQUESTS

__all__ = ["auth", "count_requests", "errors", "guard", "loggable", "read_body"]

log = logging.getLogger("noetl.api")


def _error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    problems: list[str] | None = None,
) -> web.Response:
    return json_response(
        ErrorBody(error=message, problems=problems), status=status, headers=headers
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as `{"error": ...}` with the status that says whose fault it is; never a
    stack trace (that goes to the server's log)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (no such route, method not allowed, body too large).
        kept = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in ("content-type", "content-length")
        }
        return _error(exc.status, exc.reason, headers=kept)
    except PlaybookError as exc:
        return _error(422, "invalid playbook", problems=exc.problems)
    except (ExecutionNotFound, CatalogError) as exc:
        return _error(404, str(exc))
    except StoreError as exc:
        log.error("store error on %s: %s", loggable(request), exc)
        return _error(500, "the store refused the operation (see the server log)")
    except NoetlError as exc:  # the request asks for something that cannot be done
        return _error(400, str(exc))
    except nats.errors.Error as exc:
        log.error("NATS error on %s: %r", loggable(request), exc)
        return _error(503, "the message bus is unavailable")
    except Exception:
        log.exception("unexpected error on %s", loggable(request))
        return _error(500, "internal error (see the server log)")


def loggable(request: web.Request) -> str:
    """The request's method and path as a log may show them: the path as sent (percent-
    encoded), its control characters escaped, so that it cannot forge log lines; never a
    header (the bearer token travels in one)."""
    path = request.raw_path.encode("unicode_escape").decode("ascii")
    return f"{request.method} {path[:300]}"


def auth(token: str, public: frozenset[str]) -> Middleware:
    """Require `Authorization: Bearer <token>` on every `/api` route but the `public` paths."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (path == "/api" or path.startswith("/api/")) and path not in public:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # Constant time, so the response time tells nothing about the token.
            if not (
                scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
            ):
                raise ApiError(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    return check


_UNSAFE: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PROBES: Final = frozenset({"/health", "/api/health", "/api/ready", "/metrics"})
# What a browser may send across origins without asking first (a "simple" request) is
# form data or text; a state-changing request from a page must be JSON or YAML instead.
_BROWSER_BODY: Final = frozenset(
    {"application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
)


def guard(allowed_hosts: frozenset[str]) -> Middleware:
    """Refuse what a web page could make a browser send: a request naming another `Host`
    than those allowed (when `allowed_hosts` is set: DNS rebinding), and a state-changing
    request from another origin, or from a page in a form or text body.

    Browsers send `Origin` with every POST, PUT, PATCH and DELETE; scripts and CLIs (curl,
    NoETL's clients) do not, and may send any content type, as NoETL's examples do.
    """

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = (request.host or "").lower()
        # Probes name the pod's address as Host; they change nothing and hold no data.
        probe = request.method == "GET" and request.path in _PROBES
        if allowed_hosts and not probe and _hostname(host) not in allowed_hosts:
            raise ApiError(400, "the request's Host is not one this API serves")
        if request.method in _UNSAFE:
            origin = request.headers.get("Origin")
            fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
            if fetch_site == "cross-site" or (origin is not None and not _same(origin, host)):
                raise ApiError(403, "cross-origin request refused")
            if (
                origin is not None
                and request.can_read_body
                and request.content_type not in _BROWSER_BODY
            ):
                raise ApiError(415, "a request from a page must send JSON or YAML")
        return await handler(request)

    return check


def _hostname(host: str) -> str:
    """`host` without its port (`[::1]:8082` -> `::1`)."""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same(origin: str, host: str) -> bool:
    """Whether `origin` (`scheme://host[:port]`) names the host the request was sent to."""
    url = URL(origin)
    if origin == "null" or not url.is_absolute() or url.host is None:
        return False
    port = "" if url.explicit_port is None else f":{url.explicit_port}"
    name = f"[{url.host}]" if ":" in url.host else url.host
    return f"{name}{port}".lower() == host or url.host.lower() == host


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request by its route template (never the concrete URL, whose ids would make
    a series per execution) and final status."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()


def read_body(seconds: float) -> Middleware:
    """Reads a request's body, all of it within `seconds`, before the handler runs (handlers
    then get it from memory): a client sending its body slower than that, or less of it than
    its `Content-Length` says, is answered 408 and its connection closed, instead of holding
    a request open for as long as it likes. Responses, event streams included, are not timed.
    """

    @web.middleware
    async def read_body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.can_read_body:
            try:
                async with asyncio.timeout(seconds):
                    await request.read()
            except TimeoutError:
                log.info("%s: body not received within %g s", loggable(request), seconds)
                raise ApiError(
                    408,
                    f"the request body did not arrive within {seconds:g} s",
                    headers={"Connection": "close"},
                ) from None
        return await handler(request)

    return read_body_middleware
