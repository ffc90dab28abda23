"""The REST API: routes over the store, and over the actors through NATS.

Every route answers JSON; errors are `{"error": message}` (plus `problems` for an invalid
playbook). Execution ids are 63-bit integers, sent as strings of digits so that JSON
readers in any language keep every digit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from typing import Annotated, Any, Final, TypeVar

import msgspec
import nats.errors
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from nats.aio.msg import Msg

from noetl.api.console import setup_console
from noetl.bus import CATALOG_REGISTER, events_subject
from noetl.client import Client
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import (
    CatalogError,
    ConfigError,
    ExecutionNotFound,
    NoetlError,
    PlaybookError,
    StoreError,
)
from noetl.messages import CatalogReply, RegisterPlaybook, encode
from noetl.secrets import redact
from noetl.store.credentials import (
    Credential,
    CredentialInfo,
    CredentialStore,
    validate_credential,
    validate_name,
)

__all__ = ["make_app"]

log = logging.getLogger("noetl.api")

# Stream timings, module attributes so that tests can shorten them.
POLL_SECONDS: float = 1.0  # how often a stream reads the execution's status from the store
KEEPALIVE_SECONDS: float = 15.0  # idle time before a stream sends a comment line
APPEAR_SECONDS: float = 10.0  # how long a stream waits for a just-started execution's row

_YAML_TYPES: Final = frozenset(
    {"text/yaml", "application/x-yaml", "application/yaml", "text/x-yaml", "text/plain"}
)
_ID: Final = re.compile(r"[0-9]{1,19}")
_MAX_ID: Final = 2**63 - 1
_MAX_LIST: Final = 1000
_MAX_VERSION: Final = 2**31 - 1  # catalog versions are PostgreSQL `int`
# Announcement batches a stream buffers for a slow reader before dropping new ones: they are
# best effort anyway, and the final `end` event comes from the store.
_STREAM_BUFFER: Final = 1024
_REGISTER_TIMEOUT: Final = 30.0
# Seconds a stream waits for the announcements of an end the store already shows.
_ANNOUNCE_GRACE: Final = 1.0

T = TypeVar("T")


class _ApiError(Exception):
    """A refusal with its HTTP status, turned into a JSON body by the error middleware."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# -- request bodies -------------------------------------------------------------------------


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Common base: a misspelt field is refused rather than silently ignored."""


class _PlaybookBody(_Body):
    content: Annotated[str, msgspec.Meta(min_length=1)]
    # Script files the playbook names by relative path, as `Client.register` sends them.
    files: dict[str, str] = {}


class _StartBody(_Body):
    path: Annotated[str, msgspec.Meta(min_length=1)]
    version: Annotated[int, msgspec.Meta(ge=1, le=_MAX_VERSION)] | None = None
    workload: dict[str, Any] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


class _CancelBody(_Body):
    reason: Annotated[str, msgspec.Meta(min_length=1)] = "cancelled by user"


class _RestartBody(_Body):
    from_step: str | None = msgspec.field(default=None, name="from")
    workload: dict[str, Any] | None = None


class _CredentialBody(_Body):
    type: str
    data: dict[str, Any]


async def _body(request: web.Request, kind: type[T], *, optional: bool = False) -> T:
    """The request's JSON body as `kind`; an empty body means `{}` when `optional`."""
    raw = await request.read()
    if not raw.strip():
        if not optional:
            raise _ApiError(400, "the request needs a JSON body")
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise _ApiError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _ApiError(400, f"the request body is not valid JSON: {exc}") from None


# -- responses ------------------------------------------------------------------------------


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return _json({"error": message, **extra}, status=status, headers=headers)


def _sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; compact JSON never contains a newline, so one `data:` line."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + msgspec.json.encode(data) + b"\n\n"


