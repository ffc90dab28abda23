"""A local HTTP API for tests: JSON, paging, errors, slow and large bodies, auth, scripts.

Served by aiohttp on 127.0.0.1 on a port the OS picks. Use it as an async context manager
(`async with serve_http_api() as api: ...`) or with `start_http_api()` / `api.stop()`;
`api.url` is its base URL (https, with a fresh self-signed certificate, under `tls=True`).
Endpoints:

- `GET /json` → `{"message": "hello", "numbers": [1, 2, 3]}`; `GET /text` → plain text.
- `GET|POST /items?page=N&size=M&delay=S` → `{"data": [...], "paging": {"page", "size", "total",
  "hasMore"}}` over `ITEM_COUNT` items (page from 1; a header `X-Page: N` wins over the query;
  POST may send page/size as JSON).
- `GET /cursor?cursor=C&size=M` → `{"data": [...], "next_cursor": C2 or null}`.
- `ANY /status/{code}?retry_after=V&body=TEXT` → that status (and Retry-After header).
- `ANY /flaky/{key}?fail=N&status=S&retry_after=V` → status S (503) with `Retry-After: V` (0)
  for the first N calls per key, then `{"calls": n}`; `api.calls[key]` counts them.
- `GET /slow?seconds=S` → waits, then `{"slept": S}`.
- `GET /large?bytes=N&length=1` → N bytes streamed (Content-Length only with length=1).
- `ANY /echo` → `{"method", "path", "query", "headers", "body", "json", "form"}`.
- `GET /auth/bearer`, `/auth/basic`, `/auth/header` → 200 with the right credentials
  (`TOKEN`, `USERNAME`/`PASSWORD`, header `API_KEY_HEADER: API_KEY`), else 401.
- `GET /redirect?to=PATH&status=302` → a redirect to PATH.
- `GET /scripts/{name}` → `api.scripts[name]` as text, or 404.

Every request is appended to `api.requests` as `(method, path_qs, headers)`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BasicAuth, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ITEM_COUNT = 35
TOKEN = "test-token-123"
USERNAME = "alice"
PASSWORD = "s3cret-pass"
API_KEY_HEADER = "X-Api-Key"
API_KEY = "key-456"


@dataclass
class HttpApi:
    """A running test API: its base `url`, served `scripts` and what it received."""

    url: str
    runner: web.AppRunner
    scripts: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop serving and close every connection."""
        await self.runner.cleanup()


_API_KEY = web.AppKey("api", HttpApi)


def _items(start: int, count: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"item-{i}"} for i in range(start, min(start + count, ITEM_COUNT))]


def _int(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from exc


async def _json(_: web.Request) -> web.Response:
    return web.json_response({"message": "hello", "numbers": [1, 2, 3]})


async def _text(_: web.Request) -> web.Response:
    return web.Response(text="plain text body")


async def _paged(request: web.Request) -> web.Response:
    page, size = _int(request, "page", 1), _int(request, "size", 10)
    page = int(request.headers.get("X-Page", page))  # paging by header, for `next_page.headers`
    # `delay=S` makes every page slow, so a test can kill the mesh in the middle of a series.
    await asyncio.sleep(float(request.query.get("delay", 0)))
    if request.method == "POST" and request.can_read_body:
        body = await request.json()
        page, size = int(body.get("page", page)), int(body.get("size", size))
    if page < 1 or size < 1:
        raise web.HTTPBadRequest(text="page and size start at 1")
    return web.json_response(
        {
            "data": _items((page - 1) * size, size),
            "paging": {
                "page": page,
                "size": size,
                "total": ITEM_COUNT,
                "hasMore": page * size < ITEM_COUNT,
            },
        }
    )


async def _cursor(request: web.Request) -> web.Response:
    start, size = _int(request, "cursor", 0), _int(request, "size", 10)
    following = start + size
    return web.json_response(
        {"data": _items(start, size), "next_cursor": following if following < ITEM_COUNT else None}
    )


async def _status(request: web.Request) -> web.Response:
    headers = {}
    if "retry_after" in request.query:
        headers["Retry-After"] = request.query["retry_after"]
    body = request.query.get("body", f"status {request.match_info['code']}")
    return web.Response(status=int(request.match_info["code"]), text=body, headers=headers)


async def _flaky(request: web.Request) -> web.Response:
    api: HttpApi = request.app[_API_KEY]
    key = request.match_info["key"]
    api.calls[key] = api.calls.get(key, 0) + 1
    if api.calls[key] <= _int(request, "fail", 1):
        return web.Response(
            status=_int(request, "status", 503),
            text="try again",
            headers={"Retry-After": request.query.get("retry_after", "0")},
        )
    return web.json_response({"calls": api.calls[key]})


async def _slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "1"))
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def _large(request: web.Request) -> web.StreamResponse:
    size = _int(request, "bytes", 1024)
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    if request.query.get("length") == "1":
        response.content_length = size
    await response.prepare(request)
    chunk = b"x" * 65536
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        try:
            await response.write(piece)
        except ConnectionResetError:  # the client stopped reading, as it may
            return response
        sent += len(piece)
    await response.write_eof()
    return response


