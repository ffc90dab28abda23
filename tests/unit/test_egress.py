"""The egress policy of http tools and script sources, alone and against a local API."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from noetl.config import Settings
from noetl.egress import EgressPolicy
from noetl.errors import ConfigError, ToolError
from plugins.base import ToolContext
from plugins.http import HttpTool
from plugins.sources import http as http_source
from tests.support.http_api import HttpApi, serve_http_api


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("169.254.169.254", []),
        ("metadata.google.internal", []),
        ("innocent.example", [ip("169.254.169.254")]),  # a name resolving to metadata
        ("::ffff:169.254.169.254", []),  # the same address, IPv4-mapped
        ("fd00:ec2::254", []),
        ("fe80::1", []),
        ("100.100.100.200", []),
    ],
)
def test_metadata_and_link_local_are_denied_by_default(host: str, addresses: list[ip]) -> None:
    reason = EgressPolicy.from_settings().check(host, addresses)
    assert reason is not None and "denied by the egress policy" in reason


def test_loopback_and_public_hosts_are_allowed_by_default() -> None:
    policy = EgressPolicy.from_settings()
    assert policy.check("127.0.0.1") is None
    assert policy.check("api.example.com", [ip("93.184.216.34")]) is None


def test_deny_entries_match_cidrs_addresses_names_and_suffixes() -> None:
    policy = EgressPolicy.from_settings(deny="127.0.0.0/8, ::1, internal.corp, *.svc.local")
    assert "matches 127.0.0.0/8" in (policy.check("localhost", [ip("127.0.0.1")]) or "")
    assert "matches ::1/128" in (policy.check("::1") or "")
    assert "matches internal.corp" in (policy.check("Internal.Corp.") or "")
    assert "matches *.svc.local" in (policy.check("db.ns.svc.local") or "")
    assert policy.check("svc.local.example.com", [ip("10.1.2.3")]) is None


def test_an_allow_list_admits_only_its_entries_and_can_reopen_a_denied_range() -> None:
    policy = EgressPolicy.from_settings(allow="10.0.0.0/8, *.example.com, 169.254.170.2")
    assert policy.check("x.example.com", [ip("1.2.3.4")]) is None
    assert policy.check("db", [ip("10.9.8.7")]) is None
    assert policy.check("169.254.170.2") is None  # explicitly allowed (ECS task metadata)
    assert "not in the egress allow list" in (policy.check("other.org", [ip("1.2.3.4")]) or "")
    assert "denied" in (policy.check("169.254.169.254") or "")


def test_a_malformed_entry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("NOETL_HTTP_DENY: `10.0.0.0/33`")):
        EgressPolicy.from_settings(deny="10.0.0.0/33")


@pytest_asyncio.fixture(scope="module")
async def api() -> AsyncIterator[HttpApi]:
    async with serve_http_api() as server:
        yield server


def ctx(**fields: Any) -> ToolContext:
    return ToolContext(execution_id=1, command_id="c", step="call", timeout=5.0, **fields)


async def call(tool: HttpTool, url: str) -> dict[str, object]:
    try:
        return await tool.run(ctx(), {"url": url})
    finally:
        await tool.aclose()


async def test_the_http_tool_reaches_loopback_by_default(api: HttpApi) -> None:
    result = await call(HttpTool(), f"{api.url}/json")
    assert result["status_code"] == 200


async def test_a_denied_address_is_refused_before_connecting(api: HttpApi) -> None:
    tool = HttpTool(settings=Settings(http_deny="127.0.0.0/8"))
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 .*denied by the egress policy") as info:
        await call(tool, f"{api.url}/json")
    assert info.value.error_type == "egress"


async def test_a_name_is_checked_with_the_addresses_it_resolves_to(api: HttpApi) -> None:
    port = api.url.rsplit(":", 1)[1]
    tool = HttpTool(settings=Settings(http_deny="127.0.0.0/8"))
    with pytest.raises(ToolError, match=r"localhost \(127\.0\.0\.1.*matches 127\.0\.0\.0/8"):
        await call(tool, f"http://localhost:{port}/json")


async def test_a_redirect_to_a_denied_address_is_not_followed(api: HttpApi) -> None:
    tool = HttpTool(settings=Settings(http_deny="127.0.0.2"))
    port = api.url.rsplit(":", 1)[1]
    with pytest.raises(ToolError, match=r"127\.0\.0\.2 .*denied by the egress policy"):
        await call(tool, f"{api.url}/redirect?to=http://127.0.0.2:{port}/json")
    with pytest.raises(ToolError, match=r"169\.254\.169\.254 .*denied"):
        await call(HttpTool(), f"{api.url}/redirect?to=http://169.254.169.254/latest/meta-data")


async def test_an_allow_list_refuses_everything_else(api: HttpApi) -> None:
    allowed = HttpTool(settings=Settings(http_allow="127.0.0.1"))
    assert (await call(allowed, f"{api.url}/json"))["status_code"] == 200
    port = api.url.rsplit(":", 1)[1]
    only_elsewhere = HttpTool(settings=Settings(http_allow="10.0.0.0/8"))
    with pytest.raises(ToolError, match="not in the egress allow list"):
        await call(only_elsewhere, f"http://127.0.0.1:{port}/json")


async def test_http_script_sources_follow_the_runners_policy(api: HttpApi) -> None:
    denied = ctx(egress=EgressPolicy.from_settings(deny="127.0.0.1"))
    with pytest.raises(ToolError, match="denied by the egress policy"):
        await http_source.read(f"{api.url}/json", {}, denied)
    assert await http_source.read(f"{api.url}/json", {}, ctx())
