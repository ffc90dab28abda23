"""The `http` tool against a local aiohttp API: every field, result and failure."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from noetl.errors import ToolError, ToolTimeout
from noetl.local import free_port
from plugins.base import ToolContext, ToolPlugin
from plugins.http import DEFAULT_MAX_RESPONSE_BYTES, HttpTool
from tests.support.http_api import (
    API_KEY,
    API_KEY_HEADER,
    ITEM_COUNT,
    PASSWORD,
    TOKEN,
    USERNAME,
    HttpApi,
    serve_http_api,
)
from tests.support.tools import tool_context

CREDENTIALS: dict[str, Mapping[str, Any]] = {
    "api_bearer": {"type": "bearer", "token": TOKEN},
    "api_basic": {"type": "basic", "username": USERNAME, "password": PASSWORD},
    "api_header": {"type": "header", "name": API_KEY_HEADER, "value": API_KEY},
    # Typeless, or of another type: the binding's type (or the fields) decide.
    "untyped_token": {"token": TOKEN},
    "generic": {"type": "generic", "token": TOKEN},
}


def make_ctx(timeout: float | None = 10.0, **fields: Any) -> ToolContext:
    """A context whose credential store is `CREDENTIALS`."""
    return tool_context(
        CREDENTIALS, execution_id=7, command_id="cmd-42", step="call", timeout=timeout, **fields
    )


@pytest_asyncio.fixture(scope="module")
async def api() -> AsyncIterator[HttpApi]:
    async with serve_http_api() as server:
        yield server


@pytest_asyncio.fixture(scope="module")
async def tool() -> AsyncIterator[HttpTool]:
    tool = HttpTool()
    yield tool
    await tool.aclose()


async def call(tool: HttpTool, ctx: ToolContext | None = None, **spec: Any) -> Any:
    return await tool.run(ctx or make_ctx(), {"args": {}, **spec})


def test_is_a_tool_plugin() -> None:
    assert isinstance(HttpTool(), ToolPlugin)
    assert HttpTool.kind == "http"


# --- result ------------------------------------------------------------------------------


async def test_json_result_shape(api: HttpApi, tool: HttpTool) -> None:
    result = await call(tool, url=f"{api.url}/json")
    assert result["id"] == "cmd-42"
    assert result["status"] == "success"
    assert result["status_code"] == 200
    assert result["data"] == {"message": "hello", "numbers": [1, 2, 3]}
    assert result["headers"]["Content-Type"].startswith("application/json")
    assert isinstance(result["elapsed"], float) and result["elapsed"] >= 0
    assert result["url"] == f"{api.url}/json"


async def test_text_body_and_endpoint_alias(api: HttpApi, tool: HttpTool) -> None:
    result = await call(tool, endpoint=f"{api.url}/text")
    assert result["data"] == "plain text body"


async def test_paged_items(api: HttpApi, tool: HttpTool) -> None:
    last = await call(tool, url=f"{api.url}/items", params={"page": 4, "size": 10})
    assert [item["id"] for item in last["data"]["data"]] == list(range(30, ITEM_COUNT))
    assert last["data"]["paging"] == {"page": 4, "size": 10, "total": ITEM_COUNT, "hasMore": False}


async def test_one_session_per_tool(api: HttpApi) -> None:
    tool = HttpTool()
    assert tool._session is None  # lazily created
    await call(tool, url=f"{api.url}/json")
    session = tool._session
    await call(tool, url=f"{api.url}/json")
    assert tool._session is session
    await tool.aclose()
    assert session is not None and session.closed
    # A closed tool opens a fresh session if called again.
    assert (await call(tool, url=f"{api.url}/json"))["status_code"] == 200
    await tool.aclose()


# --- request -----------------------------------------------------------------------------


async def test_default_get_with_params_and_headers(api: HttpApi, tool: HttpTool) -> None:
    result = await call(
        tool,
        url=f"{api.url}/echo",
        params={"q": "x y", "n": 3, "flag": True, "many": [1, 2], "none": None},
        headers={"X-Custom": "yes", "X-Number": 5},
    )
    echo = result["data"]
    assert echo["method"] == "GET"
    assert echo["query"] == {"q": ["x y"], "n": ["3"], "flag": ["true"], "many": ["1", "2"]}
    assert echo["headers"]["X-Custom"] == "yes"
    assert echo["headers"]["X-Number"] == "5"


async def test_idempotency_key(api: HttpApi, tool: HttpTool) -> None:
    echo = (await call(tool, url=f"{api.url}/echo"))["data"]
    assert echo["headers"]["Idempotency-Key"] == "cmd-42"
    echo = (await call(tool, url=f"{api.url}/echo", headers={"idempotency-key": "mine"}))["data"]
    keys = [value for name, value in echo["headers"].items() if name.lower() == "idempotency-key"]
    assert keys == ["mine"]


async def test_json_body_and_payload_alias(api: HttpApi, tool: HttpTool) -> None:
    for key in ("json", "payload"):
        spec: dict[str, Any] = {key: {"a": 1, "b": [True, None]}}
        echo = (await call(tool, method="post", url=f"{api.url}/echo", **spec))["data"]
        assert echo["method"] == "POST"
        assert echo["json"] == {"a": 1, "b": [True, None]}


async def test_raw_body_and_form_data(api: HttpApi, tool: HttpTool) -> None:
    echo = (
        await call(
            tool,
            method="PUT",
            url=f"{api.url}/echo",
            body="raw text",
            headers={"Content-Type": "text/plain"},
        )
    )["data"]
    assert (echo["method"], echo["body"]) == ("PUT", "raw text")
    echo = (await call(tool, method="POST", url=f"{api.url}/echo", body=b"bytes"))["data"]
    assert echo["body"] == "bytes"
    echo = (await call(tool, method="POST", url=f"{api.url}/echo", data={"name": "x", "n": 2}))[
        "data"
    ]
    assert echo["form"] == {"name": "x", "n": "2"}


async def test_args_are_not_sent(api: HttpApi, tool: HttpTool) -> None:
    result = await tool.run(
        make_ctx(), {"url": f"{api.url}/echo", "method": "POST", "args": {"secret_arg": "value"}}
    )
    assert result["data"]["body"] == ""
    assert result["data"]["query"] == {}


async def test_invalid_specs(api: HttpApi, tool: HttpTool) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "`url` must be an http"),
        ({"url": "ftp://x/y"}, "`url` must be an http"),
        ({"url": api.url, "json": {}, "body": "x"}, "only one request body"),
        ({"url": api.url, "body": {"a": 1}}, "`body` must be text or bytes"),
        ({"url": api.url, "allow_status": "404"}, "`allow_status` must be a list"),
        ({"url": api.url, "timeout": -1}, "`timeout` must be a positive number"),
        ({"url": api.url, "verify_ssl": "no"}, "`verify_ssl` must be true or false"),
        ({"url": api.url, "params": [1]}, "`params` must be a mapping"),
        ({"url": api.url, "auth": 12}, "`auth` must be a credential name"),
    ]
    for spec, message in bad:
        with pytest.raises(ToolError, match=message) as info:
            await call(tool, **spec)
        assert info.value.error_type == "http"


# --- status codes ------------------------------------------------------------------------


async def test_error_status_fails_with_details(api: HttpApi, tool: HttpTool) -> None:
    with pytest.raises(ToolError) as info:
        await call(tool, url=f"{api.url}/status/404?body=gone")
    error = info.value
    assert error.error_type == "http"
    assert str(error) == f"HTTP 404 from GET {api.url}/status/404?body=gone: gone"
    assert error.details == {"status_code": 404, "body": "gone"}


async def test_error_body_is_cut_at_500_chars(api: HttpApi, tool: HttpTool) -> None:
    with pytest.raises(ToolError) as info:
        await call(tool, method="POST", url=f"{api.url}/status/500", params={"body": "e" * 900})
    assert info.value.details["body"] == "e" * 500
    assert str(info.value).endswith(": " + "e" * 500)


async def test_allow_status(api: HttpApi, tool: HttpTool) -> None:
    result = await call(tool, url=f"{api.url}/status/404", allow_status=[404])
    assert (result["status"], result["status_code"], result["data"]) == (
        "success",
        404,
        "status 404",
    )


async def test_retry_after_seconds_and_date(api: HttpApi, tool: HttpTool) -> None:
    with pytest.raises(ToolError) as info:
        await call(tool, url=f"{api.url}/status/429", params={"retry_after": "7"})
    assert info.value.details["retry_after"] == 7.0
    assert info.value.details["status_code"] == 429
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(ToolError) as info:
        await call(tool, url=f"{api.url}/status/503", params={"retry_after": later})
    assert 25 <= info.value.details["retry_after"] <= 31
    # Only 429 and 503 carry it; without the header it is left out.
    with pytest.raises(ToolError) as info:
        await call(tool, url=f"{api.url}/status/500", params={"retry_after": "7"})
    assert "retry_after" not in info.value.details
    with pytest.raises(ToolError) as info:
        await call(tool, url=f"{api.url}/status/503")
    assert "retry_after" not in info.value.details


# --- timeouts, connections, TLS ----------------------------------------------------------


async def test_timeout_field(api: HttpApi, tool: HttpTool) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"HTTP GET http://.*/slow timed out after 0\.3s"):
        await call(tool, url=f"{api.url}/slow", params={"seconds": 5}, timeout=0.3)
    assert time.monotonic() - started < 3


async def test_timeout_defaults_to_the_step_timeout(api: HttpApi, tool: HttpTool) -> None:
    with pytest.raises(ToolTimeout, match=r"timed out after 0\.3s") as info:
        await call(tool, make_ctx(timeout=0.3), url=f"{api.url}/slow?seconds=5")
    assert info.value.error_type == "timeout"


async def test_connection_refused(tool: HttpTool) -> None:
    url = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(ToolError, match=f"HTTP GET {url} failed: ClientConnectorError") as info:
        await call(tool, url=url)
    assert info.value.error_type == "http"
    assert info.value.details == {"url": url}


async def test_verify_ssl(tool: HttpTool) -> None:
    async with serve_http_api(tls=True) as secure:
        assert secure.url.startswith("https://")
        with pytest.raises(ToolError, match="Certificate") as info:
            await call(tool, url=f"{secure.url}/json")
        assert info.value.error_type == "http"
        result = await call(tool, url=f"{secure.url}/json", verify_ssl=False)
        assert result["data"]["message"] == "hello"


# --- redirects and size ------------------------------------------------------------------


async def test_follow_redirects(api: HttpApi, tool: HttpTool) -> None:
    result = await call(tool, url=f"{api.url}/redirect", params={"to": "/text"})
    assert (result["status_code"], result["url"]) == (200, f"{api.url}/text")
    result = await call(
        tool, url=f"{api.url}/redirect", params={"to": "/text"}, follow_redirects=False
    )
    assert result["status_code"] == 302
    assert result["headers"]["Location"] == "/text"


@pytest.mark.parametrize("length", ["0", "1"])
async def test_max_response_bytes(api: HttpApi, tool: HttpTool, length: str) -> None:
    url = f"{api.url}/large?bytes=300000&length={length}"
    with pytest.raises(ToolError, match=r"larger than max_response_bytes \(100000 bytes\)") as info:
        await call(tool, url=url, max_response_bytes=100_000)
    assert info.value.details == {"status_code": 200, "max_response_bytes": 100_000}
    result = await call(tool, url=url, max_response_bytes=300_000)  # exactly the cap
    assert len(result["data"]) == 300_000


async def test_default_cap_is_64_mib(api: HttpApi, tool: HttpTool) -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES == 64 * 1024 * 1024
    result = await call(tool, url=f"{api.url}/large?bytes=2000000")
    assert len(result["data"]) == 2_000_000


# --- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "auth", "secret"),
    [
        ("bearer", "api_bearer", TOKEN),
        ("bearer", {"type": "bearer", "credential": "api_bearer"}, TOKEN),
        ("bearer", "untyped_token", TOKEN),
        ("bearer", {"type": "bearer", "credential": "generic"}, TOKEN),
        ("bearer", {"type": "bearer", "token": TOKEN}, TOKEN),
        ("basic", "api_basic", PASSWORD),
        ("basic", {"type": "basic", "credential": "api_basic"}, PASSWORD),
        ("basic", {"type": "basic", "username": USERNAME, "password": PASSWORD}, PASSWORD),
        ("header", "api_header", API_KEY),
        ("header", {"type": "header", "credential": "api_header"}, API_KEY),
        ("header", {"type": "header", "name": API_KEY_HEADER, "value": API_KEY}, API_KEY),
    ],
)
async def test_auth(api: HttpApi, tool: HttpTool, path: str, auth: Any, secret: str) -> None:
    ctx = make_ctx()
    result = await call(tool, ctx, url=f"{api.url}/auth/{path}", auth=auth)
    assert result["data"]["ok"] is True
    assert secret in ctx.secrets.values()


async def test_auth_through_a_step_binding(api: HttpApi, tool: HttpTool) -> None:
    ctx = make_ctx(bindings={"src": "api_bearer"})
    result = await call(tool, ctx, url=f"{api.url}/auth/bearer", auth="src")
    assert result["data"]["ok"] is True


async def test_basic_auth_header_value_is_a_secret(api: HttpApi, tool: HttpTool) -> None:
    ctx = make_ctx()
    echo = (await call(tool, ctx, url=f"{api.url}/echo", auth="api_basic"))["data"]
    assert echo["headers"]["Authorization"] in ctx.secrets.values()


async def test_wrong_credentials_fail_with_401(api: HttpApi, tool: HttpTool) -> None:
    with pytest.raises(ToolError) as info:
        await call(tool, url=f"{api.url}/auth/bearer", auth={"type": "bearer", "token": "bad"})
    assert info.value.details["status_code"] == 401


async def test_secrets_never_reach_the_error(api: HttpApi, tool: HttpTool) -> None:
    # The server echoes the token back in its error body.
    with pytest.raises(ToolError) as info:
        await call(
            tool,
            url=f"{api.url}/status/401",
            params={"body": f"bad token {TOKEN}"},
            auth="api_bearer",
        )
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value.details)
    assert info.value.details["body"] == "bad token ***"


async def test_auth_problems(api: HttpApi, tool: HttpTool) -> None:
    with pytest.raises(ToolError, match="type bearer needs a non-empty `token`"):
        await call(tool, url=api.url, auth={"type": "bearer", "credential": "api_basic"})
    with pytest.raises(ToolError, match="type must be bearer, basic or header"):
        await call(tool, url=api.url, auth={"type": "oauth", "token": "x"})
    with pytest.raises(ToolError, match="no credential 'missing'"):
        await call(tool, url=api.url, auth="missing")
    no_store = ToolContext(execution_id=1, command_id="c", step="s")
    with pytest.raises(ToolError, match="no credential store"):
        await call(tool, no_store, url=api.url, auth="api_bearer")


# --- cancellation ------------------------------------------------------------------------


async def test_cancellation_stops_the_request(api: HttpApi, tool: HttpTool) -> None:
    ctx = make_ctx()
    asyncio.get_running_loop().call_later(0.2, ctx.cancelled.set)
    started = time.monotonic()
    with pytest.raises(ToolError, match="cancelled") as info:
        await call(tool, ctx, url=f"{api.url}/slow", params={"seconds": 5})
    assert info.value.error_type == "cancelled"
    assert time.monotonic() - started < 3