async def _echo(request: web.Request) -> web.Response:
    raw = await request.text()
    parsed: Any = None
    if request.content_type == "application/json" and raw:
        parsed = json.loads(raw)
    form = (
        dict(await request.post())
        if request.content_type == "application/x-www-form-urlencoded"
        else None
    )
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": {key: request.query.getall(key) for key in request.query},
            "headers": dict(request.headers),
            "body": raw,
            "json": parsed,
            "form": {key: str(value) for key, value in form.items()} if form is not None else None,
        }
    )


async def _auth_bearer(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        raise web.HTTPUnauthorized(text="bad or missing bearer token")
    return web.json_response({"auth": "bearer", "ok": True})


async def _auth_basic(request: web.Request) -> web.Response:
    try:
        auth = BasicAuth.decode(request.headers.get("Authorization", ""))
    except ValueError as exc:
        raise web.HTTPUnauthorized(text="missing basic credentials") from exc
    if (auth.login, auth.password) != (USERNAME, PASSWORD):
        raise web.HTTPUnauthorized(text="bad basic credentials")
    return web.json_response({"auth": "basic", "user": auth.login, "ok": True})


async def _auth_header(request: web.Request) -> web.Response:
    if request.headers.get(API_KEY_HEADER) != API_KEY:
        raise web.HTTPUnauthorized(text=f"bad or missing {API_KEY_HEADER}")
    return web.json_response({"auth": "header", "ok": True})


async def _redirect(request: web.Request) -> web.Response:
    status = _int(request, "status", 302)
    return web.Response(status=status, headers={"Location": request.query.get("to", "/json")})


async def _script(request: web.Request) -> web.Response:
    api: HttpApi = request.app[_API_KEY]
    name = request.match_info["name"]
    if name not in api.scripts:
        raise web.HTTPNotFound(text=f"no script {name}")
    return web.Response(text=api.scripts[name], content_type="text/x-python")


@web.middleware
async def _record(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[_API_KEY].requests.append((request.method, request.path_qs, dict(request.headers)))
    response: web.StreamResponse = await handler(request)
    return response


def make_app() -> web.Application:
    """The test API's application (without a server)."""
    app = web.Application(middlewares=[_record])
    app.router.add_get("/json", _json)
    app.router.add_get("/text", _text)
    app.router.add_route("*", "/items", _paged)
    app.router.add_get("/cursor", _cursor)
    app.router.add_route("*", "/status/{code:\\d+}", _status)
    app.router.add_route("*", "/flaky/{key}", _flaky)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/large", _large)
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/auth/bearer", _auth_bearer)
    app.router.add_get("/auth/basic", _auth_basic)
    app.router.add_get("/auth/header", _auth_header)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/scripts/{name:.+}", _script)
    return app


def self_signed_context() -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only; they are gone once loaded.
    with tempfile.TemporaryDirectory(prefix="noetl-tls-") as directory:
        cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_file, key_file)
    return context


async def start_http_api(scripts: dict[str, str] | None = None, *, tls: bool = False) -> HttpApi:
    """Start the test API on 127.0.0.1 on a free port; stop it with `await api.stop()`."""
    app = make_app()
    # Handlers stop when their client goes away, so a timed-out /slow call ends at once.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    api = HttpApi(url="", runner=runner, scripts=dict(scripts or {}))
    app[_API_KEY] = api
    await runner.setup()
    # Port 0: the OS picks a free port at bind time, so no other process can take it first.
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed_context() if tls else None)
    await site.start()
    host, port = runner.addresses[0][:2]
    api.url = f"{'https' if tls else 'http'}://{host}:{port}"
    return api


@asynccontextmanager
async def serve_http_api(
    scripts: dict[str, str] | None = None, *, tls: bool = False
) -> AsyncIterator[HttpApi]:
    """The test API, running for the duration of the `async with` block."""
    api = await start_http_api(scripts, tls=tls)
    try:
        yield api
    finally:
        await api.stop()
