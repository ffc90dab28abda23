"""The REST API gateway over a real mesh: playbooks, executions, event streams,
credentials, authentication and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.mesh import Mesh
from noetl.api import ApiServer, make_app
from noetl.api import stream as api_stream
from noetl.client import Client
from noetl.errors import ConfigError
from tests.integration.conftest import FIXTURES, fixture
from tests.support.api import AUTH, TOKEN, http_fixture  # noqa: F401  (fixture `http`)
from tests.support.playbooks import playbook_text

HELLO = fixture("hello_world")
YAML = {"Content-Type": "text/yaml"}


def playbook(name: str, steps: str) -> str:
    """A playbook's YAML text with these `workflow` steps (indented like the test source)."""
    return playbook_text(steps, metadata=f"{{name: {name}, path: tests/{name}}}")


SLEEPY = playbook(
    "sleepy",
    """
    - step: start
      tool: {kind: python, code: "import time\\ntime.sleep(30)"}
      next: [after]
    - step: after
      tool: {kind: python, code: "result = 1"}
""",
)


async def register(http: TestClient[Any, Any], text: str) -> dict[str, Any]:
    resp = await http.post("/api/playbooks", data=text, headers=YAML)
    assert resp.status in (200, 201), await resp.text()
    return dict(await resp.json())


async def start(http: TestClient[Any, Any], path: str, **fields: Any) -> str:
    resp = await http.post("/api/executions", json={"path": path, **fields})
    assert resp.status == 202, await resp.text()
    eid = (await resp.json())["execution_id"]
    assert resp.headers["Location"] == f"/api/executions/{eid}"
    return str(eid)


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event name, decoded data) of each server-sent event; ("comment", text) for
    comment lines."""
    event = "message"
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])
            event = "message"


async def follow(http: TestClient[Any, Any], eid: str) -> tuple[list[Any], dict[str, Any]]:
    """The announced events of an execution's stream and its final document."""
    events: list[Any] = []
    async with asyncio.timeout(60):
        resp = await http.get(f"/api/executions/{eid}/stream")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        async for name, data in sse(resp):
            if name == "end":
                return events, data
            if name == "message":
                events.append(data)
    raise AssertionError(f"the stream ended without an `end` event: {events}")


async def test_hello_world_through_the_api(http: TestClient[Any, Any], mesh: Mesh) -> None:
    created = await register(http, HELLO.read_text())
    assert created == {"path": "examples/hello_world", "version": 1, "created": True}
    again = await http.post("/api/playbooks", data=HELLO.read_text(), headers=YAML)
    assert again.status == 200
    assert (await again.json())["created"] is False

    listed = await (await http.get("/api/playbooks")).json()
    assert [(p["path"], p["version"]) for p in listed] == [("examples/hello_world", 1)]
    for query in ("", "?version=1"):
        got = await (await http.get(f"/api/playbooks/examples/hello_world{query}")).json()
        assert got == {"path": "examples/hello_world", "version": 1, "content": HELLO.read_text()}

    eid = await start(http, "examples/hello_world")
    assert eid.isdigit()
    events, doc = await follow(http, eid)
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"final": "Hello World!", "length": 12}
    assert doc["execution_id"] == eid
    types = [e["type"] for e in events]
    assert types[0] == "execution.started"
    assert types[-1] == "execution.completed"
    assert {"step": "end", "type": "step.completed"}.items() <= next(
        e for e in events if e["step"] == "end" and e["type"] == "step.completed"
    ).items()

    described = await (await http.get(f"/api/executions/{eid}")).json()
    assert described == doc
    listed = await (await http.get("/api/executions?limit=5")).json()
    assert [(x["execution_id"], x["status"]) for x in listed] == [(eid, "completed")]
    rows = await (await http.get(f"/api/executions/{eid}/events")).json()
    assert rows[0]["event_type"] == "execution.started"
    assert rows[-1]["event_type"] == "execution.completed"
    assert all(isinstance(r["event_id"], str) and r["event_id"].isdigit() for r in rows)

    # A stream of an execution that has already ended is just its `end` event.
    events, doc = await follow(http, eid)
    assert events == []
    assert doc == described


