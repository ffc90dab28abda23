"""How the `http` tool reads a `Retry-After` header into `error.retry_after` (seconds), which
the retry policy then honours: delay-seconds, HTTP dates in every zone spelling, dates in
the past, and values it cannot read."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.http import HttpTool
from tests.support.http_api import HttpApi, serve_http_api


@pytest_asyncio.fixture(scope="module")
async def api() -> AsyncIterator[HttpApi]:
    async with serve_http_api() as server:
        yield server


async def retry_after(api: HttpApi, status: int, header: str | None) -> Any:
    """The `retry_after` detail of the error for `status` with that header (None: absent)."""
    params = {} if header is None else {"retry_after": header}
    tool = HttpTool()
    try:
        with pytest.raises(ToolError) as info:
            await tool.run(
                ToolContext(execution_id=7, command_id="cmd-1", step="call", timeout=10),
                {"url": f"{api.url}/status/{status}", "params": params},
            )
    finally:
        await tool.aclose()
    assert info.value.details["status_code"] == status
    return info.value.details.get("retry_after")


@pytest.mark.parametrize(("status", "header"), [(429, "7"), (503, " 7 "), (503, "007")])
async def test_delay_seconds(api: HttpApi, status: int, header: str) -> None:
    assert await retry_after(api, status, header) == 7.0


@pytest.mark.parametrize(
    "zone",
    ["GMT", "-0000", "+0000"],  # `-0000` parses as a naive time, still meant as UTC
)
async def test_an_http_date_in_any_zone_spelling(api: HttpApi, zone: str) -> None:
    header = email.utils.formatdate(time.time() + 40, usegmt=True).replace("GMT", zone)
    assert 34 <= await retry_after(api, 429, header) <= 41


async def test_a_date_in_the_past_means_now(api: HttpApi) -> None:
    header = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert await retry_after(api, 503, header) == 0.0


@pytest.mark.parametrize("header", [None, "soon", "-5", "1.5"])
async def test_an_absent_or_unreadable_header_is_left_out(api: HttpApi, header: str | None) -> None:
    assert await retry_after(api, 429, header) is None


@pytest.mark.parametrize("status", [500, 502, 400])
async def test_only_429_and_503_carry_it(api: HttpApi, status: int) -> None:
    assert await retry_after(api, status, "7") is None
