"""The `http` tool: one HTTP request per call, on a session shared by the runner's calls.

The result is `{id, status, status_code, headers, data, elapsed, url}`; a status of 400 or
more fails the step unless listed in `allow_status`. Bodies are read in bounded pieces, so a
response past `max_response_bytes` fails the step without ever being held whole.
"""

from __future__ import annotations

import base64
import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict

from noetl.config import Settings
from noetl.egress import EgressPolicy
from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext, until_done
from plugins.egress import session_options

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# How much of a failed response is kept: the error shows 500 characters of it.
_ERROR_BODY_BYTES = 8 * 1024
_ERROR_BODY_CHARS = 500
_READ_CHUNK = 64 * 1024

T = TypeVar("T")


class HttpTool:
    """Tool kind `http`: one aiohttp session per instance, opened on first use."""

    kind = "http"

    def __init__(self, *, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self._policy = EgressPolicy.from_settings(settings.http_deny, settings.http_allow)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookie jar: one runner serves many executions, whose cookies must not mix.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
                **session_options(self._policy),
            )
        return self._session

    async def run(self, ctx: ToolContext, spec: dict[str, Any]) -> dict[str, Any]:
        """Send the request described by `spec` and return its result."""
        request = await _build_request(ctx, spec)
        return await until_done(
            ctx, self._send(ctx, request), f"step {ctx.step}: HTTP request", grace=None
        )

    async def _send(self, ctx: ToolContext, request: _Request) -> dict[str, Any]:
        method, url = request.method, request.url
        started = time.monotonic()
        try:
            async with self._client().request(
                method,
                url,
                params=request.params,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=request.timeout),
                allow_redirects=request.follow_redirects,
                ssl=request.verify_ssl,
                **request.body,
            ) as resp:
                code = resp.status
                final_url = str(resp.url)
                if code >= 400 and code not in request.allow_status:
                    raw = await _read_at_most(resp, _ERROR_BODY_BYTES)
                    raise _status_error(ctx, method, final_url, resp, _text(raw, resp))
                raw = await _read_capped(resp, request.max_bytes, method, ctx.mask(final_url))
                headers = _headers(resp)
                data = _parse(raw, resp)
        except TimeoutError as exc:
            raise ToolTimeout(
                ctx.mask(f"HTTP {method} {url} timed out after {request.timeout:g}s")
            ) from exc
        except aiohttp.ClientError as exc:
            message = f"HTTP {method} {url} failed: {type(exc).__name__}: {exc}"
            raise ToolError(ctx.mask(message), error_type="http", url=ctx.mask(url)) from exc
        return {
            "id": ctx.command_id,
            "status": "success",
            "status_code": code,
            "headers": headers,
            "data": data,
            "elapsed": time.monotonic() - started,
            "url": final_url,
        }

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class _Request:
    """A validated request: everything `spec` says, in the form aiohttp takes."""

    method: str
    url: str
    params: list[tuple[str, str]]
    headers: CIMultiDict[str]
    body: dict[str, Any]
    timeout: float
    verify_ssl: bool
    follow_redirects: bool
    allow_status: frozenset[int]
    max_bytes: int


async def _build_request(ctx: ToolContext, spec: Mapping[str, Any]) -> _Request:
    """Validate `spec` (args are for templates only: they are never sent by themselves)."""
    method = spec.get("method") or "GET"
    if not isinstance(method, str):
        raise _spec_error("`method` must be a string like GET or POST")
    url = spec.get("url") or spec.get("endpoint")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise _spec_error(f"`url` must be an http:// or https:// URL, not {url!r}")
    headers = CIMultiDict(_strings(spec.get("headers"), "headers"))
    headers.update(await auth_headers(ctx, spec.get("auth")))
    # A retried command sends the same key, so the server can drop the duplicate.
    headers.setdefault("Idempotency-Key", ctx.command_id)
    timeout = _number(spec.get("timeout"), "timeout") or ctx.timeout or DEFAULT_TIMEOUT
    max_bytes = _number(spec.get("max_response_bytes"), "max_response_bytes")
    allow = spec.get("allow_status") or []
    if not isinstance(allow, list) or not all(
        isinstance(code, int) and not isinstance(code, bool) for code in allow
    ):
        raise _spec_error("`allow_status` must be a list of status codes, like [404]")
    return _Request(
        method=method.upper(),
        url=url,
        params=_params(spec.get("params")),
        headers=headers,
        body=_body(spec),
        timeout=float(timeout),
        verify_ssl=_flag(spec, "verify_ssl"),
        follow_redirects=_flag(spec, "follow_redirects"),
        allow_status=frozenset(allow),
        max_bytes=int(max_bytes or DEFAULT_MAX_RESPONSE_BYTES),
    )