async def test_start_with_workload_and_version(http: TestClient[Any, Any], mesh: Mesh) -> None:
    await register(http, HELLO.read_text())
    eid = await start(
        http, "examples/hello_world", version=1, workload={"message": "Hi"}, timeout=60
    )
    _, doc = await follow(http, eid)
    assert doc["result"] == {"final": "Hi!", "length": 3}


async def test_invalid_playbooks_are_refused_with_problems(
    http: TestClient[Any, Any], mesh: Mesh
) -> None:
    broken = (FIXTURES / "broken" / "unknown_next.yaml").read_text()
    as_yaml = await http.post(
        "/api/playbooks", data=broken, headers={"Content-Type": "application/x-yaml"}
    )
    as_json = await http.post("/api/playbooks", json={"content": broken})
    for resp in (as_yaml, as_json):
        assert resp.status == 422
        body = await resp.json()
        assert body["error"] == "invalid playbook"
        assert any("finsh" in p and "finish" in p for p in body["problems"]), body
    assert await (await http.get("/api/playbooks")).json() == []

    empty = await http.post("/api/playbooks", data="  \n", headers=YAML)
    assert empty.status == 400
    form = await http.post("/api/playbooks", data=b"x", headers={"Content-Type": "image/png"})
    assert form.status == 415
    assert "text/yaml" in (await form.json())["error"]
    typo = await http.post("/api/playbooks", json={"contents": broken})
    assert typo.status == 400
    assert "contents" in (await typo.json())["error"]


async def test_json_registration_carries_script_files(
    http: TestClient[Any, Any], mesh: Mesh
) -> None:
    text = playbook(
        "scripted",
        """
        - step: start
          tool:
            kind: python
            script: {uri: ./calc.py}
    """,
    )
    resp = await http.post(
        "/api/playbooks", json={"content": text, "files": {"./calc.py": "result = 6 * 7"}}
    )
    assert resp.status == 201, await resp.text()
    _, doc = await follow(http, await start(http, "tests/scripted"))
    assert doc["status"] == "completed", doc
    assert doc["result"] == 42


async def test_cancel_a_sleeping_execution(
    http: TestClient[Any, Any], mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_stream, "KEEPALIVE_SECONDS", 0.3)
    await register(http, SLEEPY)
    eid = await start(http, "tests/sleepy")
    seen: list[tuple[str, Any]] = []
    cancelled = False
    async with asyncio.timeout(60):
        resp = await http.get(f"/api/executions/{eid}/stream")
        async for name, data in sse(resp):
            seen.append((name, data))
            # The sleeping step keeps the stream idle: a keep-alive comes, then cancel.
            if (
                (name, data) == ("comment", "keep-alive")
                and not cancelled
                and (
                    (
                        "message",
                        {
                            "type": "step.started",
                            "step": "start",
                            "status": "running",
                            "error": None,
                        },
                    )
                    in seen
                )
            ):
                cancelled = True
                cancel = await http.post(f"/api/executions/{eid}/cancel", json={"reason": "enough"})
                assert cancel.status == 202
                assert await cancel.json() == {"execution_id": eid}
            if name == "end":
                break
    name, doc = seen[-1]
    assert name == "end"
    assert doc["status"] == "cancelled", doc
    assert doc["error"]["message"] == "enough"
    assert "after" not in doc["steps"]
    assert (
        "message",
        {"type": "execution.cancelled", "step": None, "status": "cancelled", "error": doc["error"]},
    ) in seen


async def test_a_closed_stream_drops_its_subscription(
    http: TestClient[Any, Any], client: Client, mesh: Mesh
) -> None:
    await register(http, SLEEPY)
    eid = await start(http, "tests/sleepy")
    subscriptions = len(client.bus.nc._subs)
    resp = await http.get(f"/api/executions/{eid}/stream")
    assert (await asyncio.wait_for(resp.content.readline(), 30)).startswith(b"data: ")
    assert len(client.bus.nc._subs) == subscriptions + 1
    resp.close()  # the client goes away while the execution still runs
    async with asyncio.timeout(5):
        while len(client.bus.nc._subs) > subscriptions:
            await asyncio.sleep(0.05)
    await client.cancel(int(eid))
    assert (await client.wait(int(eid), timeout=30))["status"] == "cancelled"


