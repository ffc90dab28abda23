"""What a web page could make a browser do to the API, refused; where the API listens."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.mesh import Mesh
from noetl.api import ApiServer, make_app
from noetl.client import Client
from noetl.errors import ConfigError
from tests.integration.conftest import fixture

HELLO = fixture("hello_world").read_text()


async def test_an_open_api_refuses_cross_site_requests(client: Client, mesh: Mesh) -> None:
    # No token, as the review found it: only the browser rules stand between a page and it.
    async with TestClient(TestServer(make_app(client))) as http:
        host = f"{http.host}:{http.port}"
        evil = {"Origin": "https://evil.example"}
        # The two forged requests of the review: a text/plain register, then a start.
        forged = await http.post(
            "/api/playbooks", data=HELLO, headers={**evil, "Content-Type": "text/plain"}
        )
        assert forged.status == 403
        start = await http.post(
            "/api/executions",
            data='{"path": "examples/hello_world"}',
            headers={**evil, "Content-Type": "text/plain"},
        )
        assert start.status == 403
        fetch_meta = await http.post(
            "/api/executions",
            json={"path": "examples/hello_world"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert fetch_meta.status == 403
        sandboxed = await http.post("/api/playbooks", data=HELLO, headers={"Origin": "null"})
        assert sandboxed.status == 403
        # Same origin but a form or text body: what a page's <form> could send.
        form = await http.post(
            "/api/playbooks",
            data=HELLO,
            headers={"Origin": f"http://{host}", "Content-Type": "text/plain"},
        )
        assert form.status == 415
        # Nothing was registered by any of them.
        assert (await (await http.get("/api/playbooks")).json()) == []
        # The console (same origin, JSON or YAML) and scripts (no Origin) still work.
        page = await http.post(
            "/api/playbooks",
            data=HELLO,
            headers={"Origin": f"http://{host}", "Content-Type": "text/yaml"},
        )
        assert page.status == 201, await page.text()
        script = await http.post(
            "/api/playbooks", data=HELLO, headers={"Content-Type": "text/plain"}
        )
        assert script.status in (200, 201)
        # Reading is not state-changing: a GET with a foreign Origin is answered (no CORS
        # header is sent, so the page cannot read the answer).
        listing = await http.get("/api/playbooks", headers=evil)
        assert listing.status == 200 and "Access-Control-Allow-Origin" not in listing.headers


async def test_allowed_hosts_stop_dns_rebinding(client: Client) -> None:
    app = make_app(client, allowed_hosts=frozenset({"127.0.0.1", "noetl.internal"}))
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        assert (await http.get("/api/health")).status == 200
        named = await http.get("/api/health", headers={"Host": "noetl.internal:8082"})
        assert named.status == 200
        rebound = await http.get("/api/executions", headers={"Host": "attacker.example"})
        assert rebound.status == 400
        assert "Host" in (await rebound.json())["error"]
        # Probes name the pod's address: they are answered whatever the Host.
        probe = await http.get("/api/health", headers={"Host": "10.1.2.3:8082"})
        assert probe.status == 200


async def test_without_a_token_the_api_listens_on_loopback_only(client: Client) -> None:
    server = ApiServer(client, port=0)
    assert server.host == "127.0.0.1" and server.open
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/api/health") as resp,
        ):
            assert resp.status == 200
    finally:
        await server.stop()
    with pytest.raises(ConfigError, match="without a token: set NOETL_API_TOKEN"):
        ApiServer(client, host="0.0.0.0", port=0)
    assert ApiServer(client, host="0.0.0.0", port=0, insecure=True).host == "0.0.0.0"
    guarded = ApiServer(client, port=0, token="t0ken")
    assert guarded.host == "0.0.0.0" and not guarded.open


def test_up_refuses_an_open_api_on_every_address(settings: Any) -> None:
    from tests.support.cli import cli

    done = cli(settings, "up", "--api-host", "0.0.0.0", "--api-port", "0", timeout=60)
    assert done.returncode == 2
    assert "without a token" in done.stderr


def test_logged_request_lines_cannot_be_forged_and_carry_no_header() -> None:
    from aiohttp.test_utils import make_mocked_request

    from noetl.api.middleware import loggable

    # A real aiohttp request object for a crafted path (no server needed to build one).
    forged = make_mocked_request(
        "GET",
        "/api/executions/1\r\nINFO fake line%0d%0a",
        headers={"Authorization": "Bearer s3cret-token"},
    )
    line = loggable(forged)
    assert "\n" not in line and "\r" not in line
    assert line.startswith("GET /api/executions/1\\r\\nINFO fake line%0d%0a")
    assert "s3cret-token" not in line
