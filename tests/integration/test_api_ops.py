"""Operating the API: probes, metrics, the OpenAPI document (validated, and fuzzed with
schemathesis), and the bearer token on every protected route."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from actors.mesh import Mesh
from noetl.api import ApiServer, make_app
from noetl.api import stream as api_stream
from noetl.api.app import route_table
from noetl.client import Client
from tests.integration.conftest import fixture
from tests.support.api import AUTH, TOKEN, http_fixture  # noqa: F401  (fixture `http`)

Http = TestClient[Any, Any]
HELLO = fixture("hello_world")


async def test_ready_says_what_is_missing(http: Http, client: Client) -> None:
    async with aiohttp.ClientSession() as anonymous:  # probes need no token
        for url in ("/health", "/api/health"):
            resp = await anonymous.get(http.make_url(url))
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        resp = await anonymous.get(http.make_url("/api/ready"))
        assert resp.status == 200
        assert await resp.json() == {
            "status": "ready",
            "checks": {"nats": "ok", "postgres": "ok", "schema": "ok"},
            "missing": [],
        }
        await client.store.pool.execute("DELETE FROM noetl.migration WHERE number = 4")
        resp = await anonymous.get(http.make_url("/api/ready"))
        assert resp.status == 503
        assert (await resp.json())["missing"] == ["schema"]
        await client.bus.nc.close()
        resp = await anonymous.get(http.make_url("/api/ready"))
        assert resp.status == 503
        body = await resp.json()
        assert body["missing"] == ["nats", "schema"]
        assert body["checks"]["nats"] == "disconnected"


def _samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric `name` in Prometheus text, by their label string."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{.*\}})? ([0-9.e+-]+)", line)
        if match:
            found[match[1] or ""] = float(match[2])
    return found


async def test_metrics_count_what_this_process_sees(http: Http, client: Client, mesh: Mesh) -> None:
    async def scrape() -> str:
        async with aiohttp.ClientSession() as anonymous:  # no token needed
            resp = await anonymous.get(http.make_url("/metrics"))
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return await resp.text()

    before = await scrape()
    reply = await client.register(HELLO)
    eid = await client.start(reply.path, version=reply.version)
    assert (await client.wait(eid, timeout=60))["status"] == "completed"
    await http.get(f"/api/executions/{eid}")
    after = await scrape()

    def grew(name: str, labels: str = "") -> float:
        return _samples(after, name).get(labels, 0) - _samples(before, name).get(labels, 0)

    assert grew("noetl_executions_started_total") == 1
    assert grew("noetl_executions_ended_total", '{status="completed"}') == 1
    assert grew("noetl_step_duration_seconds_count", '{kind="python"}') == 2
    assert _samples(after, "noetl_commands_in_flight") == {"": 0}
    route = '{method="GET",route="/api/executions/{id}",status="200"}'
    assert grew("noetl_http_requests_total", route) == 1
    pending = _samples(after, "noetl_consumer_pending")
    assert any('stream="NOETL_CMD"' in labels for labels in pending)
    assert str(eid) not in after  # no series per execution


async def test_openapi_describes_every_route(http: Http, client: Client) -> None:
    async with aiohttp.ClientSession() as anonymous:
        resp = await anonymous.get(http.make_url("/api/openapi.json"))
        assert resp.status == 200
        spec = await resp.json()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    served = {
        (r.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", r.path))
        for r in route_table(client, token=TOKEN, sql=False)[0]
    }
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == served
    assert len(served) >= 28
    for path in ("/api/execute", "/api/postgres/execute", "/api/playbooks", "/metrics"):
        assert path in spec["paths"]
    start = spec["paths"]["/api/executions"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StartBody"
    }
    assert spec["components"]["schemas"]["StartBody"]["additionalProperties"] is False


async def test_every_protected_route_needs_the_token(
    monkeypatch: pytest.MonkeyPatch, client: Client
) -> None:
    monkeypatch.setattr(api_stream, "APPEAR_SECONDS", 0.2)
    routes = route_table(client, token=TOKEN, sql=True)[0]
    protected = [r for r in routes if not r.public]
    assert len(protected) >= 23
    async with TestClient(TestServer(make_app(client, token=TOKEN, sql=True))) as c:
        for route in protected:
            url = re.sub(r"\{(\w+)(:[^}]*)?\}", "1", route.path)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                resp = await c.request(route.method, url, headers=headers, json={})
                assert resp.status == 401, (route.method, url, headers)
                assert resp.headers["WWW-Authenticate"] == "Bearer"
            resp = await c.request(route.method, url, headers=AUTH, json={})
            assert resp.status != 401, (route.method, url)
            assert resp.status < 500, (route.method, url, await resp.text())
        for route in (r for r in routes if r.public):
            assert (await c.get(route.path)).status == 200, route.path


async def test_schemathesis_finds_no_server_error_or_schema_violation(
    client: Client, mesh: Mesh, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(api_stream, "APPEAR_SECONDS", 0.1)
    await client.register(HELLO)
    server = ApiServer(client, host="127.0.0.1", port=0, token=TOKEN)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{base}/api/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples",
            "8",
            "--phases",
            "examples,fuzzing",
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--exclude-path-regex",
            "/stream$",
            "--seed",
            "7",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
    finally:
        await server.stop()
    report = out.decode()
    assert proc.returncode == 0, report
    assert re.search(r"\b\d+ passed\b", report), report