async def test_restart_a_failed_execution(
    http: TestClient[Any, Any], mesh: Mesh, shared_path: Path
) -> None:
    flag = shared_path / "fixed"
    await register(
        http,
        playbook(
            "fragile",
            f"""
        - step: start
          tool: {{kind: python, code: "result = 21"}}
          next: [double]
        - step: double
          tool:
            kind: python
            args: {{value: "{{{{ start }}}}"}}
            code: |
              from pathlib import Path
              if not Path({str(flag)!r}).exists():
                  raise RuntimeError("not fixed yet")
              result = value * 2
    """,
        ),
    )
    eid = await start(http, "tests/fragile")
    _, failed = await follow(http, eid)
    assert failed["status"] == "failed", failed

    unknown = await http.post(f"/api/executions/{eid}/restart", json={"from": "nope"})
    assert unknown.status == 400
    assert "nope" in (await unknown.json())["error"]

    flag.write_text("yes")
    resp = await http.post(f"/api/executions/{eid}/restart")
    assert resp.status == 202
    body = await resp.json()
    assert body["restarted_from"] == eid
    _, again = await follow(http, body["execution_id"])
    assert again["status"] == "completed", again
    assert again["result"] == 42
    assert again["restarted_from"] == eid


async def test_credentials_crud_never_shows_secrets(http: TestClient[Any, Any]) -> None:
    password = "pa55-w0rd-never-shown"
    data = {
        "host": "db.example",
        "port": "5432",
        "user": "etl",
        "password": password,
        "database": "dw",
    }
    bodies: list[str] = []

    async def call(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await http.request(method, url, **kwargs)
        text = await resp.text()
        bodies.append(text)
        return resp.status, json.loads(text) if text else None

    status, body = await call(
        "PUT", "/api/credentials/pg_main", json={"type": "postgres", "data": data}
    )
    assert (status, body) == (201, {"name": "pg_main", "type": "postgres", "created": True})
    status, body = await call(
        "PUT", "/api/credentials/pg_main", json={"type": "Postgres", "data": data}
    )
    assert (status, body["created"]) == (200, False)

    status, body = await call("GET", "/api/credentials")
    assert status == 200
    assert [(c["name"], c["type"]) for c in body] == [("pg_main", "postgres")]
    assert set(body[0]) == {"name", "type", "created_at", "updated_at"}

    status, body = await call("GET", "/api/credentials/pg_main")
    assert status == 200
    assert body["data"] == {
        "host": "db.example",
        "port": 5432,
        "user": "etl",
        "password": "***",
        "database": "dw",
    }

    status, body = await call(
        "PUT",
        "/api/credentials/pg_bad",
        json={"type": "postgres", "data": {"host": "h", "pass": password}},
    )
    assert status == 400
    assert "did you mean `password`" in body["error"]
    status, body = await call(
        "PUT", "/api/credentials/-bad", json={"type": "secret", "data": {"value": "x"}}
    )
    assert status == 400
    status, body = await call("PUT", "/api/credentials/x", json={"type": "secret"})
    assert status == 400

    status, body = await call("DELETE", "/api/credentials/pg_main")
    assert (status, body) == (204, None)
    for method in ("GET", "DELETE"):
        status, body = await call(method, "/api/credentials/pg_main")
        assert (status, body) == (404, {"error": "no credential `pg_main`"})
    assert not any(password in text for text in bodies)


async def test_a_token_is_required_except_for_health(http: TestClient[Any, Any]) -> None:
    async with aiohttp.ClientSession() as anonymous:
        health = await anonymous.get(http.make_url("/health"))
        assert health.status == 200
        assert await health.json() == {"status": "ok"}
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            for method, url in (
                ("GET", "/api/executions"),
                ("GET", "/api/credentials"),
                ("POST", "/api/executions"),
                ("GET", "/api/nothing"),
            ):
                resp = await anonymous.request(method, http.make_url(url), headers=headers)
                assert resp.status == 401, (headers, url)
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert await resp.json() == {"error": "missing or wrong bearer token"}
    assert (await http.get("/api/executions")).status == 200


async def test_without_a_token_the_api_is_open(client: Client) -> None:
    async with TestClient(TestServer(make_app(client))) as c:
        resp = await c.get("/api/executions")
        assert resp.status == 200
        assert await resp.json() == []


async def test_not_found_and_bad_requests(
    http: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_stream, "APPEAR_SECONDS", 0.3)
    missing = "1234567890"
    for method, url in (
        ("GET", f"/api/executions/{missing}"),
        ("GET", f"/api/executions/{missing}/events"),
        ("GET", f"/api/executions/{missing}/stream"),
        ("POST", f"/api/executions/{missing}/cancel"),
        ("POST", f"/api/executions/{missing}/restart"),
        ("GET", "/api/playbooks/no/such/playbook"),
        ("GET", "/api/nothing/here"),
    ):
        resp = await http.request(method, url)
        assert resp.status == 404, (method, url)
        assert "error" in await resp.json()
    assert (await (await http.get(f"/api/executions/{missing}")).json()) == {
        "error": f"no execution {missing}"
    }
    start = await http.post("/api/executions", json={"path": "no/such"})
    assert start.status == 404
    assert "no/such" in (await start.json())["error"]

    for bad in ("abc", "-1", "1.5", str(2**63), "9" * 30):
        for suffix in ("", "/events", "/stream"):
            resp = await http.get(f"/api/executions/{bad}{suffix}")
            assert resp.status == 400, (bad, suffix)
            assert "63-bit integer" in (await resp.json())["error"]
        cancel = await http.post(f"/api/executions/{bad}/cancel")
        assert cancel.status == 400

    for body in (
        b"",
        b"{not json",
        b'{"path": 1}',
        b'{"path": "p", "version": 0}',
        b'{"path": "p", "workloads": {}}',
        b'{"path": "p", "timeout": -1}',
        b"[]",
    ):
        resp = await http.post(
            "/api/executions", data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400, body
        assert (await resp.json())["error"]
    for query in ("limit=0", "limit=abc", "limit=100000"):
        resp = await http.get(f"/api/executions?{query}")
        assert resp.status == 400
        assert "`limit`" in (await resp.json())["error"]
    resp = await http.get("/api/playbooks/p?version=x")
    assert resp.status == 400
    resp = await http.post("/api/playbooks", data="x" * (2 * 1024 * 1024), headers=YAML)
    assert resp.status == 413
    assert "error" in await resp.json()
    resp = await http.delete("/api/executions")
    assert resp.status == 405
    assert resp.headers["Allow"]
    assert "error" in await resp.json()


async def test_api_server_on_a_free_port(client: Client, mesh: Mesh) -> None:
    server = ApiServer(client, host="127.0.0.1", port=0, token=TOKEN)
    await server.start()
    try:
        assert server.port > 0
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            resp = await session.get(f"{base}/health")
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
            assert (await session.get(f"{base}/api/executions")).status == 401
            resp = await session.post(
                f"{base}/api/playbooks", data=SLEEPY, headers={**AUTH, **YAML}
            )
            assert resp.status == 201
            resp = await session.post(
                f"{base}/api/executions", json={"path": "tests/sleepy"}, headers=AUTH
            )
            eid = (await resp.json())["execution_id"]
            stream = await session.get(f"{base}/api/executions/{eid}/stream", headers=AUTH)
            first = await asyncio.wait_for(stream.content.readline(), 30)
            assert first.startswith(b"data: ")
            # Stopping ends the open stream at once instead of waiting for it.
            began = asyncio.get_running_loop().time()
            await server.stop()
            assert asyncio.get_running_loop().time() - began < 4
            await asyncio.wait_for(stream.content.read(), 5)
            await client.cancel(int(eid))
            assert (await client.wait(int(eid), timeout=30))["status"] == "cancelled"
    finally:
        await server.stop()


async def test_api_server_reports_a_busy_port(client: Client) -> None:
    first = ApiServer(client, host="127.0.0.1", port=0)
    await first.start()
    try:
        second = ApiServer(client, host="127.0.0.1", port=first.port)
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            await second.start()
    finally:
        await first.stop()
