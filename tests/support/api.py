"""The API test client fixture: the app over a test's client, the right token sent by
default, every exchange checked against the OpenAPI document when the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from noetl.api import make_app
from noetl.client import Client
from tests.support.openapi_check import Recorder, violations

TOKEN = "s3cret-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="http")
async def http_fixture(client: Client) -> AsyncIterator[TestClient[Any, Any]]:
    """A test client of the API over `client` (SQL endpoint off)."""
    recorder = Recorder()
    app = recorder.install(make_app(client, token=TOKEN, sql=False))
    async with TestClient(TestServer(app), headers=AUTH) as c:
        yield c
        spec = await (await c.get("/api/openapi.json")).json()
    assert recorder.seen
    found = violations(spec, recorder.seen)
    assert not found, "\n".join(found)
