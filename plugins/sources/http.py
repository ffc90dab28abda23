"""Scripts over HTTP(S): an absolute URL, or a uri relative to `source.endpoint`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext
from plugins.egress import session_options
from plugins.http import auth_headers

DEFAULT_TIMEOUT = 30.0


async def read(uri: str, source: Mapping[str, Any], ctx: ToolContext) -> bytes:
    """The body of the script at `uri`, fetched with `source`'s method, headers and auth."""
    url = _url(uri, source)
    method = str(source.get("method") or "GET").upper()
    given = source.get("headers") or {}
    if not isinstance(given, Mapping):
        raise ToolError(f"script {uri}: `source.headers` must be a mapping", error_type="script")
    headers = {str(key): str(value) for key, value in given.items()}
    headers.update(await auth_headers(ctx, source.get("auth")))
    timeout = float(source.get("timeout") or DEFAULT_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout), **session_options(ctx.egress)
            ) as session,
            session.request(method, url, headers=headers) as resp,
        ):
            if not 200 <= resp.status < 300:
                raise ToolError(
                    f"script {method} {url}: HTTP {resp.status}",
                    error_type="script",
                    status_code=resp.status,
                )
            return await resp.read()
    except TimeoutError as exc:
        raise ToolTimeout(f"script {url}: no answer within {timeout:g}s") from exc
    except aiohttp.ClientError as exc:
        raise ToolError(f"script {url}: {type(exc).__name__}: {exc}", error_type="script") from exc


def _url(uri: str, source: Mapping[str, Any]) -> str:
    if uri.startswith(("http://", "https://")):
        return uri
    endpoint = source.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise ToolError(
            f"script {uri}: a relative http script needs `source.endpoint`, "
            "the base URL it is relative to",
            error_type="script",
        )
    return f"{endpoint.rstrip('/')}/{uri.removeprefix('./').lstrip('/')}"