async def auth_headers(ctx: ToolContext, auth: Any) -> dict[str, str]:
    """The headers that `auth` (a credential name or an auth mapping) adds to a request.

    Every secret value used is added to `ctx.secrets`, so the runner masks it.
    """
    if auth is None:
        return {}
    if isinstance(auth, str):
        auth = {"credential": auth}
    if not isinstance(auth, Mapping):
        raise _spec_error("`auth` must be a credential name or a mapping with a `type`")
    data: dict[str, Any] = dict(auth)
    label = "auth"
    name = data.pop("credential", None)
    if name is not None:
        if not isinstance(name, str):
            raise _spec_error("`auth.credential` must be a credential name")
        label = name
        credential = dict(await ctx.credential(ctx.bindings.get(name, name)))
        # The binding's type wins over the credential's own.
        data = {**credential, **data}
    kind = data.get("type") or _infer_auth_type(data)
    if kind == "bearer":
        token = _secret(data, "token", label, kind)
        ctx.secrets[f"{label}.token"] = token
        return {"Authorization": f"Bearer {token}"}
    if kind == "basic":
        username = _secret(data, "username", label, kind)
        password = _secret(data, "password", label, kind)
        encoded = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        ctx.secrets[f"{label}.password"] = password
        ctx.secrets[f"{label}.authorization"] = encoded
        return {"Authorization": encoded}
    if kind == "header":
        header = _secret(data, "name", label, kind)
        value = _secret(data, "value", label, kind)
        ctx.secrets[f"{label}.value"] = value
        return {header: value}
    raise _spec_error(f"auth `{label}`: type must be bearer, basic or header, not {kind!r}")


def _infer_auth_type(data: Mapping[str, Any]) -> str | None:
    """The auth type a credential without `type` implies by its fields."""
    if "token" in data:
        return "bearer"
    if "username" in data:
        return "basic"
    if "name" in data and "value" in data:
        return "header"
    return None


def _secret(data: Mapping[str, Any], key: str, label: str, kind: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _spec_error(f"auth `{label}` of type {kind} needs a non-empty `{key}`")
    return value


def _spec_error(message: str) -> ToolError:
    return ToolError(f"http tool: {message}", error_type="http")


def _flag(spec: Mapping[str, Any], key: str) -> bool:
    value = spec.get(key)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise _spec_error(f"`{key}` must be true or false, not {value!r}")
    return value


def _number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _spec_error(f"`{key}` must be a positive number, not {value!r}")
    return float(value)


def _scalar(value: Any) -> str:
    """A header or query value as text: booleans as true/false, containers as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _strings(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _spec_error(f"`{key}` must be a mapping")
    return {str(k): _scalar(v) for k, v in value.items() if v is not None}


def _params(value: Any) -> list[tuple[str, str]]:
    """Query parameters; a list value repeats its key, a null value drops it."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _spec_error("`params` must be a mapping")
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        for one in item if isinstance(item, list) else [item]:
            if one is not None:
                pairs.append((str(key), _scalar(one)))
    return pairs


def _body(spec: Mapping[str, Any]) -> dict[str, Any]:
    """aiohttp's body argument for whichever of json/payload, body, data is given."""
    given = {
        key: spec[key] for key in ("json", "payload", "body", "data") if spec.get(key) is not None
    }
    if len(given) > 1:
        raise _spec_error(f"give only one request body, not {' and '.join(sorted(given))}")
    if not given:
        return {}
    key, value = next(iter(given.items()))
    if key in ("json", "payload"):
        return {"json": value}
    if key == "body":
        if not isinstance(value, str | bytes):
            raise _spec_error("`body` must be text or bytes (use `json` for structured data)")
        return {"data": value}
    if not isinstance(value, Mapping | str):
        raise _spec_error("`data` must be a mapping of form fields")
    return {"data": _strings(value, "data") if isinstance(value, Mapping) else value}


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, method: str, url: str) -> bytes:
    """The whole body, or ToolError as soon as it is known to pass `cap` bytes."""
    too_large = ToolError(
        f"HTTP response from {method} {url} is larger than max_response_bytes ({cap} bytes)",
        error_type="http",
        status_code=resp.status,
        max_response_bytes=cap,
    )
    if resp.content_length is not None and resp.content_length > cap:
        raise too_large
    body = await _read_at_most(resp, cap)
    if len(body) > cap:
        raise too_large
    return body


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to its end or `limit` + 1 bytes, whichever comes first.

    Never more than one byte past the limit is read: that byte is enough to know.
    """
    body = bytearray()
    while len(body) <= limit:
        chunk = await resp.content.read(min(_READ_CHUNK, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _text(raw: bytes, resp: aiohttp.ClientResponse) -> str:
    try:
        return raw.decode(resp.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _parse(raw: bytes, resp: aiohttp.ClientResponse) -> Any:
    """The parsed JSON body when the server says it is JSON (and it parses), else text."""
    text = _text(raw, resp)
    if "json" in resp.content_type:
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """Response headers; a repeated header's values are joined with ", " (RFC 9110)."""
    headers: dict[str, str] = {}
    for key, value in resp.headers.items():
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _status_error(
    ctx: ToolContext, method: str, url: str, resp: aiohttp.ClientResponse, body: str
) -> ToolError:
    excerpt = ctx.mask(body[:_ERROR_BODY_CHARS])
    details: dict[str, Any] = {"status_code": resp.status, "body": excerpt}
    retry_after = _retry_after(resp.headers.get("Retry-After"))
    if resp.status in (429, 503) and retry_after is not None:
        details["retry_after"] = retry_after
    return ToolError(
        ctx.mask(f"HTTP {resp.status} from {method} {url}: {excerpt}"),
        error_type="http",
        **details,
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait per a Retry-After header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