def _info(item: CredentialInfo | Credential) -> dict[str, Any]:
    return {
        "name": item.name,
        "type": item.type,
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


# -- request parameters ---------------------------------------------------------------------


def _execution_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if _ID.fullmatch(text) and int(text) <= _MAX_ID:
        return int(text)
    raise _ApiError(400, f"an execution id is a 63-bit integer written in digits, got {text!r}")


def _int_query(request: web.Request, name: str, *, maximum: int) -> int | None:
    """Query parameter `name` as an integer from 1 to `maximum`, None when absent."""
    text = request.query.get(name)
    if text is None:
        return None
    if text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= maximum:
        return int(text)
    raise _ApiError(400, f"`{name}` must be an integer from 1 to {maximum}, got {text!r}")


# -- middlewares ----------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as `{"error": ...}` with the status that says whose fault it is."""
    try:
        return await handler(request)
    except _ApiError as exc:
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
        return _error(500, str(exc))
    except NoetlError as exc:  # the request asks for something that cannot be done
        return _error(400, str(exc))
    except nats.errors.Error as exc:
        log.error("NATS error on %s %s: %r", request.method, request.path, exc)
        return _error(503, f"the message bus is unavailable: {exc!r}")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error (see the server log)")


def _auth(token: str) -> Middleware:
    """A middleware requiring `Authorization: Bearer <token>` on every `/api` route."""
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/api" or request.path.startswith("/api/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # Constant time, so the response time tells nothing about the token.
            if not (
                scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
            ):
                raise _ApiError(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    return auth


# -- routes ---------------------------------------------------------------------------------


class _Gateway:
    """The route handlers, over one client's store and bus."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._credentials: CredentialStore | None = None
        # One event per open stream, set at shutdown so streams end instead of holding the
        # server open until its shutdown timeout.
        self._streams: set[asyncio.Event] = set()

    def routes(self) -> list[web.RouteDef]:
        """Every route of the API."""
        return [
            web.get("/health", self.health),
            web.get("/api/playbooks", self.list_playbooks),
            web.post("/api/playbooks", self.register_playbook),
            web.get("/api/playbooks/{path:.+}", self.get_playbook),
            web.get("/api/executions", self.list_executions),
            web.post("/api/executions", self.start_execution),
            web.get("/api/executions/{id}", self.get_execution),
            web.get("/api/executions/{id}/events", self.list_events),
            web.get("/api/executions/{id}/stream", self.stream_execution),
            web.post("/api/executions/{id}/cancel", self.cancel_execution),
            web.post("/api/executions/{id}/restart", self.restart_execution),
            web.get("/api/credentials", self.list_credentials),
            web.get("/api/credentials/{name}", self.get_credential),
            web.put("/api/credentials/{name}", self.put_credential),
            web.delete("/api/credentials/{name}", self.delete_credential),
        ]

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the server answers."""
        return _json({"status": "ok"})

    # -- playbooks ----------------------------------------------------------------------

    async def list_playbooks(self, request: web.Request) -> web.Response:
        """Every registered path with its latest version."""
        return _json(await self.client.store.list_playbooks())

    async def get_playbook(self, request: web.Request) -> web.Response:
        """A playbook's content at `?version=N`, or its latest version."""
        path = request.match_info["path"]
        version = _int_query(request, "version", maximum=_MAX_VERSION)
        found, content = await self.client.store.get_playbook(path, version)
        return _json({"path": path, "version": found, "content": content})

    async def register_playbook(self, request: web.Request) -> web.Response:
        """Validate and register a playbook through the catalog actor."""
        if request.content_type == "application/json":
            body = await _body(request, _PlaybookBody)
            content, files = body.content, body.files
        elif request.content_type in _YAML_TYPES:
            try:
                content = await request.text()
            except UnicodeDecodeError:
                raise _ApiError(400, "the playbook is not valid UTF-8 text") from None
            files = {}
        else:
            raise _ApiError(
                415,
                "send the playbook as YAML (Content-Type: text/yaml) or as "
                'JSON {"content": ...} (Content-Type: application/json)',
            )
        if not content.strip():
            raise _ApiError(400, "the playbook is empty")
        request_data = encode(RegisterPlaybook(content=content, files=files))
        try:
            data = await self.client.bus.request(
                CATALOG_REGISTER, request_data, timeout=_REGISTER_TIMEOUT
            )
        except nats.errors.NoRespondersError:
            raise _ApiError(
                503,
                "no catalog actor is running (start one with `noetl-runtime up --role catalog`)",
            ) from None
        except nats.errors.TimeoutError:
            raise _ApiError(
                504, f"the catalog actor did not answer within {_REGISTER_TIMEOUT:g} s"
            ) from None
        reply = msgspec.msgpack.decode(data, type=CatalogReply)
        if not reply.ok:
            raise PlaybookError(reply.problems)
        return _json(
            {"path": reply.path, "version": reply.version, "created": reply.created},
            status=201 if reply.created else 200,
        )

    # -- executions ---------------------------------------------------------------------

    async def list_executions(self, request: web.Request) -> web.Response:
        """The most recent executions, newest first (`?limit=`, default 50)."""
        limit = _int_query(request, "limit", maximum=_MAX_LIST)
        return _json(await self.client.store.list_executions(50 if limit is None else limit))

    async def start_execution(self, request: web.Request) -> web.Response:
        """Start an execution of a registered playbook; it runs asynchronously."""
        body = await _body(request, _StartBody)
        eid = await self.client.start(
            body.path, version=body.version, workload=body.workload, timeout=body.timeout
        )
        return _json(
            {"execution_id": str(eid)}, status=202, headers={"Location": f"/api/executions/{eid}"}
        )

    async def get_execution(self, request: web.Request) -> web.Response:
        """The execution document: status, result, each step's result, vars."""
        return _json(await self.client.store.describe(_execution_id(request)))

    async def list_events(self, request: web.Request) -> web.Response:
        """Every event of the execution, oldest first."""
        rows = await self.client.store.list_events(_execution_id(request))
        # Event ids are 64-bit like execution ids: strings, for the same reason.
        return _json([{**row, "event_id": str(row["event_id"])} for row in rows])

    async def cancel_execution(self, request: web.Request) -> web.Response:
        """Ask the execution's coordinator to cancel it."""
        eid = _execution_id(request)
        body = await _body(request, _CancelBody, optional=True)
        await self.client.cancel(eid, body.reason)
        return _json({"execution_id": str(eid)}, status=202)

    async def restart_execution(self, request: web.Request) -> web.Response:
        """Start a new execution that keeps what this one decided before a step."""
        eid = _execution_id(request)
        body = await _body(request, _RestartBody, optional=True)
        new_id = await self.client.restart(eid, from_step=body.from_step, workload=body.workload)
        return _json(
            {"execution_id": str(new_id), "restarted_from": str(eid)},
            status=202,
            headers={"Location": f"/api/executions/{new_id}"},
        )

    async def stream_execution(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: each announced event, then `end` with the final document."""
        eid = _execution_id(request)
        batches: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(_STREAM_BUFFER)

        async def on_msg(msg: Msg) -> None:
            with contextlib.suppress(asyncio.QueueFull, msgspec.DecodeError):
                batches.put_nowait(msgspec.json.decode(msg.data))

        # Subscribed before the first read, so nothing committed in between is missed.
        sub = await self.client.bus.nc.subscribe(events_subject(eid), cb=on_msg)
        closing = asyncio.Event()
        self._streams.add(closing)
        try:
            status = await self._status_once_known(eid)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # proxies such as nginx must not buffer it
                }
            )
            await response.prepare(request)
            try:
                await self._pump(request, response, eid, status, batches, closing)
            except ConnectionResetError:
                pass  # the client went away
            except Exception as exc:
                # Headers are sent: the failure can only be reported inside the stream.
                log.exception("stream of execution %s failed", eid)
                with contextlib.suppress(ConnectionResetError):
                    await response.write(_sse({"error": str(exc)}, "error"))
            return response
        finally:
            self._streams.discard(closing)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _status_once_known(self, eid: int) -> str:
        """The execution's status, waiting up to APPEAR_SECONDS for a just-started one
        (a start is accepted before its coordinator has recorded it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + APPEAR_SECONDS
        while True:
            try:
                return str((await self.client.store.get_execution(eid))["status"])
            except ExecutionNotFound:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.1)

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        eid: int,
        status: str,
        batches: asyncio.Queue[list[dict[str, Any]]],
        closing: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        stored_end = status in TERMINAL_STATUSES
        announced_end = False
        next_poll = loop.time() + POLL_SECONDS
        next_ping = loop.time() + KEEPALIVE_SECONDS
        while not (stored_end or announced_end):
            transport = request.transport
            if closing.is_set() or transport is None or transport.is_closing():
                return  # server shutting down, or the client disconnected
            try:
                wait = max(0.0, min(next_poll, next_ping) - loop.time())
                batch = await asyncio.wait_for(batches.get(), wait)
            except TimeoutError:
                batch = None
            if batch is not None:
                announced_end = await self._forward(response, batch)
                next_ping = loop.time() + KEEPALIVE_SECONDS
            now = loop.time()
            if not announced_end and now >= next_poll:
                # Announcements are best effort: the store says for sure when it ended.
                row = await self.client.store.get_execution(eid)
                stored_end = row["status"] in TERMINAL_STATUSES
                next_poll = now + POLL_SECONDS
            if not (stored_end or announced_end) and now >= next_ping:
                await response.write(b": keep-alive\n\n")
                next_ping = now + KEEPALIVE_SECONDS
        if stored_end and status not in TERMINAL_STATUSES:
            # Events are announced just after their commit, so the poll can see the end
            # first: give the last announcements a moment to arrive before `end`.
            deadline = loop.time() + _ANNOUNCE_GRACE
            while not announced_end and (left := deadline - loop.time()) > 0:
                try:
                    batch = await asyncio.wait_for(batches.get(), left)
                except TimeoutError:
                    break
                announced_end = await self._forward(response, batch)
        while not batches.empty():
            await self._forward(response, batches.get_nowait())
        await response.write(_sse(await self.client.store.describe(eid), "end"))

    @staticmethod
    async def _forward(response: web.StreamResponse, batch: list[dict[str, Any]]) -> bool:
        """Send a batch of announced events; True when one of them ends the execution."""
        ended = False
        for event in batch:
            await response.write(_sse(event))
            ended = ended or (
                str(event.get("type", "")).startswith("execution.")
                and event.get("status") in TERMINAL_STATUSES
            )
        return ended

    async def close_streams(self, app: web.Application) -> None:
        """`on_shutdown`: end every open stream (clients reconnect elsewhere)."""
        for closing in self._streams:
            closing.set()

    # -- credentials --------------------------------------------------------------------

    async def _store(self) -> CredentialStore:
        if self._credentials is None:
            # Loaded on first use, not at startup: a gateway that never touches credentials
            # needs no key (and does not create a key file in NOETL_HOME).
            try:
                self._credentials = await CredentialStore.open(
                    self.client.store.pool, self.client.settings
                )
            except ConfigError as exc:
                raise _ApiError(500, f"credentials are unavailable: {exc}") from None
        return self._credentials

    async def list_credentials(self, request: web.Request) -> web.Response:
        """Names, types and dates of every credential (never data)."""
        store = await self._store()
        return _json([_info(item) for item in await store.list()])

    async def get_credential(self, request: web.Request) -> web.Response:
        """A credential with its secret values masked."""
        name = request.match_info["name"]
        store = await self._store()
        try:
            found = await store.find(name)
        except ConfigError as exc:  # stored with another key: the server's problem
            raise _ApiError(500, str(exc)) from None
        if found is None:
            raise _ApiError(404, f"no credential `{name}`")
        return _json({**_info(found), "data": redact(found.data)})

    async def put_credential(self, request: web.Request) -> web.Response:
        """Create or replace a credential: 201 when created, 200 when replaced."""
        name = request.match_info["name"]
        body = await _body(request, _CredentialBody)
        try:
            validate_name(name)
            kind, data = validate_credential(body.type, body.data)
        except ConfigError as exc:
            raise _ApiError(400, str(exc)) from None
        store = await self._store()
        created = await store.set(name, kind, data)
        return _json(
            {"name": name, "type": kind, "created": created}, status=201 if created else 200
        )

    async def delete_credential(self, request: web.Request) -> web.Response:
        """Delete a credential: 204, or 404 when there is none."""
        name = request.match_info["name"]
        store = await self._store()
        if not await store.delete(name):
            raise _ApiError(404, f"no credential `{name}`")
        return web.Response(status=204)


def make_app(client: Client, *, token: str | None = None) -> web.Application:
    """The API application over `client`; with `token`, every `/api` route requires
    `Authorization: Bearer <token>` (`/health` never does)."""
    middlewares: list[Middleware] = [_errors] if not token else [_errors, _auth(token)]
    app = web.Application(middlewares=middlewares)
    gateway = _Gateway(client)
    app.add_routes(gateway.routes())
    app.on_shutdown.append(gateway.close_streams)
    setup_console(app, client)
    return app
