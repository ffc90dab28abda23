"""NoETL's API surface on a real mesh: catalog register/list/get, execute (and its alias,
idempotency), status, vars and paged events; success and each refusal."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from actors.mesh import Mesh
from noetl.api import make_app
from noetl.api.noetl_catalog import catalog_id
from noetl.api.noetl_compat import idempotent_execution_id
from noetl.client import Client
from tests.integration.conftest import FIXTURES, fixture
from tests.support.api import http_fixture  # noqa: F401  (fixture `http`)

HELLO = fixture("hello_world").read_text()
PATH = "examples/hello_world"
Http = TestClient[Any, Any]


async def post(http: Http, url: str, data: Any, **kwargs: Any) -> tuple[int, Any]:
    resp = await http.post(url, json=data, **kwargs)
    return resp.status, await resp.json()


async def get(http: Http, url: str) -> tuple[int, Any]:
    resp = await http.get(url)
    return resp.status, await resp.json()


async def test_catalog_register_plain_and_base64(http: Http, mesh: Mesh) -> None:
    status, body = await post(http, "/api/catalog/register", {"content": HELLO})
    assert status == 200, body
    assert body == {
        "status": "success",
        "message": f"playbook `{PATH}` version 1 registered",
        "path": PATH,
        "version": 1,
        "catalog_id": str(catalog_id(PATH, 1)),
        "kind": "Playbook",
    }
    encoded = base64.b64encode(HELLO.encode()).decode()
    for sent in ({"content": encoded}, {"content_base64": encoded, "resource_type": "Playbook"}):
        status, again = await post(http, "/api/catalog/register", sent)
        assert (status, again["version"], again["catalog_id"]) == (200, 1, body["catalog_id"])
        assert "unchanged" in again["message"]
    status, second = await post(http, "/api/catalog/register", {"content": HELLO + "\n# v2\n"})
    assert (status, second["version"]) == (200, 2)
    assert second["catalog_id"] != body["catalog_id"]


async def test_catalog_register_refusals(http: Http, mesh: Mesh) -> None:
    broken = (FIXTURES / "broken" / "unknown_next.yaml").read_text()
    status, body = await post(http, "/api/catalog/register", {"content": broken})
    assert status == 400
    assert (body["status"], body["error"]) == ("error", "invalid playbook")
    where = next(p for p in body["problems"] if "finsh" in p["message"])
    assert isinstance(where["line"], int) and where["line"] > 1
    assert isinstance(where["column"], int) and where["column"] >= 1
    assert not where["message"].startswith("<playbook>")
    for sent, words in (
        ({}, "content"),
        ({"content": "  "}, "empty"),
        ({"content_base64": "not base64!"}, "base64"),
        ({"content": HELLO, "resource_type": "Tool"}, "Playbook"),
        ({"content": HELLO, "contents": 1}, "contents"),
    ):
        status, body = await post(http, "/api/catalog/register", sent)
        assert status == 400, sent
        assert words in body["error"], body
    assert (await get(http, "/api/playbooks"))[1] == []


async def test_catalog_register_without_a_catalog_actor(http: Http) -> None:
    status, body = await post(http, "/api/catalog/register", {"content": HELLO})
    assert status == 503
    assert "no catalog actor" in body["error"]


async def test_catalog_list_and_get(http: Http, mesh: Mesh) -> None:
    await post(http, "/api/catalog/register", {"content": HELLO})
    await post(http, "/api/catalog/register", {"content": HELLO + "\n# v2\n"})
    for sent in (None, {}, {"resource_type": "Playbook"}):
        resp = await http.post("/api/catalog/list", json=sent) if sent is not None else None
        if resp is None:
            resp = await http.post("/api/catalog/list")
        entries = (await resp.json())["entries"]
        assert [(e["path"], e["version"]) for e in entries] == [(PATH, 2), (PATH, 1)]
        assert entries[1]["content"] == HELLO
        assert entries[1]["catalog_id"] == str(catalog_id(PATH, 1))
    assert (await post(http, "/api/catalog/list", {"resource_type": "Tool"}))[1] == {"entries": []}
    assert (await post(http, "/api/catalog/list", {"kind": "x"}))[0] == 400

    status, latest = await get(http, f"/api/catalog/{PATH}")
    assert (status, latest["version"], latest["kind"]) == (200, 2, "Playbook")
    status, first = await get(http, f"/api/catalog/{PATH}?version=1")
    assert (status, first["content"], first["created_at"][:4].isdigit()) == (200, HELLO, True)
    assert (await get(http, f"/api/catalog/{PATH}?version=3"))[0] == 404
    assert (await get(http, "/api/catalog/no/such"))[0] == 404
    assert (await get(http, f"/api/catalog/{PATH}?version=zero"))[0] == 400


async def test_execute_by_path_and_catalog_id(http: Http, client: Client, mesh: Mesh) -> None:
    _, registered = await post(http, "/api/catalog/register", {"content": HELLO})
    status, body = await post(
        http, "/api/execute", {"path": PATH, "version": "latest", "payload": {"message": "Hi"}}
    )
    assert status == 200, body
    assert (body["status"], body["path"], body["version"]) == ("started", PATH, 1)
    assert body["catalog_id"] == registered["catalog_id"]
    doc = await client.wait(int(body["execution_id"]), timeout=60)
    assert doc["result"] == {"final": "Hi!", "length": 3}

    for url, sent in (
        ("/api/run/playbook", {"catalog_id": registered["catalog_id"], "args": {"message": "A"}}),
        (
            "/api/execute",
            {"catalog_id": int(registered["catalog_id"]), "workload": {"message": "B"}},
        ),
        (
            "/api/execute",
            {"path": PATH, "version": "1", "parent_execution_id": body["execution_id"]},
        ),
    ):
        status, started = await post(http, url, sent)
        assert status == 200, started
        doc = await client.wait(int(started["execution_id"]), timeout=60)
        assert doc["status"] == "completed"
    assert doc["parent_execution_id"] == body["execution_id"]
    assert {doc["result"]["final"] for doc in [doc]} == {"Hello World!"}


async def test_execute_refusals(http: Http, mesh: Mesh) -> None:
    _, registered = await post(http, "/api/catalog/register", {"content": HELLO})
    for sent, code, words in (
        ({}, 400, "path"),
        ({"path": PATH, "payload": {}, "args": {}}, 400, "once"),
        ({"path": PATH, "version": "v1"}, 400, "version"),
        ({"path": PATH, "version": "0"}, 400, "version"),
        ({"path": "no/such"}, 404, "no/such"),
        ({"path": PATH, "version": 7}, 404, "version 7"),
        ({"catalog_id": "123"}, 404, "123"),
        ({"catalog_id": registered["catalog_id"], "path": "other"}, 400, "other"),
        ({"path": PATH, "parent_execution_id": "x"}, 400, "parent_execution_id"),
    ):
        status, body = await post(http, "/api/execute", sent)
        assert status == code, (sent, body)
        assert words in body["error"], (sent, body)


async def test_an_idempotency_key_starts_one_execution(
    http: Http, client: Client, mesh: Mesh
) -> None:
    await post(http, "/api/catalog/register", {"content": HELLO})
    key = {"Idempotency-Key": "order-42"}
    firsts = [await post(http, "/api/execute", {"path": PATH}, headers=key) for _ in range(2)]
    eid = firsts[0][1]["execution_id"]
    assert eid == str(idempotent_execution_id("order-42"))
    await client.wait(int(eid), timeout=60)
    status, again = await post(http, "/api/run/playbook", {"path": PATH}, headers=key)
    assert [s for s, _ in firsts] + [status] == [200, 200, 200]
    assert {b["execution_id"] for _, b in firsts} | {again["execution_id"]} == {eid}
    assert [x["execution_id"] for x in await client.store.list_executions()] == [eid]

    await post(http, "/api/catalog/register", {"content": HELLO.replace(PATH, "other/hello")})
    status, body = await post(http, "/api/execute", {"path": "other/hello"}, headers=key)
    assert status == 409
    assert "Idempotency-Key" in body["error"]
    status, body = await post(http, "/api/execute", {"path": PATH}, headers={"Idempotency-Key": ""})
    assert status == 400


async def test_status_vars_and_paged_events(http: Http, client: Client, mesh: Mesh) -> None:
    await post(http, "/api/catalog/register", {"content": HELLO})
    _, started = await post(http, "/api/execute", {"path": PATH})
    eid = started["execution_id"]
    await client.wait(int(eid), timeout=60)

    status, body = await get(http, f"/api/executions/{eid}/status")
    assert status == 200
    assert {k: body[k] for k in ("execution_id", "path", "version", "status")} == {
        "execution_id": eid,
        "path": PATH,
        "version": 1,
        "status": "completed",
    }
    assert (body["completed"], body["failed"], body["error"]) == (True, False, None)

    status, body = await get(http, f"/api/vars/{eid}")
    assert status == 200
    assert body["count"] == 1
    greeting = body["variables"]["greeting"]
    assert (greeting["value"], greeting["source_step"]) == ("Hello World!", "start")

    everything = await client.store.list_events(int(eid))
    seen: list[str] = []
    after = ""
    for _ in range(len(everything)):
        _, page = await get(http, f"/api/events?execution_id={eid}&limit=3{after}")
        assert len(page["items"]) <= 3
        seen += [item["event_id"] for item in page["items"]]
        assert all(item["execution_id"] == eid for item in page["items"])
        if not page["has_more"]:
            break
        after = f"&after={page['next_after']}"
    assert seen == [str(e["event_id"]) for e in everything]
    _, tail = await get(http, f"/api/events?execution_id={eid}&after={seen[-1]}")
    assert (tail["items"], tail["has_more"], tail["next_after"]) == ([], False, seen[-1])
    _, anywhere = await get(http, "/api/events?limit=1000")
    assert [i["event_id"] for i in anywhere["items"]] == seen

    missing = "1234567890"
    for url in (f"/api/executions/{missing}/status", f"/api/vars/{missing}"):
        assert (await get(http, url))[0] == 404
    for url in (
        "/api/executions/x/status",
        "/api/vars/-1",
        "/api/events?after=x",
        "/api/events?limit=0",
        "/api/events?execution_id=1.5",
    ):
        status, body = await get(http, url)
        assert status == 400, url
        assert body["error"]


async def test_noetl_routes_need_the_token(client: Client) -> None:
    async with TestClient(TestServer(make_app(client, token="t"))) as anonymous:
        for method, url in (
            ("POST", "/api/catalog/register"),
            ("POST", "/api/execute"),
            ("GET", "/api/vars/1"),
        ):
            assert (await anonymous.request(method, url)).status == 401
