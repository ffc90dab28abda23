"""The egress policy (`noetl.egress`) applied to aiohttp sessions, after DNS and redirects.

Host names are checked with the addresses they resolve to, inside the connector's resolver,
so a name that points at a denied address (DNS rebinding included: each connection
resolves anew) is refused; literal addresses, which aiohttp does not resolve, are checked
when a request starts and at every redirect before it is followed.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from noetl.egress import EgressPolicy, parse_address
from noetl.errors import ToolError


class EgressDenied(ToolError):
    """A request to a destination the egress policy refuses."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, error_type="egress")


class _PolicyResolver(AbstractResolver):
    """The default resolver, with each answer checked against the policy."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        reason = self._policy.check(host, [parse_address(a["host"]) for a in answers])
        if reason is not None:
            raise EgressDenied(reason)
        return answers

    async def close(self) -> None:
        await self._inner.close()


def session_options(policy: EgressPolicy) -> dict[str, Any]:
    """Keyword arguments for `aiohttp.ClientSession` that enforce `policy`."""

    def check(url: URL) -> None:
        if url.host is not None:
            reason = policy.check(url.host)
            if reason is not None:
                raise EgressDenied(reason)

    async def on_start(
        _session: aiohttp.ClientSession,
        _ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        check(params.url)

    async def on_redirect(
        _session: aiohttp.ClientSession,
        _ctx: SimpleNamespace,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        location = params.response.headers.get("Location")
        if location:
            check(params.url.join(URL(location)))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(on_start)
    tracing.on_request_redirect.append(on_redirect)
    return {
        "connector": aiohttp.TCPConnector(resolver=_PolicyResolver(policy)),
        "trace_configs": [tracing],
    }
