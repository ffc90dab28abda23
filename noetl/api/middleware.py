"""The middlewares: errors as JSON, the bearer token, and request counting."""

from __future__ import annotations

import hmac
import logging

import nats.errors
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from noetl.api.common import ApiError, json_response
from noetl.api.schemas import ErrorBody
from noetl.errors import CatalogError, ExecutionNotFound, NoetlError, PlaybookError, StoreError
from noetl.metrics import HTTP_REQUESTS

__all__ = ["auth", "count_requests", "errors"]

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
        if exc.extra:
            return json_response(exc.extra, status=exc.status, headers=exc.headers)
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
        log.error("store error on %s %s: %s", request.method, request.path, exc)
        return _error(500, "the store refused the operation (see the server log)")
    except NoetlError as exc:  # the request asks for something that cannot be done
        return _error(400, str(exc))
    except nats.errors.Error as exc:
        log.error("NATS error on %s %s: %r", request.method, request.path, exc)
        return _error(503, "the message bus is unavailable")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error (see the server log)")


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
